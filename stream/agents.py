"""Faust agents: decode, call the pure core, write, send. Nothing else happens here.

    clickstream.events --ingest--> intent.events --detect--> intent.signals --score-->
                          \\--> intent.dead-letter <--/ (late)    tier changes, actions
    timer (sweep): due absence deadlines and visit ends --> intent.signals;
                   due decay demotions and suppression ends --> tier changes, actions

Each agent takes batches (`take_events`) so every downstream step works on a list, and
handles per-batch errors itself: Faust acks an event even when the agent raises, so an
exception that escaped would lose the batch silently. Redis outages are retried (the
batch waits); they never drop input.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any, Final, TypeVar

import faust
import redis.asyncio as aioredis
from faust.web import Request, Response, View
from pydantic import BaseModel, ValidationError
from redis.exceptions import RedisError

from schemas import errors
from schemas.events import Event
from schemas.outputs import TierChange
from schemas.rules import RuleSet
from schemas.signals import Signal
from stream.clock import Clock, utc_now
from stream.detectors.engine import Engine, State
from stream.ingest import IngestLimits, IngestResult, RawRecord, Rejection, ingest_batch
from stream.metrics import Metrics
from stream.patterns import PatternStore, Saved
from stream.scoring.actions import Output, outputs_for, to_score_signal
from stream.scoring.reference import ScoreConfig, ScoreSignal
from stream.scoring.store import ScoreStore
from stream.settings import Settings
from stream.views import AUDIENCE_PAGE, audience_page, read_shopper

log = logging.getLogger(__name__)

IDLE_GRACE_SECONDS: Final = 1.0  # a partition this long without input is "idle": wall clock rules
SWEEP_BATCH: Final = 1000  # due shoppers handled per partition per sweep
RETRY_MAX_SECONDS: Final = 30.0
TIER_GAUGE_EVERY: Final = 5  # sweeps between refreshes of intent_shoppers (SCARD x 4)
T = TypeVar("T")


def raw_topic(app: faust.App, name: str, settings: Settings) -> Any:
    """A topic of raw bytes: decoding happens once, in `stream.ingest`, never in Faust."""
    return app.topic(
        name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
    )


def _record(event: Any) -> RawRecord:
    message = event.message
    return RawRecord(message.value, message.key, message.topic, message.partition, message.offset)


M = TypeVar("M", bound=BaseModel)


def _decode(
    records: list[RawRecord], model: type[M]
) -> tuple[list[tuple[M, RawRecord]], list[Rejection]]:
    """Internal records (written by an earlier stage) to models; a failure is a bug of
    ours, dead-lettered as `processing_error` rather than lost."""
    decoded: list[tuple[M, RawRecord]] = []
    rejected: list[Rejection] = []
    for record in records:
        try:
            decoded.append((model.model_validate_json(record.value or b""), record))
        except ValidationError as exc:
            rejected.append(Rejection(record, errors.PROCESSING_ERROR, str(exc)[:500]))
    return decoded, rejected


class Pipeline:
    """The topics, agents and timer of one app, wired to settings, rules and metrics."""

    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        metrics: Metrics,
        rules: RuleSet,
        redis: aioredis.Redis,
        clock: Clock = utc_now,
    ) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.engine = Engine(rules)
        self.store = PatternStore(redis, settings.app_id, metrics.redis_roundtrips)
        tiers = rules.tiers
        self.scores = ScoreStore(
            redis,
            settings.app_id,
            ScoreConfig(tiers.low, tiers.mid, tiers.high, tiers.hysteresis),
            metrics.redis_roundtrips,
        )
        self.limits = IngestLimits(
            max_bytes=settings.max_event_bytes,
            max_skew=timedelta(seconds=settings.max_clock_skew_seconds),
        )
        self.clickstream = raw_topic(app, settings.topic_clickstream, settings)
        self.normalised = raw_topic(app, settings.topic_normalised, settings)
        self.signals = raw_topic(app, settings.topic_signals, settings)
        self.dead_letter = raw_topic(app, settings.topic_dead_letter, settings)
        self.outputs = {
            name: raw_topic(app, str(getattr(settings, name)), settings)
            for name in ("topic_tier_changes", "topic_retargeting", "topic_cart_recovery",
                         "topic_nurture", "topic_suppression")
        }  # fmt: skip
        # Serialise state changes of this worker: a batch and a sweep never interleave.
        self.lock = asyncio.Lock()
        self.score_lock = asyncio.Lock()
        self._sweeps = 0
        # Per partition and stage: the newest event time seen, and when input last arrived.
        self.watermark: dict[tuple[str, int], float] = {}
        self.last_input: dict[tuple[str, int], float] = {}
        app.agent(self.clickstream, name="ingest")(self.ingest)
        app.agent(self.normalised, name="detect")(self.detect)
        app.agent(self.signals, name="score")(self.score)
        self._register_views()
        app.timer(settings.sweep_interval_seconds, name="sweep")(self.sweep)

    async def _batches(
        self, stream: faust.StreamT[bytes], stage: str
    ) -> AsyncIterator[tuple[Any, list[RawRecord]]]:
        """Batches of a stage's input: Faust events (for offsets) and their raw records."""
        # take_events is faust-streaming >= 0.10; its stubs do not declare it.
        async for batch in stream.take_events(  # type: ignore[attr-defined]
            self.settings.batch_size, within=self.settings.batch_window_seconds
        ):
            records = [_record(event) for event in batch]
            self.metrics.batch_size.labels(stage).observe(len(records))
            yield batch, records

    # --- ingest ------------------------------------------------------------------------
    async def ingest(self, stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        async for batch, records in self._batches(stream, "ingest"):
            try:
                result = ingest_batch(records, self.clock(), self.limits)
            except Exception as exc:  # ingest_batch never raises; this guards a regression
                log.exception("ingest batch failed; dead-lettering all %d records", len(records))
                detail = f"{type(exc).__name__}: {exc}"
                result = IngestResult(
                    rejected=[Rejection(r, errors.PROCESSING_ERROR, detail) for r in records]
                )
            now = self.clock().timestamp()
            lag = self.metrics.event_lag.labels("ingest")
            for event in result.events:
                self.metrics.events_consumed.labels(event.type, event.source).inc()
                lag.observe(max(0.0, now - event.ts.timestamp()))
                await self.normalised.send(key=event.shopper_id.encode(), value=event.to_json())
            self._consumer_lag(batch)
            await self.reject(result.rejected)
            yield None

    # --- detect ------------------------------------------------------------------------
    async def detect(self, stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        async for batch, records in self._batches(stream, "detect"):
            by_shopper: dict[str, list[tuple[Event, RawRecord]]] = defaultdict(list)
            decoded, rejected = _decode(records, Event)
            for event, record in decoded:
                by_shopper[event.shopper_id].append((event, record))
                self._saw("detect", record.partition, event.ts.timestamp())
            now = self.clock().timestamp()
            lag = self.metrics.event_lag.labels("detect")
            for items in by_shopper.values():
                for event, _ in items:
                    lag.observe(max(0.0, now - event.ts.timestamp()))
            self._consumer_lag(batch)
            signals, late = await self._retry("detect", self._detect, by_shopper)
            await self.emit(signals)
            rejected += [Rejection(r, errors.LATE, "older than the allowed lateness") for r in late]
            await self.reject(rejected)
            yield None

    async def _detect(
        self, by_shopper: dict[str, list[tuple[Event, RawRecord]]]
    ) -> tuple[list[Signal], list[RawRecord]]:
        signals: list[Signal] = []
        late: list[RawRecord] = []
        async with self.lock:
            states = await self.store.load(list(by_shopper))
            saved: dict[str, Saved] = {}
            for shopper, items in by_shopper.items():
                state = states.get(shopper) or self.engine.new_state()
                outcome = self.engine.process(shopper, state, [event for event, _ in items])
                signals += outcome.signals
                late_ids = {event.id for event in outcome.late}
                late += [record for event, record in items if event.id in late_ids]
                self.metrics.events_duplicate.inc(outcome.duplicates)
                saved[shopper] = self._saved(state, items[0][1].partition)
            await self.store.save(saved)
        return signals, late

    def _saved(self, state: State, partition: int) -> Saved:
        return Saved(state, self.engine.ttl(state), self.engine.deadline(state), partition)

    def _saw(self, stage: str, partition: int, ts: float) -> None:
        key = (stage, partition)
        self.watermark[key] = max(ts, self.watermark.get(key, ts))
        self.last_input[key] = time.monotonic()

    # --- sweep: deadlines whose time has come, with no further input needed -------------
    def until(self, stage: str, partition: int) -> float:
        """How far event time has certainly advanced on a partition.

        While input flows, the partition's newest event time minus the allowed lateness
        (so a replay of old data fires in event time, not all at once). Once the
        partition is idle, the wall clock: a shopper who sends nothing more still fires.
        """
        now = self.clock().timestamp()
        watermark = self.watermark.get((stage, partition))
        idle = time.monotonic() - self.last_input.get((stage, partition), 0.0) >= IDLE_GRACE_SECONDS
        if watermark is None or idle:
            return max(now, (watermark or now) - self.engine.lateness)
        return watermark - self.engine.lateness

    async def sweep(self) -> None:
        try:
            assignment = self.app.consumer.assignment()
            for partition in sorted(tp.partition for tp in assignment
                                    if tp.topic == self.settings.topic_normalised):  # fmt: skip
                signals = await self._retry("sweep", self._sweep, partition)
                await self.emit(signals)
            for partition in sorted(tp.partition for tp in assignment
                                    if tp.topic == self.settings.topic_signals):  # fmt: skip
                outputs = await self._retry("decay", self._decay, partition)
                await self.send_outputs(outputs)
            self._sweeps += 1
            if self._sweeps % TIER_GAUGE_EVERY == 0:
                await self._retry("tiers", self.refresh_tier_gauge)
            self.metrics.up.set(1 if assignment else 0)
        except Exception:  # the timer must keep running; the next sweep retries
            self.metrics.up.set(0)
            log.exception("sweep failed")

    async def _sweep(self, partition: int) -> list[Signal]:
        until = self.until("detect", partition)
        shoppers = await self.store.due(partition, until, SWEEP_BATCH)
        if not shoppers:
            return []
        signals: list[Signal] = []
        async with self.lock:
            states = await self.store.load(shoppers)
            saved: dict[str, Saved] = {}
            for shopper in shoppers:
                state = states.get(shopper) or self.engine.new_state()
                signals += self.engine.advance(shopper, state, until)
                saved[shopper] = self._saved(state, partition)
            await self.store.save(saved)
        return signals

    # --- score ---------------------------------------------------------------------------
    async def score(self, stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        async for batch, records in self._batches(stream, "score"):
            by_shopper: dict[str, list[Signal]] = defaultdict(list)
            partitions: dict[str, int] = {}
            decoded, rejected = _decode(records, Signal)
            for signal, record in decoded:
                by_shopper[signal.shopper_id].append(signal)
                partitions[signal.shopper_id] = record.partition
                self._saw("score", record.partition, signal.at.timestamp())
            self._consumer_lag(batch)
            outputs = await self._retry("score", self._score, by_shopper, partitions)
            await self.send_outputs(outputs)
            await self.reject(rejected)
            yield None

    async def _score(
        self, by_shopper: dict[str, list[Signal]], partitions: dict[str, int]
    ) -> list[Output]:
        batch: dict[str, tuple[list[ScoreSignal], float | None]] = {
            s: ([to_score_signal(x) for x in sigs], None) for s, sigs in by_shopper.items()
        }
        async with self.score_lock:
            results = await self.scores.apply_many(batch)
            return await self._index(results, by_shopper, partitions)

    async def _decay(self, partition: int) -> list[Output]:
        due = await self.scores.due(partition, self.until("score", partition), SWEEP_BATCH)
        if not due:
            return []
        async with self.score_lock:
            results = await self.scores.apply_many({s: ([], t) for s, t in due.items()})
            return await self._index(results, {}, dict.fromkeys(due, partition))

    async def _index(
        self,
        results: dict[str, Any],
        by_shopper: dict[str, list[Signal]],
        partitions: dict[str, int],
    ) -> list[Output]:
        outputs: list[Output] = []
        moves: list[tuple[str, str, str]] = []
        for shopper, result in results.items():
            signals = by_shopper.get(shopper, [])
            outputs += outputs_for(shopper, result, signals)
            if result.changed:
                moves.append((shopper, result.from_tier, result.to_tier))
            self._count_purchases(result, signals)
        audiences = [
            (o.value.op, o.value.audience, o.key)  # type: ignore[attr-defined]
            for o in outputs
            if o.topic == "topic_retargeting"
        ]
        deadlines = {s: (partitions[s], r.deadline) for s, r in results.items()}
        await self.scores.index(deadlines, audiences, moves)
        return outputs

    def _count_purchases(self, result: Any, signals: list[Signal]) -> None:
        """Live conversion: each new purchase, against the tier held just before it."""
        new = set(result.new_ids)
        for signal in signals:
            if "conversion" in signal.actions and signal.signal_id in new:
                change = next((c for c in result.changes if c.reason == "purchase"), None)
                if change is not None:
                    tier = change.from_tier
                else:  # a purchase always lands on none (or stays suppressed)
                    tier = "suppressed" if result.to_tier == "suppressed" else "none"
                self.metrics.purchases.labels(tier).inc()

    def _consumer_lag(self, batch: Any) -> None:
        last: dict[Any, int] = {}
        for event in batch:
            last[event.message.tp] = max(event.message.offset, last.get(event.message.tp, -1))
        for tp, offset in last.items():
            try:
                end = self.app.consumer.highwater(tp)
            except Exception:  # not known yet (during a rebalance)
                continue
            if end is not None:
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                    max(0, end - offset - 1)
                )

    async def refresh_tier_gauge(self) -> None:
        counts = await self.scores.tier_counts(("low", "mid", "high", "suppressed"))
        for tier, count in counts.items():
            self.metrics.shoppers.labels(tier).set(count)

    async def send_outputs(self, outputs: list[Output]) -> None:
        for output in outputs:
            self.metrics.actions.labels(output.topic).inc()
            value = output.value
            if isinstance(value, TierChange):
                self.metrics.tier_changes.labels(value.from_tier, value.to_tier, value.reason).inc()
            await self.outputs[output.topic].send(key=output.key.encode(), value=value.to_json())

    # --- HTTP views (Faust web) ----------------------------------------------------------
    def _register_views(self) -> None:
        async def shopper_page(view: View, request: Request, shopper: str) -> Response:
            now = self.clock().timestamp()
            return view.json(await read_shopper(self.scores, shopper, now))

        async def audience(view: View, request: Request, name: str) -> Response:
            try:
                cursor = int(request.query.get("cursor", 0))
                count = min(int(request.query.get("count", AUDIENCE_PAGE)), 10 * AUDIENCE_PAGE)
            except ValueError:
                return view.json({"error": "cursor and count are whole numbers"}, status=400)
            return view.json(
                await audience_page(self.scores.redis, self.scores, name, cursor, count)
            )

        self.app.page("/shoppers/{shopper}")(shopper_page)
        self.app.page("/audiences/{name}")(audience)

    # --- output ------------------------------------------------------------------------
    async def emit(self, signals: list[Signal]) -> None:
        for signal in signals:
            self.metrics.signals.labels(signal.rule_id).inc()
            await self.signals.send(key=signal.shopper_id.encode(), value=signal.to_json())

    async def reject(self, rejected: list[Rejection]) -> None:
        if not rejected:
            return
        now = self.clock()
        for rejection in rejected:
            self.metrics.events_rejected.labels(rejection.reason).inc()
            await self.dead_letter.send(
                key=rejection.record.key,
                value=rejection.dead_letter(now),
                headers={"intent-reason": rejection.reason.encode()},
            )

    async def _retry(self, what: str, step: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run a Redis step until it succeeds: an outage delays input, never drops it."""
        delay = 0.1
        latency = self.metrics.redis_seconds.labels(what)
        while True:
            try:
                started = time.perf_counter()
                result = await step(*args)
                latency.observe(time.perf_counter() - started)
                return result
            except (RedisError, OSError) as exc:
                self.metrics.redis_errors.labels(what).inc()
                log.warning("%s: Redis error (%s); retrying in %.1f s", what, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
