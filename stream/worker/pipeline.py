"""The stream: a batched hot path inside the Faust app. Decode, call the pure core, write,
send. Nothing else happens here.

    clickstream.events --ingest--> intent.events --detect+score--> tier changes, actions
                          \\--> intent.dead-letter <--/ (late)  \\--> intent.signals (audit)
    (an event whose intent.events partition this worker owns and has read to its end
    skips that topic: ingest hands it to detection in the same batch, `StreamLoop.direct`)
    timer (sweep): due absence deadlines, visit ends, decay demotions and suppression
                   ends --> signals, tier changes, actions

Faust is the application: the worker, its web server and views, the timer, the CLI.
The two hot topics are consumed by `StreamLoop`, a service of the app that reads them
with one aiokafka consumer in batches (`getmany`), hands each batch to the pure core
and sends the results with one producer flush. Within a batch, ingest and the groups of
shoppers being detected and scored run as concurrent tasks, so this process works while
Redis runs another group's script (`PROCESS_GROUPS`). Faust's own agents move one
message at a time through tasks and channels, and that capped the pipeline at ~400
events/s here (measured on the embedded broker: ~4.3k/s when a Faust agent only counts);
README.md, "Performance", has the profiles.

Order within a batch, so a crash loses no input and no output (what is sent twice keeps
its ids): detect (state changes kept in memory) -> score in Redis (idempotent by signal
id) -> send and wait for the broker's acks -> write the score indexes and save detection
state -> commit offsets. The timer's decays: score -> send -> index, so a decay whose
output was not sent stays due, and the script hands its transitions back when it is
made again.
A batch that fails before its commit is processed again and gives the same signals and
ids; if its first run got as far as the score script, the script hands back that run's
result (apply.lua, KEYS[3]) so its output is sent after all, with the same ids. After a
takeover the timer keeps to event time until the new owner has read its backlog (see
`Pipeline.until`), so that batch is read again before any wall-clock deadline fires.
Per-batch errors are caught: bad records go to the dead-letter topic with a reason, and
a bug of ours dead-letters its stage's records as `processing_error` (never lost).
Redis outages are retried (the batch waits); they never drop input.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final, TypeVar

import faust
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.partitioner import DefaultPartitioner
from faust.web import Request, Response, View
from mode import Service
from pydantic import BaseModel, ValidationError
from redis.exceptions import RedisError

from schemas import errors
from schemas.events import Event
from schemas.outputs import TierChange
from schemas.rules import RuleSet
from schemas.signals import Signal
from stream.clock import Clock, utc_now
from stream.core.detectors.engine import Engine, State
from stream.core.ingest import RawRecord, Rejection, ingest_batch, ingest_limits
from stream.core.outputs import Output, outputs_for, score_signals
from stream.core.scoring import ScoreConfig, ScoreSignal
from stream.metrics import Metrics, source_label
from stream.settings import Settings
from stream.state.patterns import PatternStore, Saved
from stream.state.redisbatch import Command, execute
from stream.state.scores import IndexWrite, Moves, ScoreStore
from stream.worker.runtime import tune_gc
from stream.worker.views import AUDIENCE_PAGE, audience_page, read_shopper

log = logging.getLogger(__name__)

SWEEP_CHUNK: Final = 100  # due shoppers handled under the lock at once (bounds the pause)
# ... once no batch has come for SWEEP_QUIET_SECONDS: no live event is waiting to go first,
# and larger chunks pay each round's fixed costs (round trips, the send and its acks) on
# more shoppers. A batch that does arrive waits for at most one such chunk.
SWEEP_CHUNK_QUIET: Final = 1000
SWEEP_QUIET_SECONDS: Final = 0.5
SWEEP_TURN: Final = 2000  # due shoppers of a partition in a row before the next one's turn
# Most due shoppers of a partition in one sweep: a backlog larger than this (a long
# outage) goes on at the next tick; and shoppers that stayed due after being handled (a
# fault) cannot keep one sweep going for ever.
SWEEP_MAX: Final = 50_000
RETRY_MAX_SECONDS: Final = 30.0
# How long the broker may hold a fetch while it has no new record. Apache Kafka answers as
# soon as one arrives; the embedded broker does not, and a record waited up to about half
# of this there (bench/HISTORY.md, step 11). Not the batch window: on the embedded broker, fetches
# of a few ms made the tail worse (one hop at 5k/s, 8 partitions: p99 67-128 ms at 5 ms,
# 33-36 ms at 20): each fetch costs it CPU.
FETCH_WAIT_MS: Final = 20
REDIS_STEP_SECONDS: Final = 10.0  # deadline of one Redis step (a round trip); then retried
PAUSE_BACKLOG_BATCHES: Final = 10  # intent.events batches waiting before ingest pauses
RESUME_BACKLOG_BATCHES: Final = 5  # ... and at most this many before it resumes
# After an assignment, clickstream batches per partition processed before any sweep: its
# last owner may have scored up to one batch past its commit without sending the output
# (and up to two if a commit of its failed and it went on). See `StreamLoop.hold`.
INTAKE_HOLD_BATCHES: Final = 2
# ... but for at most this long, then logged and let go (a worker stuck elsewhere).
INTAKE_HOLD_MAX_SECONDS: Final = 60.0
PROCESS_GROUPS: Final = 2  # shopper groups of a batch detected and scored concurrently
TIER_GAUGE_EVERY: Final = 5  # sweeps between refreshes of intent_shoppers (SCARD x 4)
LATE_DETAIL: Final = "older than the allowed lateness"
T = TypeVar("T")
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


def _count(metric: Any, counts: Counter[Any]) -> None:
    """A batch's counts into a labelled counter: one increment per label set, not per
    record (a `labels()` lookup per record was 4 % of the hot path)."""
    for labels, n in counts.items():
        metric.labels(*labels).inc(n)


Headers = list[tuple[str, bytes]]
OutRecord = tuple[str, bytes | None, bytes, Headers | None]  # topic, key, value, headers
# An event to detect, its record, its intent.events partition. From ingest directly
# (`StreamLoop.direct`), the record is the clickstream's: dead letters name it.
Item = tuple[Event, RawRecord, int]
Sender = Callable[[list[OutRecord]], Awaitable[None]]
Stage = Callable[[list[RawRecord], "Outbox"], Awaitable[None]]


@dataclass
class SweepPass:
    """One partition's part of a sweep: what is due by `until`, detection deadlines first
    (until fewer than a chunk are left), then decays."""

    partition: int
    until: float
    decays: bool = False
    handled: int = 0  # due shoppers handled so far
    turn_began: int = 0  # `handled` when its current turn began
    decayed: set[tuple[str, float]] = field(default_factory=set)  # (shopper, due time)


@dataclass
class Outbox:
    """What one batch sends: (topic, key, value, headers), flushed together."""

    records: list[OutRecord] = field(default_factory=list)
    saved: dict[str, Saved] = field(default_factory=dict)  # detection state, written after
    # score indexes (decay deadlines, audiences, tier moves), written after the send: a
    # decay whose output was not sent stays due, and its call comes back (apply.lua)
    index: list[IndexWrite] = field(default_factory=list)
    # shoppers whose sweep raised -> their partition: taken off the timer's indexes
    quarantined: dict[str, int] = field(default_factory=dict)

    def add(
        self, topic: str, key: bytes | None, value: bytes, headers: Headers | None = None
    ) -> None:
        self.records.append((topic, key, value, headers))

    def clear(self) -> None:
        self.records.clear()
        self.saved.clear()
        self.index.clear()
        self.quarantined.clear()

    def merge(self, other: Outbox) -> None:
        self.records += other.records
        self.saved.update(other.saved)
        self.index += other.index
        self.quarantined.update(other.quarantined)


async def concurrently(
    jobs: list[Callable[[Outbox], Coroutine[Any, Any, T]]], outbox: Outbox
) -> list[T]:
    """Run the jobs as concurrent tasks, each queuing into an outbox of its own, and merge
    those into `outbox` in job order, so what goes out does not depend on which finished
    first; the jobs' results, in the same order. One that fails cancels the others
    before they go further, and its own exception is raised, not the task group's."""
    parts = [Outbox() for _ in jobs]
    try:
        async with asyncio.TaskGroup() as tasks:
            running = [tasks.create_task(job(part)) for job, part in zip(jobs, parts, strict=True)]
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None
    for part in parts:
        outbox.merge(part)
    return [task.result() for task in running]


class Pipeline:
    """The processing of one worker, wired to settings, rules and metrics: the hot path's
    batches (`handle`), the timer's sweep and the HTTP views."""

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
        Quix Streams benchmark), the caller feeds `handle` and `sweep_partitions` and
        `sender` sends."""
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
        self.limits = ingest_limits(settings)
        self.topics: dict[str, str] = {
            name: str(getattr(settings, name))
            for name in ("topic_tier_changes", "topic_retargeting", "topic_cart_recovery",
                         "topic_nurture", "topic_suppression")
        }  # fmt: skip
        # One batch or one sweep at a time: state changes of this worker never interleave.
        self.lock = asyncio.Lock()
        self._sweeps = 0
        # Per partition of intent.events: the newest event time seen, and when input came.
        self.watermark: dict[int, float] = {}
        self.last_input: dict[int, float] = {}
        self.last_batch = -math.inf  # when `handle` last had records (monotonic)
        self.loop = StreamLoop(self)
        self.send: Sender = sender or self.loop.send_all
        if app is not None:
            app.service(self.loop)  # type: ignore[arg-type]  # an instance is accepted too
            self._register_views(app)
            app.timer(settings.sweep_interval_seconds, name="sweep")(self.sweep)

    def ready(self) -> bool:
        return bool(self.loop.assignment) and self.loop.crash_reason is None

    # --- one batch of the hot topics ----------------------------------------------------
    async def handle(self, records: list[RawRecord]) -> None:
        """Ingest what came from the clickstream, detect and score what came from
        intent.events, send it all, and only then save the detection state. The two
        stages run concurrently (ingest is CPU work, done while Redis serves the other's
        steps); their records go out in a fixed order, ingest's first.

        When this worker owns intent.events partitions that it has read to their end
        (`StreamLoop.direct`), the clickstream events of those partitions skip the hop:
        ingest runs first and hands them to detection, after what this batch fetched
        from intent.events. Nothing of theirs is left unread there, so each shopper's
        order is the one the hop would give; a crash before the commit reads them again
        from the clickstream, and detection and scoring drop what they already had."""
        self.last_batch = time.monotonic()
        ingested, processed = Outbox(), Outbox()
        raw = [r for r in records if r.topic == self.settings.topic_clickstream]
        events = [r for r in records if r.topic == self.settings.topic_normalised]
        if raw and self.loop.direct:
            direct: list[Item] = []
            await self._guarded(partial(self.ingest, direct=direct), raw, ingested)
            taken = events + [record for _, record, _ in direct]
            if taken:
                await self._guarded(partial(self.process, direct=direct), taken, processed)
        else:
            stages = [self._guarded(self.process, events, processed)] if events else []
            if raw:
                stages.append(self._guarded(self.ingest, raw, ingested))
            await asyncio.gather(*stages)  # process first: it reaches its first Redis wait
        outbox = Outbox()
        outbox.merge(ingested)
        outbox.merge(processed)
        await self.flush(outbox)

    async def _guarded(self, stage: Stage, records: list[RawRecord], outbox: Outbox) -> None:
        """Run a stage on its records; if it raises (a bug of ours: bad input never
        does), what it queued is dropped and every record is dead-lettered as
        `processing_error`, so the loop goes on and nothing is lost."""
        part = Outbox()
        try:
            await stage(records, part)
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
        `direct` list, one whose partition there is in `StreamLoop.direct` goes into
        that list instead, for detection in this batch."""
        self.metrics.batch_size.labels("ingest").observe(len(records))
        result = ingest_batch(records, self.clock(), self.limits)
        now = self.clock().timestamp()
        lag = self.metrics.event_lag.labels("ingest")
        consumed: Counter[tuple[str, str]] = Counter()
        topic = self.settings.topic_normalised
        add = outbox.add
        place = self.loop.place if direct is not None else None
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
        _count(self.metrics.events_consumed, consumed)
        if taken:
            self.metrics.events_direct.inc(len(taken))
        self.reject(result.rejected, outbox)
        if direct is not None:
            direct += taken  # only once nothing here can fail: no record both ways

    async def process(
        self, records: list[RawRecord], outbox: Outbox, direct: list[Item] | None = None
    ) -> None:
        """Detect and score a batch of intent.events. Its shoppers are dealt into
        PROCESS_GROUPS groups that go through load, detection and scoring concurrently:
        while Redis runs one group's score script, this process detects the next group's
        events (one group after the other, this process waited for Redis ~60 µs per
        event, a quarter of its time; ~10 µs now, `make hotpath`). A shopper's events
        are all in one group, so each shopper's order holds; the groups' records go out
        in group order, so a batch's output is the same from run to run.

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
        self._saw(newest)
        groups: list[dict[str, list[Item]]] = [
            {} for _ in range(min(PROCESS_GROUPS, len(by_shopper)))
        ]
        for i, (shopper, items) in enumerate(by_shopper.items()):
            groups[i % len(groups)][shopper] = items
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
        states = await self._retry("load", self.store.load, list(by_shopper))
        failed: dict[str, Exception] = {}
        signals, groups, late = self._detect(by_shopper, states, outbox, failed)
        partitions = {shopper: items[0][2] for shopper, items in by_shopper.items()}
        await self._score(signals, partitions, outbox, groups, failed)
        rejected = [Rejection(r, errors.LATE, LATE_DETAIL) for r in late]
        for shopper, exc in failed.items():
            detail = f"{type(exc).__name__}: {exc}"[:500]
            rejected += [
                Rejection(r, errors.PROCESSING_ERROR, detail) for _, r, _ in by_shopper[shopper]
            ]
        return rejected

    def _detect(
        self,
        by_shopper: dict[str, list[Item]],
        states: dict[str, State],
        outbox: Outbox,
        failed: dict[str, Exception],
    ) -> tuple[list[Signal], dict[str, int], list[RawRecord]]:
        """Signals, their scoring order (`Outcome.groups`) and the late records. A
        shopper whose detection raises goes into `failed`, its state left as it was."""
        signals: list[Signal] = []
        groups: dict[str, int] = {}
        late: list[RawRecord] = []
        for shopper, items in by_shopper.items():
            state = states.get(shopper) or self.engine.new_state()
            try:
                outcome = self.engine.process(shopper, state, [item[0] for item in items])
            except Exception as exc:
                self._failed(failed, "detect", shopper, exc)
                continue
            signals += outcome.signals
            groups.update(outcome.groups)
            if outcome.late:
                late_ids = {event.id for event in outcome.late}
                late += [record for event, record, _ in items if event.id in late_ids]
            if outcome.duplicates:
                self.metrics.events_duplicate.inc(outcome.duplicates)
            outbox.saved[shopper] = self._saved(state, items[0][2])
        return signals, groups, late

    def _saved(self, state: State, partition: int) -> Saved:
        return Saved(state, self.engine.ttl(state), self.engine.deadline(state), partition)

    def _saw(self, newest: dict[int, float]) -> None:
        """Input arrived on these partitions, the newest event at these times."""
        arrived = time.monotonic()
        for partition, ts in newest.items():
            self.watermark[partition] = max(ts, self.watermark.get(partition, ts))
            self.last_input[partition] = arrived

    async def _score(
        self,
        signals: list[Signal],
        partitions: dict[str, int],
        outbox: Outbox,
        groups: dict[str, int] | None,
        failed: dict[str, Exception],
    ) -> None:
        """Score new signals, index the results, and queue signals and outputs to send.
        `groups`: their scoring order (`Outcome.groups`); None: `ADVANCED` for all. A
        shopper whose scoring raises goes into `failed`: its signals and outputs are not
        sent, its detection state not saved, and nothing of it is indexed."""
        by_shopper: dict[str, list[Signal]] = defaultdict(list)
        for signal in signals:
            by_shopper[signal.shopper_id].append(signal)
        batch: dict[str, tuple[list[ScoreSignal], float | None]] = {}
        for shopper, sigs in by_shopper.items():
            try:
                batch[shopper] = (score_signals(sigs, groups or {}), None)
            except Exception as exc:
                self._failed(failed, "score", shopper, exc)
        if batch:
            results = await self._retry("score", self.scores.apply_many, batch)
            outputs = self._outputs(results, by_shopper, partitions, outbox, failed)
            self.emit([s for s in signals if s.shopper_id not in failed], outbox)
            self.send_outputs(outputs, outbox)
        for shopper in failed:
            outbox.saved.pop(shopper, None)

    def _failed(
        self, failed: dict[str, Exception], stage: str, shopper: str, exc: Exception
    ) -> None:
        """One shopper's processing raised: logged with its traceback and counted; the
        caller leaves that shopper out, and everyone else goes on."""
        failed[shopper] = exc
        self.metrics.shopper_failures.labels(stage).inc()
        log.exception("%s failed for shopper %r; that shopper is left out", stage, shopper)

    # --- sweep: deadlines whose time has come, with no further input needed -------------
    def until(self, partition: int) -> float | None:
        """How far event time has certainly advanced on a partition; None: not known yet.

        While input flows, the partition's newest event time minus the allowed lateness
        (so a replay of old data fires in event time, not all at once). Once the
        partition is idle, the wall clock: a shopper who sends nothing more still fires.
        Idle means no input for a moment *and* this worker has read every partition it
        owns to the end. Right after a start or a takeover nothing has been read yet,
        and what waits in the topics may cancel a deadline (the purchase that ends a
        checkout): by the wall clock, every deadline that fell while the worker was
        down would fire at once, for shoppers who did buy.

        Nothing at all is due on a partition this worker was just given until it has
        read up to that partition's end as of the assignment (`StreamLoop.held`). Its
        last owner may have crashed between scoring a batch and sending its output; that
        batch is read again, perhaps in several parts, and a decay fired in between (in
        event time) would be a transition after the unsent result, so the score script
        could no longer hand that result back, and those changes would be lost. The
        events it took straight from the clickstream are read again from there, by
        whichever worker owns them now: nothing is due on any partition until the group
        has processed every clickstream partition a few batches past its commits as of
        the assignment (`StreamLoop.intake`), and this worker has read back what reached
        intent.events by then.

        Nothing is due either while a batch whose output the broker refused waits to be
        processed again (`StreamLoop.redo`): its scores are applied and its output is not
        out, so a decay fired first would lose that output in the same way. Its shoppers
        may be on any partition (the direct path), so every partition waits.
        """
        if self.loop.held(partition) or self.loop.redo or self.loop.intake:
            return None
        watermark = self.watermark.get(partition)
        idle_for = time.monotonic() - self.last_input.get(partition, 0.0)
        quiet = idle_for >= self.settings.idle_grace_seconds
        if quiet and self.loop.caught_up:
            now = self.clock().timestamp()
            return max(now, (watermark or now) - self.engine.lateness)
        if watermark is None:
            return None
        return watermark - self.engine.lateness

    async def sweep(self) -> None:
        if self.loop.intake:  # held after an assignment: has the hold ended? (once a tick)
            await self.loop.intake_read()
        partitions = {
            tp.partition
            for tp in self.loop.assignment
            if tp.topic == self.settings.topic_normalised
        }
        await self.sweep_partitions(partitions)

    async def sweep_partitions(self, partitions: set[int]) -> int:
        """Fire everything due on these partitions up to how far event time has certainly
        advanced on each (`until`, taken once per partition for the whole sweep): the
        detection deadlines first, then the decays (`SweepPass`).

        The order matters. A shopper's absence or visit end (a signal at its own time)
        must be scored before a decay due later than it, or the decay demotes first and
        the signal lands after it, at the decay's time: a promotion and a second
        demotion that never happened in event time. Interleaving the two per chunk did
        that whenever more than a chunk was due (a catch-up): 23,254 tier changes
        instead of replay's 16,378 on 10k Taobao events.

        PROCESS_GROUPS partitions at a time, chunk by chunk (`sweep_chunk`), in turns of
        SWEEP_TURN shoppers per partition, until a chunk finds nothing due on each. The
        partitions' chunks run concurrently (their shoppers are disjoint), so this
        process computes one while Redis runs the other's scripts, and a backlog is
        worked off in one sweep, not a turn per timer tick: in a catch-up, one partition
        after the other and a turn per tick kept the worker about half busy (`make
        bench`). A decay can leave its shopper due again by the same `until` (the next
        tier boundary), so a partition is done only when nothing is due: stopping at
        the first chunk short of full left those to the next tick, a second later.

        Returns how many due shoppers it handled."""
        passes: list[SweepPass] = []
        try:
            for partition in sorted(partitions):
                until = self.until(partition)
                if until is not None:
                    passes.append(SweepPass(partition, until))
            waiting = list(passes)
            while waiting and not self.loop.should_stop:
                active = waiting[:PROCESS_GROUPS]
                # Chunk by chunk, releasing the lock between chunks: a waiting batch of
                # live events goes first (asyncio.Lock is fair), so a backlog of due
                # decays never holds the hot path for long.
                async with self.lock:
                    chunk = self.sweep_chunk()
                    handled = await self._sweep_chunks(active, chunk)
                for sweep, n in zip(active, handled, strict=True):
                    if n == 0 or sweep.handled >= SWEEP_MAX:
                        waiting.remove(sweep)  # nothing more due here, or its most
                    elif sweep.handled - sweep.turn_began >= SWEEP_TURN:
                        sweep.turn_began = sweep.handled
                        waiting.remove(sweep)  # its turn is over: to the back
                        waiting.append(sweep)
            self._sweeps += 1
            if self._sweeps % TIER_GAUGE_EVERY == 0:
                await self._retry("tiers", self.refresh_tier_gauge)
            self.metrics.up.set(1 if partitions else 0)
        except Exception:  # the timer must keep running; the next sweep retries
            self.metrics.up.set(0)
            log.exception("sweep failed")
        return sum(sweep.handled for sweep in passes)

    def sweep_chunk(self) -> int:
        """How many due shoppers of a partition the sweep's next chunk takes: SWEEP_CHUNK
        while input flows, so a batch of live events waits for little; SWEEP_CHUNK_QUIET
        once no batch has come for SWEEP_QUIET_SECONDS (a backlog with nothing waiting:
        after an outage, or the jump to live time after a replay of old data). `make
        bench`, 500k events, alternating runs: the sweep's backlog after the last input
        22.0-23.0 s against 29.0-30.1 s, and the catch-up 53.4-55.7 s against
        61.1-62.2 s, with this and sweeping until nothing is due (README, Performance)."""
        quiet = time.monotonic() - self.last_batch >= SWEEP_QUIET_SECONDS
        return SWEEP_CHUNK_QUIET if quiet else SWEEP_CHUNK

    async def _sweep_chunks(self, sweeps: list[SweepPass], chunk: int) -> list[int]:
        """One chunk of each partition, concurrently, sent as one; how many shoppers each
        had due."""
        outbox = Outbox()
        counts = await concurrently([partial(self._sweep_chunk, s, chunk) for s in sweeps], outbox)
        await self._flush_until_sent(outbox)
        return counts

    async def _sweep_chunk(self, sweep: SweepPass, chunk: int, outbox: Outbox) -> int:
        """Up to `chunk` of the partition's detection deadlines; once they are all fired,
        of its decays. Stops at the partition's `until`, or sooner if it is held again (a
        rebalance in between, or a batch to process again: `until` is then None)."""
        now = self.until(sweep.partition)
        if now is None:
            return 0
        try:
            return await self._sweep_chunk_until(sweep, min(now, sweep.until), chunk, outbox)
        except Exception as exc:
            # Not one shopper's fault (those are left out one by one): what this chunk
            # queued is dropped (its state and indexes unwritten, so it is all due again
            # and the score script hands back what it applied), and this partition's
            # pass ends here; the other partitions' go on.
            self.metrics.shopper_failures.labels("sweep_chunk").inc()
            log.exception(
                "sweeping partition %d failed (%s); again next tick", sweep.partition, exc
            )
            outbox.clear()
            return 0

    async def _sweep_chunk_until(
        self, sweep: SweepPass, until: float, chunk: int, outbox: Outbox
    ) -> int:
        if not sweep.decays:
            n = await self._sweep(sweep.partition, until, chunk, outbox)
            sweep.handled += n
            if n == chunk:
                return n
            sweep.decays = True
        n = await self._decay(sweep, until, chunk, outbox)
        sweep.handled += n
        return n

    async def _sweep(self, partition: int, until: float, chunk: int, outbox: Outbox) -> int:
        """Absence deadlines and visit ends due by `until`: signals, scored at once."""
        shoppers = await self._retry("sweep", self.store.due, partition, until, chunk)
        if not shoppers:
            return 0
        states = await self._retry("load", self.store.load, shoppers)
        signals: list[Signal] = []
        failed: dict[str, Exception] = {}
        for shopper in shoppers:
            state = states.get(shopper) or self.engine.new_state()
            try:
                signals += self.engine.advance(shopper, state, until)
            except Exception as exc:
                self._failed(failed, "sweep", shopper, exc)
                continue
            outbox.saved[shopper] = self._saved(state, partition)
        await self._score(signals, dict.fromkeys(shoppers, partition), outbox, None, failed)
        self._quarantine(failed, partition, outbox)
        return len(shoppers)

    def _quarantine(self, failed: dict[str, Exception], partition: int, outbox: Outbox) -> None:
        """Take shoppers whose sweep raised off the timer's indexes (detection deadlines
        and decays), their state left as it was: the pass goes on without them, and
        later passes do not fail on them again. Their next event indexes them again."""
        for shopper in failed:
            outbox.saved.pop(shopper, None)
            outbox.quarantined[shopper] = partition

    async def _decay(self, sweep: SweepPass, until: float, chunk: int, outbox: Outbox) -> int:
        """Decay demotions and suppression ends due by `until`, at their computed times.

        A shopper due again at the time it was just called for (its call did not move the
        deadline: a fault) is called once per sweep, as before the sweep went on until
        nothing is due; else it would keep one sweep asking up to SWEEP_MAX times. One due
        again later (the next tier boundary) goes on."""
        partition = sweep.partition
        due = await self._retry("decay", self.scores.due, partition, until, chunk)
        due = {s: t for s, t in due.items() if (s, t) not in sweep.decayed}
        if not due:
            return 0
        sweep.decayed.update(due.items())
        results = await self._retry(
            "decay", self.scores.apply_many, {s: ([], t) for s, t in due.items()}
        )
        failed: dict[str, Exception] = {}
        outputs = self._outputs(results, {}, dict.fromkeys(due, partition), outbox, failed)
        self.send_outputs(outputs, outbox)
        self._quarantine(failed, partition, outbox)
        return len(due)

    def _outputs(
        self,
        results: dict[str, Any],
        by_shopper: dict[str, list[Signal]],
        partitions: dict[str, int],
        outbox: Outbox,
        failed: dict[str, Exception],
    ) -> list[Output]:
        """The outputs of score results; their index writes go to the outbox. A shopper
        whose outputs raise goes into `failed`, with nothing of it indexed or sent."""
        outputs: list[Output] = []
        moves: Moves = []
        for shopper, result in list(results.items()):
            signals = by_shopper.get(shopper, [])
            try:
                outputs += outputs_for(shopper, result, signals)
            except Exception as exc:
                self._failed(failed, "outputs", shopper, exc)
                del results[shopper]  # nothing of it indexed or sent
                continue
            if result.changed:
                moves.append((shopper, result.from_tier, result.to_tier))
            self._count_purchases(result, signals)
        audiences = [
            (o.value.op, o.value.audience, o.key)  # type: ignore[attr-defined]
            for o in outputs
            if o.topic == "topic_retargeting"
        ]
        deadlines: dict[str, tuple[int, float | None]] = {
            s: (partitions[s], r.deadline) for s, r in results.items()
        }
        outbox.index.append((deadlines, audiences, moves))
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

    async def refresh_tier_gauge(self) -> None:
        counts = await self.scores.tier_counts(("low", "mid", "high", "suppressed"))
        for tier, count in counts.items():
            self.metrics.shoppers.labels(tier).set(count)

    # --- HTTP views (Faust web) ----------------------------------------------------------
    def _register_views(self, app: faust.App) -> None:
        async def shopper_page(view: View, request: Request, shopper: str) -> Response:
            now = self.clock().timestamp()
            async with asyncio.timeout(REDIS_STEP_SECONDS):
                return view.json(await read_shopper(self.scores, shopper, now))

        async def audience(view: View, request: Request, name: str) -> Response:
            try:
                cursor = int(request.query.get("cursor", 0))
                count = min(int(request.query.get("count", AUDIENCE_PAGE)), 10 * AUDIENCE_PAGE)
            except ValueError:
                return view.json({"error": "cursor and count are whole numbers"}, status=400)
            async with asyncio.timeout(REDIS_STEP_SECONDS):
                page = await audience_page(self.scores.redis, self.scores, name, cursor, count)
            return view.json(page)

        app.page("/shoppers/{shopper}")(shopper_page)
        app.page("/audiences/{name}")(audience)

    # --- output ------------------------------------------------------------------------
    def emit(self, signals: list[Signal], outbox: Outbox) -> None:
        topic = self.settings.topic_signals
        rules: Counter[tuple[str]] = Counter()
        for signal in signals:
            rules[(signal.rule_id,)] += 1
            outbox.add(topic, signal.shopper_id.encode(), signal.to_json())
        _count(self.metrics.signals, rules)

    def send_outputs(self, outputs: list[Output], outbox: Outbox) -> None:
        actions: Counter[tuple[str]] = Counter()
        changes: Counter[tuple[str, str, str]] = Counter()
        topics = self.topics
        for output in outputs:
            actions[(output.topic,)] += 1
            value = output.value
            if isinstance(value, TierChange):
                changes[value.from_tier, value.to_tier, value.reason] += 1
            outbox.add(topics[output.topic], output.key.encode(), value.to_json())
        _count(self.metrics.actions, actions)
        _count(self.metrics.tier_changes, changes)

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
        if commands:
            await self._retry("index_save", self._write, commands)

    async def _write(self, commands: list[Command]) -> None:
        await execute(self.scores.redis, commands)
        self.metrics.redis_roundtrips.labels("index_save").inc()

    async def _flush_until_sent(self, outbox: Outbox) -> None:
        """The sweep's flush. Its changes are already applied in Redis: if the broker
        refuses the records, send them again (same ids) until it takes them, holding the
        lock, so nothing newer for these shoppers goes out ahead of them. Only a
        stopping worker gives up, and says what it could not send; its decays stay due
        (the index is written after the send) and the script hands them back."""
        delay = 0.1
        while True:
            try:
                await self.flush(outbox)
                return
            except KafkaError as exc:
                self.metrics.send_errors.labels("sweep").inc()
                if self.loop.should_stop:
                    log.error(
                        "stopping with %d swept records unsent (%s)", len(outbox.records), exc
                    )
                    raise
                log.warning("sending the sweep's output failed (%s); again in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)

    async def _retry(self, what: str, step: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run a Redis step until it succeeds: an outage delays input, never drops it.
        A step that takes longer than REDIS_STEP_SECONDS is cancelled (redis-py drops
        the connection it was reading) and run again: it is idempotent."""
        delay = 0.1
        latency = self.metrics.redis_seconds.labels(what)
        while True:
            try:
                started = time.perf_counter()
                async with asyncio.timeout(REDIS_STEP_SECONDS):
                    result = await step(*args)
                latency.observe(time.perf_counter() - started)
                return result
            except (RedisError, OSError) as exc:  # OSError includes TimeoutError
                self.metrics.redis_errors.labels(what).inc()
                log.warning("%s: Redis error (%s); retrying in %.1f s", what, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)


