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
  2. detect and score in memory, on the shoppers' records (`Owner`: loaded from Redis
     on first touch, then cached);
  3. send everything and wait for the broker's acks (`flush`);
  4. write the changed records and the indexes, one fenced write per partition (`flush`);
  5. commit the offsets (`StreamLoop`).
A batch that fails before its write (a refused send, a failed or fenced write) drops its
shoppers from memory and is processed again from what Redis holds: the same signals,
outputs and ids. One that fails after its write finds its events already in the
shoppers' records (their recent event ids), and adds nothing.

`intent forget` reaches the owner as a record on intent.events (`FORGET_PREFIX`), in
order with the shopper's events: the owner erases the shopper there, so no batch in
flight can undo it.

Bad records go to the dead-letter topic with a reason; a bug of ours dead-letters its
stage's records (or one shopper's) as `processing_error`, never lost. Redis outages are
retried (the batch waits); they never drop input.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from functools import partial
from typing import Any, Final, TypeVar

import faust
from aiokafka import AIOKafkaConsumer
from pydantic import BaseModel, ValidationError

from schemas import errors
from schemas.events import Event
from schemas.outputs import OutputTopic, SuppressionRecord, TierChange
from schemas.rules import RuleSet
from schemas.signals import Signal
from stream.clock import Clock, utc_now
from stream.core import scoring
from stream.core.detectors.engine import State
from stream.core.ingest import RawRecord, Rejection, ingest_batch, ingest_limits
from stream.core.outputs import Output
from stream.core.process import Apply, Core, Failures, Processed, ScoreBatch
from stream.core.scoring import Result
from stream.metrics import Metrics, source_label
from stream.settings import Settings
from stream.state.connection import Client
from stream.state.records import FENCE_SECONDS, Record, audience_names, encode
from stream.state.store import StateReader, merged_into
from stream.worker.control import FORGET_HEADERS
from stream.worker.identity import Control, Identities, Refused, is_control, parse
from stream.worker.loop import StreamLoop
from stream.worker.outbox import Outbox, Sender, concurrently, count
from stream.worker.owner import EpochLost, Owner
from stream.worker.retry import RedisRetry, RedisUnusable
from stream.worker.store_guard import StoreGuard, StoreLost
from stream.worker.sweep import Sweeper
from stream.worker.views import register_views

log = logging.getLogger(__name__)

# Shopper groups of a batch detected and scored concurrently: while Redis loads one
# group's records, this process detects the next group's events.
PROCESS_GROUPS: Final = 2
LATE_DETAIL: Final = "older than the allowed lateness"
M = TypeVar("M", bound=BaseModel)
# An event to detect, its record, its intent.events partition. From ingest directly (the
# direct path), the record is the clickstream's: dead letters name it.
Item = tuple[Event, RawRecord, int]
Stage = Callable[[list[RawRecord], Outbox], Awaitable[None]]


def _place(
    found: list[tuple[int, tuple[str, Control]]],
    fetched: list[RawRecord],
    decoded: list[tuple[Event, RawRecord]],
    controls: dict[str, list[tuple[int, Control]]],
) -> None:
    """Each control among its shopper's events: after those before it in the records."""
    at = {id(record): position for position, record in enumerate(fetched)}
    before: dict[str, list[int]] = defaultdict(list)  # shopper -> its events' positions
    for event, record in decoded:
        before[event.shopper_id].append(at[id(record)])
    for position, (shopper, control) in found:
        controls[shopper].append((bisect.bisect_left(before.get(shopper, []), position), control))


def _known(record: Record, events: list[Event]) -> None:
    """A shopper whose events carry the source's known user id is a known id: never
    merged into another profile except by an alias (`stream.core.identity`)."""
    identity = record.identity
    if (identity is None or not identity.get("known")) and any(e.identified for e in events):
        record.identity = {**(identity or {}), "known": True}


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
        redis: Client,
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
        self.redis = redis
        self.owner = Owner(redis, settings.app_id, settings.state_cache_shoppers)
        self.reader = StateReader(redis, settings.app_id, settings.partitions)
        self.limits = ingest_limits(settings)
        self.topics = settings.output_topics()
        self.retry = RedisRetry(metrics)
        # One batch or one sweep chunk at a time: state changes never interleave.
        self.lock = asyncio.Lock()
        self.last_batch = -float("inf")  # when `handle` last had records (monotonic)
        self.loop = StreamLoop(settings, metrics, self.handle, self.lock)
        self.send: Sender = sender or self.loop.sender.send_all
        self.sweeper = Sweeper(self)
        self.identities = Identities(self)
        self.store_guard = StoreGuard(self)
        self.loop.on_assigned = self.on_assigned
        if app is not None:
            app.service(self.loop)  # type: ignore[arg-type]  # an instance is accepted too
            register_views(app, self.reader, clock)
            app.timer(settings.sweep_interval_seconds, name="sweep")(self.sweeper.sweep)

    def ready(self) -> bool:
        return self.loop.ready()

    async def on_assigned(self, consumer: AIOKafkaConsumer, partitions: set[int]) -> None:
        """At each assignment: Redis still holds this deployment's state (`StoreGuard`),
        then the intent.events partitions' epochs taken (`Owner.take`), and the
        suppressions of those found without one rebuilt."""
        await self.store_guard.on_assigned(consumer)
        fresh = await self.retry("epochs", self.owner.take, partitions)
        if fresh:
            await self.store_guard.after_taken(consumer, fresh)

    # --- one batch of the hot topics ----------------------------------------------------
    async def handle(self, records: list[RawRecord]) -> None:
        """Ingest what came from the clickstream, detect and score what came from
        intent.events, send it all, and only then write the state. The two stages run
        concurrently (ingest is CPU work, done while Redis serves the other's loads);
        their records go out in a fixed order, ingest's first.

        When this worker owns intent.events partitions that it has read to their end
        (`Routing`), the clickstream events of those partitions skip the hop: ingest
        runs first and hands them to detection, after what this batch fetched from
        intent.events. A crash before the commit reads them again from the clickstream,
        and detection drops what the stored records already had."""
        self.last_batch = time.monotonic()
        ingested, processed = Outbox(), Outbox()
        raw = [r for r in records if r.topic == self.settings.topic_clickstream]
        events = [r for r in records if r.topic == self.settings.topic_normalised]
        if raw and self.loop.direct:
            direct: list[Item] = []
            # 1. ingest, taking the direct path's events
            await self._guarded(partial(self.ingest, direct=direct), raw, ingested)
            taken = events + [record for _, record, _ in direct]
            if taken:  # 2. detect and score
                await self._guarded(partial(self.process, direct=direct), taken, processed)
        else:
            stages = [self._guarded(self.process, events, processed)] if events else []
            if raw:
                stages.append(self._guarded(self.ingest, raw, ingested))
            await asyncio.gather(*stages)  # process first: it reaches its first Redis wait
        outbox = Outbox()
        outbox.merge(ingested)
        outbox.merge(processed)
        try:
            await self.flush(outbox)  # 3. and 4.
        except BaseException:
            self.identities.flushed(ok=False)
            raise
        self.identities.flushed(ok=True)

    async def _guarded(self, stage: Stage, records: list[RawRecord], outbox: Outbox) -> None:
        """Run a stage on its records; if it raises (a bug of ours: bad input never
        does), what it queued is dropped, the cached state with it (it may hold half of
        the stage's changes), and every record is dead-lettered as `processing_error`,
        so the loop goes on and nothing is lost."""
        part = Outbox()
        try:
            await stage(records, part)
        except (RedisUnusable, StoreLost):
            raise  # the worker stops: dead-lettering would only hide a Redis that refuses
        except Exception as exc:
            name = getattr(stage, "func", stage).__name__  # a partial names its function
            log.exception("%s failed; dead-lettering all %d records", name, len(records))
            self.owner.clear()
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
        link = self.identities.link
        for event, record in zip(result.events, result.sources, strict=True):
            consumed[event.type, source_label(event.source)] += 1
            if event.anonymous_id is not None:
                link(event, outbox)
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
        # shopper -> (how many of its events come before the control, the control)
        controls: dict[str, list[tuple[int, Control]]] = defaultdict(list)
        found: list[tuple[int, tuple[str, Control]]] = []  # (position, (shopper, control))
        plain = []
        rejected: list[Rejection] = []
        for position, record in enumerate(fetched):
            value = record.value or b""
            if is_control(value):
                self._control(record, position, found, rejected)
            else:
                plain.append(record)
        decoded, bad = _decode(plain, Event)
        rejected += bad
        items = [(event, record, record.partition) for event, record in decoded]
        if found:
            _place(found, fetched, decoded, controls)
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
        shoppers = list(dict.fromkeys([*by_shopper, *controls]))
        groups: list[list[str]] = [[] for _ in range(min(PROCESS_GROUPS, len(shoppers)))]
        for i, shopper in enumerate(shoppers):
            groups[i % len(groups)].append(shopper)
        jobs: list[Callable[[Outbox], Coroutine[Any, Any, list[Rejection]]]] = [
            partial(
                self._process_group,
                {s: by_shopper.get(s, []) for s in group},
                {s: controls[s] for s in group if s in controls},
            )
            for group in groups
        ]
        for group_rejected in await concurrently(jobs, outbox):
            rejected += group_rejected
        self.reject(rejected, outbox)

    @staticmethod
    def _control(
        record: RawRecord,
        position: int,
        found: list[tuple[int, tuple[str, Control]]],
        rejected: list[Rejection],
    ) -> None:
        """An identity control record. One that cannot be read is a bug of ours (only
        workers write them): dead-lettered."""
        try:
            found.append((position, parse(record)))
        except (ValueError, KeyError, TypeError, ValidationError) as exc:
            rejected.append(Rejection(record, errors.PROCESSING_ERROR, f"control record: {exc}"))

    async def _process_group(
        self,
        by_shopper: dict[str, list[Item]],
        controls: dict[str, list[tuple[int, Control]]],
        outbox: Outbox,
    ) -> list[Rejection]:
        """Load, detect and score one group of shoppers; returns the records rejected:
        late ones, and every record of a shopper whose detection or scoring raised (a
        bug of ours, or input no bound caught: that shopper alone is dead-lettered).
        A shopper with control records (a forget, identity merges), or merged into another
        profile, goes through `_in_order` instead."""
        failures = self.failures()
        partitions = {s: items[0][2] for s, items in by_shopper.items() if items}
        partitions.update({s: c[0][1].record.partition for s, c in controls.items()})
        records = await self.load(partitions, failures)
        shoppers: dict[str, tuple[State, list[Event]]] = {}
        ordered: list[str] = []
        for shopper in partitions:
            if shopper in failures:
                continue
            record = records[shopper]
            if shopper in controls or (record.identity and "into" in record.identity):
                ordered.append(shopper)
                continue
            items = by_shopper.get(shopper, [])
            events = self._not_forgotten(record, [item[0] for item in items])
            if events:
                _known(record, events)
                shoppers[shopper] = (record.patterns, events)
        rejected = await self._run(shoppers, by_shopper, records, partitions, outbox, failures)
        for shopper in ordered:
            if shopper not in failures:
                rejected += await self._in_order(
                    shopper, by_shopper.get(shopper, []), controls.get(shopper, []),
                    records, partitions, outbox, failures,
                )  # fmt: skip
        for shopper, exc in failures.items():
            # every record of the shopper: its events, and its control records (one may
            # carry another shopper's state: a hand-over)
            detail = f"{type(exc).__name__}: {exc}"[:500]
            failed = [r for _, r, _ in by_shopper.get(shopper, [])]
            failed += [control.record for _, control in controls.get(shopper, [])]
            rejected += [Rejection(r, errors.PROCESSING_ERROR, detail) for r in failed]
        return rejected

    async def _in_order(
        self,
        shopper: str,
        items: list[Item],
        controls: list[tuple[int, Control]],
        records: dict[str, Record],
        partitions: dict[str, int],
        outbox: Outbox,
        failures: Failures,
    ) -> list[Rejection]:
        """A shopper's events and control records, each control applied at its place
        among the events: the events before it are detected and scored first. The events
        of a shopper merged into a profile are forwarded to it. What the shopper's
        records give is kept apart until they are all through: a shopper that fails
        sends and writes nothing, and every one of its records is dead-lettered (by the
        caller), the control records with them."""
        record, partition = records[shopper], partitions[shopper]
        identities = self.identities
        part = Outbox()
        rejected: list[Rejection] = []
        forgets = [float(c.body["at"]) for _, c in controls if c.kind == "forget"]
        coming = max(forgets) if forgets else None
        start = 0
        for end, control in [*controls, (len(items), None)]:
            events = [item[0] for item in items[start:end]]
            events = self._not_forgotten(record, events, coming)
            start = end
            if events and merged_into(record) is not None:
                identities.forward(shopper, record, events, part)
                part.saved[shopper] = (partition, record)  # the redirect lives on
            elif events:
                _known(record, events)
                rejected += await self._run(
                    {shopper: (record.patterns, events)}, {shopper: items}, records,
                    partitions, part, failures,
                )  # fmt: skip
            if control is None or shopper in failures:
                break
            taken: list[Event] = []
            try:
                if control.kind == "forget":
                    await self._forget(shopper, float(control.body["at"]), partition, records, part)
                else:
                    taken = await identities.apply(shopper, record, partition, control, part)
            except Refused as exc:
                rejected.append(Rejection(control.record, errors.PROCESSING_ERROR, str(exc)))
            except (RedisUnusable, StoreLost):
                raise
            except Exception as exc:
                failures.add("identity", shopper, exc)
                break
            taken = self._not_forgotten(record, taken, coming)
            if taken:
                rejected += await self._run(
                    {shopper: (record.patterns, taken)},
                    {shopper: [(e, control.record, partition) for e in taken]}, records,
                    partitions, part, failures,
                )  # fmt: skip
        if shopper in failures:  # the caller dead-letters every record of the shopper
            outbox.dropped.add(shopper)
            return []
        part.saved.setdefault(shopper, (partition, record))
        outbox.merge(part)
        return rejected

    async def _run(
        self,
        shoppers: dict[str, tuple[State, list[Event]]],
        by_shopper: dict[str, list[Item]],
        records: dict[str, Record],
        partitions: dict[str, int],
        outbox: Outbox,
        failures: Failures,
    ) -> list[Rejection]:
        """Detect and score these shoppers' events on their records, and queue the
        outcome; returns the late events' records."""
        if not shoppers:
            return []
        done = await self.core.run(shoppers, self.apply(records, failures, "score"), failures)
        if done.duplicates:
            self.metrics.events_duplicate.inc(done.duplicates)
        for shopper in shoppers:
            if shopper not in failures:
                outbox.saved[shopper] = (partitions[shopper], records[shopper])
        self.queue(done, partitions, outbox, failures)
        rejected: list[Rejection] = []
        for shopper, late in done.late.items():
            if shopper not in failures:
                late_ids = {event.id for event in late}
                rejected += [
                    Rejection(record, errors.LATE, LATE_DETAIL)
                    for event, record, _ in by_shopper.get(shopper, [])
                    if event.id in late_ids
                ]
        return rejected

    async def load(self, shoppers: dict[str, int], failures: Failures) -> dict[str, Record]:
        """The shoppers' records (shopper -> partition); one whose record cannot be read
        goes into `failures` alone."""
        loaded = await self.retry("load", self.owner.load, shoppers)
        out: dict[str, Record] = {}
        for shopper, record in loaded.items():
            if isinstance(record, Exception):
                failures.add("load", shopper, record)
            else:
                out[shopper] = record
        return out

    async def _forget(
        self, shopper: str, at: float, partition: int, records: dict[str, Record], outbox: Outbox
    ) -> None:
        """Erase a shopper at the time of its forget: its record becomes a tombstone that
        drops its events from before `at`, it leaves its tier and audiences, and the
        suppression and audit topics are told (with an id that is the same every time)."""
        record = records[shopper]
        if record.forgotten is not None and record.forgotten >= at:
            return  # applied already (this request read again)
        self.identities.forgotten(shopper, record, at, outbox)
        fresh = self.owner.fresh()
        record.patterns, record.score, record.forgotten = fresh.patterns, fresh.score, at
        record.identity = None
        names = await self.retry("forget", self._audience_names, partition)
        outbox.erase(partition, shopper, names)
        outbox.saved[shopper] = (partition, record)
        when = datetime.fromtimestamp(at, tz=UTC)
        notice = SuppressionRecord(
            record_id=f"{shopper}:forget:{at:.3f}", shopper_id=shopper, op="forget",
            scope="shopper", at=when,
        )  # fmt: skip
        key, value = shopper.encode(), notice.to_json()
        outbox.add(self.settings.topic_suppression, key, value)
        outbox.add(self.settings.topic_signals, key, value, list(FORGET_HEADERS))
        self.metrics.forgets.inc()
        log.info("forgot shopper %r (requested at %s)", shopper, when.isoformat())

    async def _audience_names(self, partition: int) -> list[str]:
        prefix = self.owner.keys.audience(partition, "")
        found = [key async for key in self.redis.scan_iter(match=f"{prefix}*", count=500)]
        return audience_names(found, prefix)

    def _not_forgotten(
        self, record: Record, events: list[Event], coming: float | None = None
    ) -> list[Event]:
        """The events from after the shopper's last forget: those from before it were
        erased with the rest (the input may still hold them) and are dropped, counted.
        `coming`: the time of a forget later in the batch, which the events from before
        it do not survive either (so they send nothing first)."""
        forgotten = record.forgotten
        if coming is not None and (forgotten is None or coming > forgotten):
            forgotten = coming
        if forgotten is None:
            return events
        kept = [event for event in events if event.ts.timestamp() > forgotten]
        if len(kept) < len(events):
            self.metrics.events_forgotten.inc(len(events) - len(kept))
        return kept

    def apply(self, records: dict[str, Record], failures: Failures, what: str) -> Apply:
        """The scoring maths on a batch, in memory on the shoppers' records, as
        `Core.run` calls it; a shopper whose scoring raises goes into `failures` alone."""
        cfg = self.core.config

        async def apply(batch: ScoreBatch) -> dict[str, Result]:
            out: dict[str, Result] = {}
            for shopper, (signals, now) in batch.items():
                try:
                    out[shopper] = scoring.apply(records[shopper].score, signals, now, cfg)
                except Exception as exc:
                    failures.add(what, shopper, exc)
            return out

        return apply

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
        and actions, and the index moves to write once they are sent. Nothing of a
        failed shopper: its state is dropped from memory, nothing written or sent."""
        results = {s: r for s, r in done.results.items() if s not in failures}
        self.index(results, done.signals, partitions, done.outputs, outbox)
        self.emit(done.all_signals(failures), outbox)
        self.send_outputs(
            [o for shopper, outs in done.outputs.items() if shopper not in failures for o in outs],
            outbox,
        )
        for shopper in failures:
            outbox.saved.pop(shopper, None)
            outbox.dropped.add(shopper)

    def index(
        self,
        results: dict[str, Result],
        signals: dict[str, list[Signal]],
        partitions: dict[str, int],
        outputs: dict[str, list[Output]],
        outbox: Outbox,
    ) -> None:
        """The index moves of these results (decay deadlines, audiences, tiers), written
        after the send; and the live conversion count."""
        for shopper, result in results.items():
            write = outbox.write(partitions[shopper])
            if result.changed:
                write.move(shopper, result.from_tier, result.to_tier)
            write.decays[shopper] = result.deadline
            self._count_purchases(result, signals.get(shopper, []))
            for o in outputs.get(shopper, ()):
                if o.topic == OutputTopic.RETARGETING:
                    write.audiences[(o.value.audience, o.key)] = o.value.op  # type: ignore[attr-defined]

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
        """Send the batch's records, wait for every ack, then write the changed records
        and the index moves: one fenced write per partition. If anything fails, the
        shoppers concerned are dropped from memory (their next touch reads Redis) and
        the error goes up: the batch is processed again."""
        try:
            if outbox.records:  # a sweep's last chunk often finds nothing
                await self.send(outbox.records)
            self._records(outbox)
            if any(outbox.writes.values()):
                await self.retry("write", self._write, outbox)
        except BaseException:
            self.owner.drop(outbox.touched() | set(self.owner.live))
            raise
        self.owner.written(outbox.writes)
        self.owner.drop(outbox.dropped)
        self.owner.trim()

    def _records(self, outbox: Outbox) -> None:
        """The saved records, encoded into their partitions' writes, with their
        detection deadlines and how long they must live."""
        engine = self.core.engine
        now = self.clock().timestamp()
        for shopper, (partition, record) in outbox.saved.items():
            write = outbox.write(partition)
            ttl = 0.0
            if record.score.get("T") is not None or record.patterns.get("wm") is not None:
                ttl = max(engine.ttl(record.patterns), scoring.lifetime(record.score))
            if record.forgotten is not None:
                ttl = max(ttl, record.forgotten + FENCE_SECONDS - now)
            if record.identity and ("into" in record.identity or "ids" in record.identity):
                ttl = max(ttl, self.settings.identity_ttl_seconds)
            write.records[shopper] = (encode(record), max(1000, int(ttl * 1000)))
            write.deadlines[shopper] = engine.deadline(record.patterns)

    async def _write(self, outbox: Outbox) -> None:
        try:
            await self.owner.write(outbox.writes)
        except EpochLost as exc:
            raise self.store_guard.lost(str(exc)) from exc
        self.metrics.redis_roundtrips.labels("write").inc()
