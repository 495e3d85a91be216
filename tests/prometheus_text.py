"""Prometheus exposition text, as the tests read it."""

from __future__ import annotations


def parse_metrics(text: str) -> dict[str, float]:
    """Exposition text as sample name (with labels) -> value."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples
