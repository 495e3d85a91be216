"""Every Prometheus metric the processor exports, in one place.

Names follow Prometheus conventions (base units, `_total` counters); labels never
carry shopper ids. Tests build a `Metrics` on a fresh registry.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

BATCH_BUCKETS = (1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000)


class Metrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.events_consumed = Counter(
            "intent_events_total",
            "Valid events consumed, by canonical type and source format.",
            ["type", "source"],
            registry=registry,
        )
        self.events_rejected = Counter(
            "intent_events_rejected_total",
            "Input records sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=registry,
        )
        self.events_duplicate = Counter(
            "intent_events_duplicate_total",
            "Re-delivered events recognised by id and skipped (at-least-once delivery).",
            registry=registry,
        )
        self.signals = Counter(
            "intent_signals_total",
            "Intent signals fired, by rule.",
            ["rule"],
            registry=registry,
        )
        self.redis_errors = Counter(
            "intent_redis_errors_total",
            "Redis calls that failed (and were retried), by stage.",
            ["stage"],
            registry=registry,
        )
        self.tier_changes = Counter(
            "intent_tier_changes_total",
            "Tier transitions, by from/to tier and reason.",
            ["from_tier", "to_tier", "reason"],
            registry=registry,
        )
        self.actions = Counter(
            "intent_actions_total",
            "Records emitted to action topics, by topic setting.",
            ["topic"],
            registry=registry,
        )
        self.batch_size = Histogram(
            "intent_batch_size_events",
            "Records handled per batch, by stage.",
            ["stage"],
            buckets=BATCH_BUCKETS,
            registry=registry,
        )


_default: Metrics | None = None


def default_metrics() -> Metrics:
    """The process-wide metrics on the global registry (created once)."""
    global _default
    if _default is None:
        _default = Metrics()
    return _default