def readable_end(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
    """How far a partition can be read, as of the last fetch: its last stable offset (the
    consumer reads committed records only; records of an open transaction are not there
    yet), or its high-water mark from a broker that reports none. None: never fetched."""
    stable: int | None = consumer.last_stable_offset(tp)
    return stable if stable is not None and stable >= 0 else consumer.highwater(tp)


async def _past_skipped(consumer: AIOKafkaConsumer, tp: TopicPartition, end: int) -> int:
    """The consumer's position on a partition whose records up to `end` were handled: past
    `end` by what it skipped after them. `end` if the partition is no longer assigned."""
    try:
        position: int = await consumer.position(tp)
    except IllegalStateError:
        return end
    return max(end, position)


def stream_producer(settings: Settings) -> AIOKafkaProducer:
    """The stream loop's producer (also `bench/floors.py`'s and `bench/codecs.py`'s)."""
    codec = settings.output_compression
    return AIOKafkaProducer(
        **settings.kafka_options(),
        client_id=f"{settings.app_id}-stream",
        # no linger: every batch is complete when handed over (`send_all`)
        max_batch_size=1 << 20,
        max_request_size=8 << 20,
        acks="all",
        # every batch, `send_all`'s from `create_batch` included, is compressed with it
        compression_type=None if codec == "none" else codec,
    )


def stream_consumer(settings: Settings) -> AIOKafkaConsumer:
    """The stream loop's consumer, in the stream's group, not yet subscribed (also
    `bench/floors.py`'s)."""
    return AIOKafkaConsumer(
        **settings.kafka_options(),
        client_id=f"{settings.app_id}-stream",
        group_id=settings.stream_group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=int(settings.session_timeout_seconds * 1000),
        heartbeat_interval_ms=int(settings.heartbeat_interval_seconds * 1000),
        fetch_max_wait_ms=FETCH_WAIT_MS,
        max_partition_fetch_bytes=4 << 20,
        # A clickstream written with transactions: records of aborted ones are never
        # read, and those of open ones only once committed. The same for any other.
        isolation_level="read_committed",
        # Range deals each topic's partitions alike, so the worker that reads
        # clickstream partition n also owns intent.events partition n, and events
        # keyed by shopper skip the hop (`direct`) with any number of workers;
        # round robin (aiokafka's default) pairs them only when the count divides
        # the partitions. Listed second, it is what a group still running older
        # workers agrees on during a rolling upgrade.
        partition_assignment_strategy=(RangePartitionAssignor, RoundRobinPartitionAssignor),
    )


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, loop: StreamLoop) -> None:
        self.loop = loop

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # Let the batch in flight finish and commit before the partitions move on.
        async with self.loop.pipeline.lock:
            self.loop.assignment = set()
            self.loop.caught_up = False
            self.loop.direct = set()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.loop.caught_up = False  # what the new partitions hold is not read yet
        self.loop.direct = set()
        self.loop.assignment = set(assigned)
        await self.loop.hold(assigned)
        log.info("assigned %d partitions", len(assigned))


