"""Every Prometheus metric the processor exports, in one place, and the small HTTP
server that serves them with /healthz and /ready.

Names follow Prometheus conventions (base units, `_total` counters); labels never
carry shopper ids, and take only known values (`source_label`). The error counters are
exported at 0 for every known label value from the start, so `rate()` in panels and
alerts says 0, not "no data", before the first error. Tests build a `Metrics` on a fresh
registry.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any, Final
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    make_wsgi_app,
)

from schemas.errors import REASONS

# The `source` of events: the input formats (schemas.adapters, schemas.readers). A
# canonical event may carry any source of its own: those count as OTHER_SOURCE, so the
# label cannot grow a series per value a producer makes up.
SOURCES: Final = frozenset(
    {"canonical", "segment", "ga4", "snowplow", "rees46", "retailrocket", "taobao", "otto"}
)
OTHER_SOURCE: Final = "other"
# Label values of the error counters, exported at 0 from the start
# `retry`
REDIS_STAGES: Final = ("epochs", "load", "forget", "merge", "sweep", "decay", "tiers", "write")
SEND_PATHS: Final = ("batch", "sweep")
SHOPPER_FAILURE_STAGES: Final = (
    "load",
    "detect",
    "score",
    "decay",
    "outputs",
    "identity",
    "sweep",
    "sweep_chunk",
)

BATCH_BUCKETS: Final = (1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000)
LAG_BUCKETS: Final = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 86400)
REDIS_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)


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
        self.events_direct = Counter(
            "intent_events_direct_total",
            "Valid events detected without the intent.events hop (their partition there "
            "is this worker's and read to its end).",
            registry=registry,
        )
        self.events_duplicate = Counter(
            "intent_events_duplicate_total",
            "Re-delivered events recognised by id and skipped (at-least-once delivery).",
            registry=registry,
        )
        self.events_forgotten = Counter(
            "intent_events_forgotten_total",
            "Events from before their shopper's last `intent forget`, dropped unprocessed.",
            registry=registry,
        )
        self.store_restarts = Counter(
            "intent_store_restarts_total",
            "Starts from an empty Redis that had lost the deployment's state "
            "(INTENT_START_FROM_EMPTY_REDIS), suppressions rebuilt.",
            registry=registry,
        )
        self.fenced_writes = Counter(
            "intent_fenced_writes_total",
            "Batch writes refused because a newer owner holds the partition (a worker "
            "paused past its session); the batch is processed again.",
            registry=registry,
        )
        self.forgets = Counter(
            "intent_forgets_total",
            "Forget requests applied by the shopper's owner (`intent forget`).",
            registry=registry,
        )
        self.identity_merges = Counter(
            "intent_identity_merges_total",
            "Links of an anonymous id to a known one, by outcome: merged, duplicate (merged "
            "already), conflict (merged into another profile first), known (two known ids: "
            "only an alias merges them), capped (the profile holds identity_max_ids), "
            "forgotten, loop.",
            ["outcome"],
            registry=registry,
        )
        self.signals = Counter(
            "intent_signals_total",
            "Intent signals fired, by rule.",
            ["rule"],
            registry=registry,
        )
        self.tier_changes = Counter(
            "intent_tier_changes_total",
            "Tier transitions, by from/to tier and reason.",
            ["from_tier", "to_tier", "reason"],
            registry=registry,
        )
        self.shoppers = Gauge(
            "intent_shoppers",
            "Shoppers currently in each tier (from Redis, refreshed by the sweep).",
            ["tier"],
            registry=registry,
        )
        self.purchases = Counter(
            "intent_purchases_total",
            "Purchases, by the tier the shopper held just before buying (live conversion).",
            ["tier"],
            registry=registry,
        )
        self.actions = Counter(
            "intent_actions_total",
            "Records emitted to the output topics, by topic setting.",
            ["topic"],
            registry=registry,
        )
        self.event_lag = Histogram(
            "intent_event_lag_seconds",
            "From an event's time to its processing, by stage.",
            ["stage"],
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "intent_consumer_lag_messages",
            "Records not yet processed, per topic partition (readable end offset minus "
            "the committed position).",
            ["topic", "partition"],
            registry=registry,
        )
        self.batch_size = Histogram(
            "intent_batch_size_events",
            "Records handled per batch, by stage.",
            ["stage"],
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.redis_seconds = Histogram(
            "intent_redis_seconds",
            "Redis round-trip latency (reads, and the fenced writes), by operation.",
            ["op"],
            buckets=REDIS_BUCKETS,
            registry=registry,
        )
        self.redis_roundtrips = Counter(
            "intent_redis_roundtrips_total",
            "Fenced writes to Redis (one per batch or sweep chunk that changed state), by "
            "operation.",
            ["op"],
            registry=registry,
        )
        self.redis_errors = Counter(
            "intent_redis_errors_total",
            "Redis calls that failed (retried, or given up: docs/operations.md), by stage.",
            ["stage"],
            registry=registry,
        )
        self.send_errors = Counter(
            "intent_send_errors_total",
            "Sends the broker refused: a batch is read again, a sweep's output sent again.",
            ["path"],
            registry=registry,
        )
        self.shopper_failures = Counter(
            "intent_shopper_failures_total",
            "Shoppers whose processing raised and who were left out (everyone else went "
            "on), by stage; sweep_chunk: a partition's sweep chunk that failed as a whole.",
            ["stage"],
            registry=registry,
        )
        self.up = Gauge(
            "intent_worker_ready",
            "1 while the worker has joined its group and Redis answers.",
            registry=registry,
        )
        for counter, values in (
            (self.events_rejected, REASONS),
            (self.redis_errors, REDIS_STAGES),
            (self.send_errors, SEND_PATHS),
            (self.shopper_failures, SHOPPER_FAILURE_STAGES),
        ):
            for value in values:
                counter.labels(value)  # a series at 0 from the start

    def names(self) -> set[str]:
        """Every sample name this registry can export (for the dashboard tests)."""
        out: set[str] = set()
        for metric in self.registry.collect():
            if not metric.name.startswith("intent_"):
                continue
            kinds = {"counter": ["_total", "_created"], "histogram": ["_bucket", "_sum",
                     "_count", "_created"], "gauge": [""]}.get(metric.type, [""])  # fmt: skip
            base = metric.name.removesuffix("_total") if metric.type == "counter" else metric.name
            out.update(base + suffix for suffix in kinds)
        return out


def source_label(source: str) -> str:
    """The `source` label for an event's source: itself if it is a known input format,
    else "other"."""
    return source if source in SOURCES else OTHER_SOURCE


_default: Metrics | None = None


def default_metrics() -> Metrics:
    """The process-wide metrics on the global registry (created once)."""
    global _default
    if _default is None:
        _default = Metrics()
    return _default


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return None


def serve(
    metrics: Metrics,
    port: int,
    ready: Callable[[], bool],
    host: str = "0.0.0.0",
) -> WSGIServer:
    """/metrics (Prometheus text), /healthz (the process answers), /ready (joined and
    Redis answers: 200, else 503), on a daemon thread."""
    prometheus = make_wsgi_app(metrics.registry)

    def app(environ: dict[str, Any], start: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/healthz":
            start("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        if path == "/ready":
            ok = ready()
            metrics.up.set(1 if ok else 0)
            start("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"ready\n" if ok else b"not ready\n"]
        return prometheus(environ, start)  # type: ignore[no-any-return]

    server = make_server(host, port, app, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
