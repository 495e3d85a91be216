"""Pure intent-signal detectors, one module per rule kind, driven by `engine.Engine`."""