class StreamLoop(Service):
    """The hot path: one aiokafka consumer for clickstream.events and intent.events,
    read in batches, and one producer whose acks come before each commit."""

    def __init__(self, pipeline: Pipeline, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pipeline = pipeline
        self.settings = pipeline.settings
        self.assignment: set[TopicPartition] = set()
        self.caught_up = False  # every owned partition read to its end (see Pipeline.until)
        self.written: dict[TopicPartition, int] = {}  # intent.events: past our last write
        # intent.events partitions just assigned -> their end offset at the assignment:
        # no sweep on them until this worker has read that far (see Pipeline.until)
        self.holds: dict[int, int] = {}
        self.positions: dict[TopicPartition, int] = {}  # as of the last _unread
        # owned partition -> the offset this worker last committed, or the group's at the
        # assignment (`_commit_skipped`)
        self.committed: dict[TopicPartition, int] = {}
        # after an assignment, clickstream partitions -> the offset the group must commit
        # them to before any sweep (a dead owner's unsent batches; see `hold`)
        self.intake: dict[TopicPartition, int] = {}
        self._held_since = 0.0
        # A batch whose output the broker refused is read again (`_handle`): partition ->
        # the end of that batch. No sweep until it was processed again (Pipeline.until).
        self.redo: dict[TopicPartition, int] = {}
        # intent.events partitions this worker owns and has read to their end (as of the
        # last _unread): their clickstream events skip the hop (Pipeline.handle)
        self.direct: set[int] = set()
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        # What ended the loop, if it crashed; and who is told (`stream.worker.main` stops the
        # process). None: the exception goes to the service's supervisor.
        self.crash_reason: BaseException | None = None
        self.on_crash: Callable[[BaseException], None] | None = None
        self._partitions: dict[str, list[int]] = {}  # topic -> its partition ids (send_all)
        self._partitioner = DefaultPartitioner()
        # How long getmany waits for records when none are buffered.
        self._window_ms = max(1, int(self.settings.batch_window_seconds * 1000))

    async def on_start(self) -> None:
        settings = self.settings
        self.producer = stream_producer(settings)
        self.consumer = stream_consumer(settings)
        await self.producer.start()
        await self.consumer.start()
        tune_gc()
        self.consumer.subscribe(
            topics=[settings.topic_clickstream, settings.topic_normalised],
            listener=_Rebalance(self),
        )

    async def on_stop(self) -> None:
        # Wait for the batch in flight (its sends and commit), then leave the group.
        async with self.pipeline.lock:
            if self.consumer is not None:
                await self.consumer.stop()
            if self.producer is not None:
                await self.producer.stop()
            self.assignment = set()

    @Service.task
    async def _run(self) -> None:
        """The loop; if it raises, the worker is not ready any more and `on_crash` is
        told (the worker process then stops and exits non-zero, so that whatever runs
        it restarts it). Nothing is lost: the batch in hand was not committed."""
        try:
            await self._consume()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.crash_reason = exc
            self.assignment = set()
            self.pipeline.metrics.up.set(0)
            log.critical("the stream loop crashed; the worker stops", exc_info=exc)
            if self.on_crash is None:
                raise
            self.on_crash(exc)

    async def _consume(self) -> None:
        assert self.consumer is not None
        consumer = self.consumer
        while not self.should_stop:
            batches = await consumer.getmany(
                timeout_ms=self._window_ms, max_records=self.settings.batch_size
            )
            if not batches:
                self._track(await self._unread(consumer))
                await self._commit_skipped(consumer)
                continue
            async with self.pipeline.lock:
                if self.should_stop:
                    return  # not committed: the next owner processes it again
                await self._handle(consumer, batches)
            unread = await self._unread(consumer)
            self._balance(consumer, unread)
            self._track(unread)

    async def hold(self, assigned: set[TopicPartition]) -> None:
        """After an assignment, hold the sweep until what the last owners may have scored
        without sending has been processed again.

        - On the intent.events partitions assigned: up to their ends as of the
          assignment (`held`).
        - On the clickstream: a worker takes the events of the intent.events partitions
          it owns straight from there (`direct`), and a dead one may have scored up to a
          batch of them past its last commit without sending their output. Their
          shoppers may be on any partition, and input not keyed by shopper can put them
          on a partition another worker now owns. So until the group has committed
          every clickstream partition `INTAKE_HOLD_BATCHES` batches past where it stood
          (or to its end, if nearer), whoever owns it, no partition sweeps (`intake`,
          checked by the sweep: `intake_read`); then what reached intent.events by then
          is held like the rest.

        A start is an assignment too, so a backlog holds the sweep for its first batches
        only. The clickstream's hold lasts at most `INTAKE_HOLD_MAX_SECONDS`. The
        embedded broker can report an end offset short of the last batch (measured: 472,566
        for a topic of 500,000 records), so there the hold may end a batch early; Apache
        Kafka's is exact."""
        internal = [tp for tp in assigned if tp.topic == self.settings.topic_normalised]
        self.holds = {}
        self.intake = {}
        self.positions = {}
        self.committed = {}
        # a batch to process again on partitions that went elsewhere is their new owner's
        self.redo = {tp: end for tp, end in self.redo.items() if tp in assigned}
        if not assigned or self.consumer is None:
            return
        consumer = self.consumer
        clickstream = self.settings.topic_clickstream
        raw = [
            TopicPartition(clickstream, p) for p in consumer.partitions_for_topic(clickstream) or ()
        ]
        try:
            ends = await consumer.end_offsets(internal + raw)
            found = await self._committed(consumer, raw + internal)
            committed = {tp: found[tp] for tp in raw}
            fresh = [tp for tp, offset in committed.items() if offset is None and ends[tp] > 0]
            firsts = await consumer.beginning_offsets(fresh) if fresh else {}
        except KafkaError as exc:  # then only the event-time rule applies, as before
            log.warning("could not read the offsets of new partitions (%s)", exc)
            return
        self.committed = {
            tp: offset for tp, offset in found.items() if tp in assigned and offset is not None
        }
        self.holds = {tp.partition: ends[tp] for tp in internal if ends[tp] > 0}
        span = INTAKE_HOLD_BATCHES * self.settings.batch_size
        for tp, offset in committed.items():
            start = firsts.get(tp, 0) if offset is None else offset  # none: the log's start
            if ends[tp] > start:
                self.intake[tp] = min(ends[tp], start + span)
        self._held_since = time.monotonic()
        if self.holds or self.intake:
            log.info(
                "no sweep until %d intent.events partitions are read to their ends and "
                "%d clickstream partitions committed %d records past where they stood",
                len(self.holds),
                len(self.intake),
                span,
            )

    @staticmethod
    async def _committed(
        consumer: AIOKafkaConsumer, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, int | None]:
        """The group's committed offset of each partition (None: never committed)."""
        found = await asyncio.gather(*(consumer.committed(tp) for tp in partitions))
        return dict(zip(partitions, found, strict=True))

    async def intake_read(self) -> None:
        """Drop the clickstream holds the group has committed past (`hold`). Once none is
        left, what reached this worker's intent.events partitions meanwhile (its own
        writes and other workers') is held like a takeover's backlog: events a dead
        worker scored may be among it."""
        if not self.intake or self.consumer is None:
            return
        consumer = self.consumer
        try:
            committed = await self._committed(consumer, list(self.intake))
            self.intake = {
                tp: offset
                for tp, offset in self.intake.items()
                if (committed[tp] or 0) < offset  # None: nothing committed yet
            }
            if self.intake:
                waited = time.monotonic() - self._held_since
                if waited < INTAKE_HOLD_MAX_SECONDS:
                    return
                log.warning(
                    "no sweep for %.0f s: clickstream partitions %s not processed past "
                    "what their last owners may have left unsent; sweeping again without "
                    "them (is a worker stuck?)",
                    waited,
                    ", ".join(str(tp.partition) for tp in sorted(self.intake)),
                )
                self.intake = {}
            internal = [tp for tp in self.assignment if tp.topic == self.settings.topic_normalised]
            ends = await consumer.end_offsets(internal) if internal else {}
        except KafkaError as exc:  # the next sweep asks again
            log.warning("could not read the clickstream's committed offsets (%s)", exc)
            return
        for tp, end in ends.items():
            if end > self.positions.get(tp, 0):  # not read that far yet
                self.holds[tp.partition] = max(self.holds.get(tp.partition, 0), end)
        log.info("clickstream processed past the last commits; %d partitions held", len(self.holds))

    def held(self, partition: int) -> bool:
        """Whether the sweep must still wait on this intent.events partition."""
        end = self.holds.get(partition)
        if end is None:
            return False
        tp = TopicPartition(self.settings.topic_normalised, partition)
        if self.positions.get(tp, -1) >= end:
            del self.holds[partition]
            return False
        return True

    async def _unread(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, int | None]:
        """Records not read yet on each partition this worker owns: up to the broker's
        high-water mark as of the last fetch, or past what this worker itself wrote to
        intent.events if that is further (a fetch has not seen it yet: counting on the
        high-water mark alone let the internal backlog run to 5-7 times its limit).
        None while unknown: never fetched, or no longer assigned (a rebalance)."""
        unread: dict[TopicPartition, int | None] = {}
        for tp in self.assignment:
            end = readable_end(consumer, tp)
            if end is None:
                unread[tp] = None
                continue
            try:
                position = self.positions[tp] = await consumer.position(tp)
            except IllegalStateError:
                unread[tp] = None
                continue
            unread[tp] = max(0, max(end, self.written.get(tp, 0)) - position)
        return unread

    def _track(self, unread: dict[TopicPartition, int | None]) -> None:
        """Whether every partition this worker owns has been read to its end: until then
        the sweep keeps to event time (`Pipeline.until`). And which intent.events
        partitions take clickstream events directly: owned, nothing left to read there
        (not even what this worker wrote itself), and not held after a takeover. One that
        is not sends its events through the topic, and becomes direct again only once
        those have been read back, so a shopper's events never overtake each other."""
        self.caught_up = bool(unread) and all(n == 0 for n in unread.values())
        internal = self.settings.topic_normalised
        if self.settings.always_repartition or self.consumer is None:
            return
        known = self.consumer.partitions_for_topic(internal)
        if not known:
            self.direct = set()
            return
        self._partitions.setdefault(internal, sorted(known))  # as send_all would find them
        self.direct = {
            tp.partition
            for tp, n in unread.items()
            if tp.topic == internal and n == 0 and not self.held(tp.partition)
        }

    def own_all(self, partitions: list[int]) -> None:
        """For a pipeline driven without this loop (the benchmarks, tests): one process
        that owns every intent.events partition and writes nothing there, so every
        event skips the hop, as in a worker that owns them all."""
        if not self.settings.always_repartition:
            self._partitions[self.settings.topic_normalised] = sorted(partitions)
            self.direct = set(partitions)

    def place(self, key: bytes) -> int | None:
        """The intent.events partition of a shopper key, if it is one of `direct`."""
        partitions = self._partitions[self.settings.topic_normalised]
        partition: int = self._partitioner(key, partitions, partitions)
        return partition if partition in self.direct else None

    def _balance(
        self, consumer: AIOKafkaConsumer, unread: dict[TopicPartition, int | None]
    ) -> None:
        """Back-pressure: while this worker's intent.events partitions hold more than a
        few batches of unread records, stop reading the clickstream, so detection keeps
        up and the internal topic stays short. Without it a backlog of input was all
        re-keyed before the first tier change came out."""
        settings = self.settings
        waiting = sum(n or 0 for tp, n in unread.items() if tp.topic == settings.topic_normalised)
        raw = [tp for tp in self.assignment if tp.topic == settings.topic_clickstream]
        paused = consumer.paused()
        if waiting > PAUSE_BACKLOG_BATCHES * settings.batch_size:
            if not paused:
                consumer.pause(*raw)
        elif paused and waiting <= RESUME_BACKLOG_BATCHES * settings.batch_size:
            consumer.resume(*paused)

    async def _handle(self, consumer: AIOKafkaConsumer, batches: dict[Any, list[Any]]) -> None:
        records = [
            RawRecord(m.value, m.key, m.topic, m.partition, m.offset)
            for messages in batches.values()
            for m in messages
        ]
        ends = {tp: messages[-1].offset + 1 for tp, messages in batches.items()}
        try:
            await self.pipeline.handle(records)
        except KafkaError:
            # Not every record reached the broker: go back and process the batch again,
            # and hold the sweep until then (`redo`).
            self.pipeline.metrics.send_errors.labels("batch").inc()
            log.exception("sending a batch failed; it will be processed again")
            for tp, messages in batches.items():
                consumer.seek(tp, messages[0].offset)
                self.redo[tp] = max(self.redo.get(tp, 0), ends[tp])
            await asyncio.sleep(1.0)
            return
        for tp, end in ends.items():  # processed again, maybe in parts
            if tp in self.redo and end >= self.redo[tp]:
                del self.redo[tp]
        # Past the batch's last record, and past what the consumer skipped after it:
        # transaction markers, aborted records. Committing the last record + 1 left a
        # partition ending in a marker one short of its end for good.
        offsets = {tp: await _past_skipped(consumer, tp, end) for tp, end in ends.items()}
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:  # a rebalance: the next owner redoes it
            log.warning("commit failed (%s); the batch will be processed again", exc)
        else:
            self.committed.update(offsets)
        self._consumer_lag(consumer, offsets)

    async def _commit_skipped(self, consumer: AIOKafkaConsumer) -> None:
        """With nothing to read, commit the partitions whose position moved past what was
        committed with no record handed over: a transaction's marker that came after its
        records, or an aborted transaction. Otherwise the group's offset stays short of
        the partition's end (a lag of 1 for good, and a takeover hold that never ends).
        A partition the group never committed is committed where it stands, once."""
        if not self._moved():
            return  # the usual case: not waiting for the lock a sweep may hold
        async with self.pipeline.lock:
            moved = self._moved()  # again: a rebalance may have come meanwhile
            if not moved or self.should_stop:
                return
            try:
                await consumer.commit(moved)
            except (CommitFailedError, KafkaError) as exc:  # a rebalance: asked again after
                log.info("committing past skipped records failed (%s)", exc)
                return
            self.committed.update(moved)
            self._consumer_lag(consumer, moved)

    def _moved(self) -> dict[TopicPartition, int]:
        return {
            tp: position
            for tp, position in self.positions.items()
            if tp in self.assignment and position > self.committed.get(tp, -1)
        }

    def _consumer_lag(self, consumer: AIOKafkaConsumer, offsets: dict[Any, int]) -> None:
        gauge = self.pipeline.metrics.consumer_lag
        for tp, offset in offsets.items():
            end = readable_end(consumer, tp)
            if end is not None:
                gauge.labels(tp.topic, str(tp.partition)).set(max(0, end - offset))

    async def send_all(self, records: list[OutRecord]) -> None:
        """Send every record and wait for all the acks (raises KafkaError if one fails).

        Records go in one batch per topic partition (aiokafka's batch API), partitioned
        by key exactly as a plain `send` would: far cheaper than a `send` per record.
        """
        if not records:
            return
        assert self.producer is not None
        producer = self.producer
        open_batches: dict[tuple[str, int], Any] = {}
        futures = []
        counts: list[int] = []
        # A shopper's records (event, signals, changes, actions) share a key: hash it once
        # per partition count (aiokafka's murmur2 is pure Python; partition ids are 0..n-1).
        placed: dict[tuple[bytes | None, int], int] = {}
        for topic, key, value, headers in records:
            partitions = self._partitions.get(topic)
            if partitions is None:
                partitions = self._partitions[topic] = sorted(await producer.partitions_for(topic))
            if key is None:
                partition = self._partitioner(key, partitions, partitions)  # random
            else:
                partition = placed.get((key, len(partitions)), -1)
                if partition < 0:
                    partition = self._partitioner(key, partitions, partitions)
                    placed[key, len(partitions)] = partition
            batch = open_batches.get((topic, partition))
            if batch is None:
                batch = open_batches[(topic, partition)] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None, headers=headers or []) is None:
                # full: send it, and start the next one with this record
                counts.append(batch.record_count())
                futures.append(await producer.send_batch(batch, topic, partition=partition))
                batch = open_batches[(topic, partition)] = producer.create_batch()
                if (
                    batch.append(key=key, value=value, timestamp=None, headers=headers or [])
                    is None
                ):
                    raise ValueError(f"a record of {len(value)} bytes exceeds the batch size")
        for (topic, partition), batch in open_batches.items():
            counts.append(batch.record_count())
            # Closed, a batch goes out at once; open, the producer keeps it for the
            # linger time in case more records come, and none will (a full batch closes
            # itself). All of them are queued before the sender runs (nothing here
            # yields), so they still go out in one request per broker.
            batch.close()
            futures.append(await producer.send_batch(batch, topic, partition=partition))
        internal = self.settings.topic_normalised
        for meta, count in zip(await asyncio.gather(*futures), counts, strict=True):
            if meta.topic == internal:  # see _unread: what we wrote there is still to read
                tp = TopicPartition(meta.topic, meta.partition)
                self.written[tp] = max(self.written.get(tp, 0), meta.offset + count)
