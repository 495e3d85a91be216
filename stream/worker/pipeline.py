"""The worker's processing: one batch of the hot topics at a time, through the core.

    clickstream.events --ingest--> intent.events --detect+score--> tier changes, actions
                          \\--> intent.dead-letter <--/ (late)  \\--> intent.signals (audit)
    (an event whose intent.events partition this worker owns and has read to its end
    skips that topic: ingest hands it to detection in the same batch, `Routing`)
    timer (`Sweeper`): due absence deadlines, visit ends, decay demotions and suppression
                       ends --> signals, tier changes, actions

Order within a batch, so a crash loses no input and no output (what is sent twice keeps
its ids):
  1. ingest the clickstream's records (and take the direct path's events);
  2. detect, the state changes kept in memory (`Core.run`);
  3. score in Redis, idempotent by signal id;
  4. send everything and wait for the broker's acks (`flush`);
  5. write the score indexes, then save the detection state (`flush`);
  6. commit the offsets (`StreamLoop`).
A batch that fails before its commit is processed again and gives the same signals and
ids; if its first run got as far as the score script, the script hands back that run's
result (apply.lua, KEYS[3]) so its output is sent after all, with the same ids.

Bad records go to the dead-letter topic with a reason; a bug of ours dead-letters its
stage's records (or one shopper's) as `processing_error`, never lost. Redis outages are
retried (the batch waits); they never drop input.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Final, TypeVar

import faust
import redis.asyncio as aioredis
from pydantic import BaseModel, ValidationError

from schemas import errors
from schemas.events import Event
from schemas.outputs import OutputTopic, TierChange
from schemas.rules import RuleSet
from schemas.signals import Signal
from stream.clock import Clock, utc_now
from stream.core.detectors.engine import State
from stream.core.ingest import RawRecord, Rejection, ingest_batch, ingest_limits
from stream.core.outputs import Output
from stream.core.process import Apply, Core, Failures, Processed
from stream.core.scoring import Result
from stream.metrics import Metrics, source_label
from stream.settings import Settings
from stream.state.erase import erase
from stream.state.patterns import Loaded, PatternStore, Saved, fence_value
from stream.state.redisbatch import Command, execute
from stream.state.scores import Moves, ScoreStore
from stream.worker.loop import StreamLoop
from stream.worker.outbox import Outbox, Sender, concurrently, count
from stream.worker.retry import RedisRetry, RedisUnusable
from stream.worker.store_guard import StoreGuard
from stream.worker.sweep import Sweeper
from stream.worker.views import register_views

log = logging.getLogger(__name__)

# Shopper groups of a batch detected and scored concurrently: while Redis runs one
# group's score script, this process detects the next group's events.
PROCESS_GROUPS: Final = 2
LATE_DETAIL: Final = "older than the allowed lateness"
M = TypeVar("M", bound=BaseModel)
# An event to detect, its record, its intent.events partition. From ingest directly (the
# direct path), the record is the clickstream's: dead letters name it.
Item = tuple[Event, RawRecord, int]
Stage = Callable[[list[RawRecord], Outbox], Awaitable[None]]


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
    """The processing of one worker, wired to settings, rules and metrics: the hot path's
    batches (`handle`), the timer's sweep (`sweeper`) and the HTTP views."""

    def __init__(
        self,
        app: faust.App | None,
        settings: Settings,
        metrics: Metrics,
        rules: RuleSet,
        redis: aioredis.Redis,
        clock: Clock = utc_now,
        sender: Sender | None = None,
    ) -> None:
        """With `app`, the stream loop, views and timer register on it; without one (the
        Quix Streams benchmark), the caller feeds `handle` and `sweeper.sweep_partitions`
        and `sender` sends."""
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.core = Core(rules)
        self.store = PatternStore(redis, settings.app_id, metrics.redis_roundtrips)
        self.scores = ScoreStore(redis, settings.app_id, self.core.config, metrics.redis_roundtrips)
        self.limits = ingest_limits(settings)
        self.topics = settings.output_topics()
        self.retry = RedisRetry(metrics)
        # One batch or one sweep chunk at a time: state changes never interleave.
        self.lock = asyncio.Lock()
        self.last_batch = -float("inf")  # when `handle` last had records (monotonic)
        self.loop = StreamLoop(settings, metrics, self.handle, self.lock)
        self.send: Sender = sender or self.loop.sender.send_all
        self.sweeper = Sweeper(self)
        self.store_guard = StoreGuard(self)
        self.loop.on_assigned = self.store_guard.on_assigned
        if app is not None:
            app.service(self.loop)  # type: ignore[arg-type]  # an instance is accepted too
            register_views(app, self.scores, clock)
            app.timer(settings.sweep_interval_seconds, name="sweep")(self.sweeper.sweep)

    def ready(self) -> bool:
        return self.loop.ready()

    # --- one batch of the hot topics ----------------------------------------------------
    async def handle(self, records: list[RawRecord]) -> None:
        """Ingest what came from the clickstream, detect and score what came from
        intent.events, send it all, and only then save the detection state. The two
        stages run concurrently (ingest is CPU work, done while Redis serves the other's
        steps); their records go out in a fixed order, ingest's first.

        When this worker owns intent.events partitions that it has read to their end
        (`Routing`), the clickstream events of those partitions skip the hop: ingest
        runs first and hands them to detection, after what this batch fetched from
        intent.events. A crash before the commit reads them again from the clickstream,
        and detection and scoring drop what they already had."""
        self.last_batch = time.monotonic()
        ingested, processed = Outbox(), Outbox()
        raw = [r for r in records if r.topic == self.settings.topic_clickstream]
        events = [r for r in records if r.topic == self.settings.topic_normalised]
        if raw and self.loop.direct:
            direct: list[Item] = []
            # 1. ingest, taking the direct path's events
            await self._guarded(partial(self.ingest, direct=direct), raw, ingested)
            taken = events + [record for _, record, _ in direct]
            if taken:  # 2. and 3. detect and score
                await self._guarded(partial(self.process, direct=direct), taken, processed)
        else:
            stages = [self._guarded(self.process, events, processed)] if events else []
            if raw:
                stages.append(self._guarded(self.ingest, raw, ingested))
            await asyncio.gather(*stages)  # process first: it reaches its first Redis wait
        outbox = Outbox()
        outbox.merge(ingested)
        outbox.merge(processed)
        await self.flush(outbox)  # 4. and 5.

    async def _guarded(self, stage: Stage, records: list[RawRecord], outbox: Outbox) -> None:
        """Run a stage on its records; if it raises (a bug of ours: bad input never
        does), what it queued is dropped and every record is dead-lettered as
        `processing_error`, so the loop goes on and nothing is lost."""
        part = Outbox()
        try:
            await stage(records, part)
        except RedisUnusable:
            raise  # the worker stops: dead-lettering would only hide a Redis that refuses
        except Exception as exc:
            name = getattr(stage, "func", stage).__name__  # a partial names its function
            log.exception("%s failed; dead-lettering all %d records", name, len(records))
            part = Outbox()
            detail = f"{type(exc).__name__}: {exc}"
            self.reject([Rejection(r, errors.PROCESSING_ERROR, detail) for r in records], part)
        outbox.merge(part)

    async def ingest(
        self, records: list[RawRecord], outbox: Outbox, direct: list[Item] | None = None
    ) -> None:
        """Validate clickstream records. A valid event goes to intent.events; with a
        `direct` list, one whose partition there takes the direct path goes into that
        list instead, for detection in this batch."""
        self.metrics.batch_size.labels("ingest").observe(len(records))
        result = ingest_batch(records, self.clock(), self.limits)
        now = self.clock().timestamp()
        lag = self.metrics.event_lag.labels("ingest")
        consumed: Counter[tuple[str, str]] = Counter()
        topic = self.settings.topic_normalised
        add = outbox.add
        place = self.loop.routing.place if direct is not None else None
        placed: dict[bytes, int | None] = {}  # a shopper's key hashed once per batch
        taken: list[Item] = []
        for event, record in zip(result.events, result.sources, strict=True):
            consumed[event.type, source_label(event.source)] += 1
            lag.observe(max(0.0, now - event.ts.timestamp()))
            key = event.shopper_id.encode()
            partition = None
            if place is not None:
                if key not in placed:
                    placed[key] = place(key)
                partition = placed[key]
            if partition is None:
                add(topic, key, event.to_json())
            else:
                taken.append((event, record, partition))
        count(self.metrics.events_consumed, consumed)
        if taken:
            self.metrics.events_direct.inc(len(taken))
        self.reject(result.rejected, outbox)
        if direct is not None:
            direct += taken  # only once nothing here can fail: no record both ways

    async def process(
        self, records: list[RawRecord], outbox: Outbox, direct: list[Item] | None = None
    ) -> None:
        """Detect and score a batch of intent.events. Its shoppers are dealt into
        PROCESS_GROUPS groups that go through load, detection and scoring concurrently.
        A shopper's events are all in one group, so each shopper's order holds; the
        groups' records go out in group order, so a batch's output is the same from run
        to run.

        `direct`: events ingest took straight from the clickstream; their records are
        the last of `records` (dead-lettered with the rest if this stage fails)."""
        self.metrics.batch_size.labels("detect").observe(len(records))
        by_shopper: dict[str, list[Item]] = defaultdict(list)
        fetched = records[: len(records) - len(direct)] if direct else records
        decoded, rejected = _decode(fetched, Event)
        items = [(event, record, record.partition) for event, record in decoded]
        items += direct or ()
        now = self.clock().timestamp()
        lag = self.metrics.event_lag.labels("detect")
        newest: dict[int, float] = {}  # partition -> newest event time in this batch
        for item in items:
            event, _, partition = item
            ts = event.ts.timestamp()
            by_shopper[event.shopper_id].append(item)
            if ts > newest.get(partition, float("-inf")):
                newest[partition] = ts
            lag.observe(max(0.0, now - ts))
        self.sweeper.saw(newest)
        groups: list[dict[str, list[Item]]] = [
            {} for _ in range(min(PROCESS_GROUPS, len(by_shopper)))
        ]
        for i, (shopper, shopper_items) in enumerate(by_shopper.items()):
            groups[i % len(groups)][shopper] = shopper_items
        for group_rejected in await concurrently(
            [partial(self._process_group, g) for g in groups], outbox
        ):
            rejected += group_rejected
        self.reject(rejected, outbox)

    async def _process_group(
        self, by_shopper: dict[str, list[Item]], outbox: Outbox
    ) -> list[Rejection]:
        """Load, detect and score one group of shoppers; returns the records rejected:
        late ones, and every record of a shopper whose detection or scoring raised (a
        bug of ours, or input no bound caught: that shopper alone is dead-lettered)."""
        failures = self.failures()
        states = await self.load(list(by_shopper), failures, outbox)
        core = self.core
        shoppers: dict[str, tuple[State, list[Event]]] = {}
        for shopper, items in by_shopper.items():
            if shopper in failures:
                continue
            events = self._not_forgotten(shopper, [item[0] for item in items], outbox)
            if events:
                shoppers[shopper] = (states.get(shopper) or core.new_state(), events)
        done = await core.run(shoppers, self.apply(failures, "score"), failures)
        if done.duplicates:
            self.metrics.events_duplicate.inc(done.duplicates)
        partitions = {shopper: items[0][2] for shopper, items in by_shopper.items()}
        for shopper, (state, _) in shoppers.items():
            if shopper not in failures:
                outbox.saved[shopper] = self.saved(state, partitions[shopper])
        self.queue(done, partitions, outbox, failures)
        rejected: list[Rejection] = []
        for shopper, late in done.late.items():
            if shopper not in failures:
                late_ids = {event.id for event in late}
                rejected += [
                    Rejection(record, errors.LATE, LATE_DETAIL)
                    for event, record, _ in by_shopper[shopper]
                    if event.id in late_ids
                ]
        for shopper, exc in failures.items():
            detail = f"{type(exc).__name__}: {exc}"[:500]
            rejected += [
                Rejection(r, errors.PROCESSING_ERROR, detail) for _, r, _ in by_shopper[shopper]
            ]
        return rejected

    async def load(
        self, shoppers: list[str], failures: Failures, outbox: Outbox
    ) -> dict[str, State]:
        """The shoppers' detection state, their forget fences noted in `outbox`; one whose
        keys Redis cannot read (a wrong type, after retries) goes into `failures` alone."""

        async def load(some: dict[str, None]) -> dict[str, Loaded]:
            return await self.store.load_fenced(list(some))

        failed = partial(failures.add, "load")
        loaded = await self.retry.each("load", load, dict.fromkeys(shoppers), failed=failed)
        for shopper, (_, forgotten) in loaded.items():
            outbox.fences[shopper] = forgotten
        return {s: state for s, (state, _) in loaded.items() if state is not None}

    def _not_forgotten(self, shopper: str, events: list[Event], outbox: Outbox) -> list[Event]:
        """The events from after the shopper's last forget: those from before it were
        erased with the rest (the input may still hold them) and are dropped, counted."""
        forgotten = outbox.fences.get(shopper)
        if forgotten is None:
            return events
        kept = [event for event in events if event.ts.timestamp() > forgotten]
        if len(kept) < len(events):
            self.metrics.events_forgotten.inc(len(events) - len(kept))
        return kept

    def apply(self, failures: Failures, what: str) -> Apply:
        """The score script on a batch, as `Core.run` calls it; a shopper whose script
        call fails (a script error, a wrong type, after retries) goes into `failures`
        alone, and the others' results come back."""
        failed = partial(failures.add, what)
        return partial(self.retry.each, what, self.scores.apply_many, failed=failed)

    def saved(self, state: State, partition: int) -> Saved:
        engine = self.core.engine
        return Saved(state, engine.ttl(state), engine.deadline(state), partition)

    def failures(self, detect_as: str = "detect") -> Failures:
        """Where shoppers whose processing raises go: each logged with its traceback and
        counted by stage (`detect_as`: the stage a detection failure counts as); the
        caller leaves them out, and everyone else goes on."""

        def failed(stage: str, shopper: str, exc: Exception) -> None:
            stage = detect_as if stage == "detect" else stage
            self.metrics.shopper_failures.labels(stage).inc()
            log.exception("%s failed for shopper %r; that shopper is left out", stage, shopper)

        return Failures(failed)

    # --- output ------------------------------------------------------------------------
    def queue(
        self,
        done: Processed,
        partitions: dict[str, int],
        outbox: Outbox,
        failures: Failures,
    ) -> None:
        """Queue what a run of the core gave: its signals (the audit topic), tier changes
        and actions, and the score indexes to write once they are sent. Nothing of a
        failed shopper: no state saved, nothing indexed or sent."""
        results = {s: r for s, r in done.results.items() if s not in failures}
        self.index(results, done.signals, partitions, done.outputs, outbox)
        self.emit(done.all_signals(failures), outbox)
        self.send_outputs(
            [o for shopper, outs in done.outputs.items() if shopper not in failures for o in outs],
            outbox,
        )
        for shopper in failures:
            outbox.saved.pop(shopper, None)

    def index(
        self,
        results: dict[str, Result],
        signals: dict[str, list[Signal]],
        partitions: dict[str, int],
        outputs: dict[str, list[Output]],
        outbox: Outbox,
    ) -> None:
        """The score indexes of these results (decay deadlines, audiences, tier moves),
        written after the send; and the live conversion count."""
        moves: Moves = []
        for shopper, result in results.items():
            if result.changed:
                moves.append((shopper, result.from_tier, result.to_tier))
            self._count_purchases(result, signals.get(shopper, []))
        audiences = [
            (o.value.op, o.value.audience, o.key)  # type: ignore[attr-defined]
            for shopper in results
            for o in outputs.get(shopper, ())
            if o.topic == OutputTopic.RETARGETING
        ]
        deadlines: dict[str, tuple[int, float | None]] = {
            s: (partitions[s], r.deadline) for s, r in results.items()
        }
        outbox.index.append((deadlines, audiences, moves))

    def _count_purchases(self, result: Result, signals: list[Signal]) -> None:
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

    def emit(self, signals: list[Signal], outbox: Outbox) -> None:
        topic = self.settings.topic_signals
        rules: Counter[tuple[str]] = Counter()
        for signal in signals:
            rules[(signal.rule_id,)] += 1
            outbox.add(topic, signal.shopper_id.encode(), signal.to_json())
        count(self.metrics.signals, rules)

    def send_outputs(self, outputs: list[Output], outbox: Outbox) -> None:
        actions: Counter[tuple[str]] = Counter()
        changes: Counter[tuple[str, str, str]] = Counter()
        topics = self.topics
        for output in outputs:
            actions[(f"topic_{output.topic.value}",)] += 1
            value = output.value
            if isinstance(value, TierChange):
                changes[value.from_tier, value.to_tier, value.reason] += 1
            outbox.add(topics[output.topic], output.key.encode(), value.to_json())
        count(self.metrics.actions, actions)
        count(self.metrics.tier_changes, changes)

    def reject(self, rejected: list[Rejection], outbox: Outbox) -> None:
        if not rejected:
            return
        now = self.clock()
        topic = self.settings.topic_dead_letter
        for rejection in rejected:
            self.metrics.events_rejected.labels(rejection.reason).inc()
            outbox.add(
                topic,
                rejection.key(),
                rejection.dead_letter(now, self.settings.dead_letter_max_bytes),
                [("intent-reason", rejection.reason.encode())],
            )

    async def flush(self, outbox: Outbox) -> None:
        """Send the batch's records, wait for every ack, then write the score indexes
        and save detection state."""
        if outbox.records:  # a sweep's last chunk often finds nothing
            await self.send(outbox.records)
        # One round trip, the score indexes before the detection state: Redis runs a
        # connection's commands in order, so a crash can leave the state unsaved with the
        # indexes written, never the reverse. The reverse would lose the indexes: the
        # batch read again would find its events in the saved state, drop them, and
        # score nothing. Both are safe to write again.
        commands = self.scores.index_commands(outbox.index)
        commands += self.store.save_commands(outbox.saved)
        if outbox.quarantined:
            commands += self.store.unindex_commands(outbox.quarantined)
            commands += self.scores.unindex_commands(outbox.quarantined)
        fenced = list(outbox.fences)
        if commands:
            commands.insert(0, self.store_guard.command())  # is Redis still ours?
            # The fences read again, after the writes in the same round trip: a shopper
            # forgotten since the batch loaded it is erased again (the forget may have
            # run between this batch's score script and these writes).
            commands += self.store.fence_commands(fenced)
            replies = await self.retry("index_save", self._write, commands)
            self.store_guard.check(replies[0])
            now = replies[len(replies) - len(fenced) :]
            raced = [
                shopper
                for shopper, reply in zip(fenced, now, strict=True)
                if fence_value(reply) != outbox.fences[shopper]
            ]
            for shopper in raced:
                log.warning("shopper %r was forgotten during a batch: erased again", shopper)
                await self.retry("index_save", self._erase, shopper)
                self.metrics.forgets_reapplied.inc()

    async def _write(self, commands: list[Command]) -> list[Any]:
        replies = await execute(self.scores.redis, commands)
        self.metrics.redis_roundtrips.labels("index_save").inc()
        return replies

    async def _erase(self, shopper: str) -> None:
        await erase(self.scores.redis, self.settings.app_id, shopper, self.settings.partitions)
