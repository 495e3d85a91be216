"""The timer's sweep: deadlines whose time has come, with no further input needed.

Detection deadlines (absences, visit ends) fire as signals, scored at once; score
deadlines (decay demotions, suppression ends) fire in the scoring maths. Both run on
the shoppers' records in memory (`Owner`) and go out like a batch's output: send, wait
for the acks, then write the records and indexes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Final

from aiokafka.errors import KafkaError

from schemas.events import Event
from stream.core.detectors.engine import State
from stream.core.process import Failures
from stream.worker.outbox import Outbox, concurrently
from stream.worker.owner import Fenced
from stream.worker.retry import RedisUnusable

if TYPE_CHECKING:
    from stream.worker.pipeline import Pipeline

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
SWEEP_GROUPS: Final = 2  # partitions swept concurrently
TIER_GAUGE_EVERY: Final = 5  # sweeps between refreshes of intent_shoppers (SCARD x 4)
SEND_RETRY_MAX_SECONDS: Final = 30.0


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


class Sweeper:
    """Event time per partition (`until`), and the sweeps of what is due by it."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.loop = pipeline.loop
        self.settings = pipeline.settings
        self.metrics = pipeline.metrics
        self._sweeps = 0
        # Per partition of intent.events: the newest event time seen, and when input came.
        self.watermark: dict[int, float] = {}
        self.last_input: dict[int, float] = {}

    def saw(self, newest: dict[int, float]) -> None:
        """Input arrived on these partitions, the newest event at these times."""
        arrived = time.monotonic()
        for partition, ts in newest.items():
            self.watermark[partition] = max(ts, self.watermark.get(partition, ts))
            self.last_input[partition] = arrived

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

        Nothing at all is due while the takeover guard blocks the partition
        (`TakeoverGuard.blocks`): after an assignment, until what the last owner may have
        scored without sending is processed again; and while a batch whose output the
        broker refused waits to be processed again.
        """
        if self.loop.guard.blocks(partition):
            return None
        lateness = self.pipeline.core.lateness
        watermark = self.watermark.get(partition)
        idle_for = time.monotonic() - self.last_input.get(partition, 0.0)
        quiet = idle_for >= self.settings.idle_grace_seconds
        if quiet and self.loop.caught_up:
            now = self.pipeline.clock().timestamp()
            return max(now, (watermark or now) - lateness)
        if watermark is None:
            return None
        return watermark - lateness

    async def sweep(self) -> None:
        if self.loop.guard.intake:  # held after an assignment: has it ended? (once a tick)
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
        demotion that never happened in event time.

        SWEEP_GROUPS partitions at a time, chunk by chunk (`sweep_chunk`), in turns of
        SWEEP_TURN shoppers per partition, until a chunk finds nothing due on each. The
        partitions' chunks run concurrently (their shoppers are disjoint), so this
        process computes one while Redis runs the other's scripts, and a backlog is
        worked off in one sweep, not a turn per timer tick. A decay can leave its
        shopper due again by the same `until` (the next tier boundary), so a partition
        is done only when nothing is due.

        Returns how many due shoppers it handled."""
        passes: list[SweepPass] = []
        try:
            for partition in sorted(partitions):
                until = self.until(partition)
                if until is not None:
                    passes.append(SweepPass(partition, until))
            waiting = list(passes)
            while waiting and not self.loop.should_stop:
                active = waiting[:SWEEP_GROUPS]
                # Chunk by chunk, releasing the lock between chunks: a waiting batch of
                # live events goes first (asyncio.Lock is fair), so a backlog of due
                # decays never holds the hot path for long.
                async with self.pipeline.lock:
                    handled = await self._sweep_chunks(active, self.sweep_chunk())
                for sweep, n in zip(active, handled, strict=True):
                    if n == 0 or sweep.handled >= SWEEP_MAX:
                        waiting.remove(sweep)  # nothing more due here, or its most
                    elif sweep.handled - sweep.turn_began >= SWEEP_TURN:
                        sweep.turn_began = sweep.handled
                        waiting.remove(sweep)  # its turn is over: to the back
                        waiting.append(sweep)
            self._sweeps += 1
            if self._sweeps % TIER_GAUGE_EVERY == 0:
                await self.pipeline.retry("tiers", self.refresh_tier_gauge)
            self.metrics.up.set(1 if partitions else 0)
        except Fenced as exc:  # a newer owner holds a partition: its rebalance is coming
            self.metrics.fenced_writes.inc()
            log.warning("a sweep's write was fenced (%s); nothing of it was written", exc)
        except Exception:  # the timer must keep running; the next sweep retries
            self.metrics.up.set(0)
            log.exception("sweep failed")
        return sum(sweep.handled for sweep in passes)

    def sweep_chunk(self) -> int:
        """How many due shoppers of a partition the sweep's next chunk takes: SWEEP_CHUNK
        while input flows, so a batch of live events waits for little; SWEEP_CHUNK_QUIET
        once no batch has come for SWEEP_QUIET_SECONDS (a backlog with nothing waiting:
        after an outage, or the jump to live time after a replay of old data)."""
        quiet = time.monotonic() - self.pipeline.last_batch >= SWEEP_QUIET_SECONDS
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
        except RedisUnusable as exc:
            outbox.clear()
            self.loop.give_up(exc)  # the worker stops, as it would in a batch
            return 0
        except Exception as exc:
            # Not one shopper's fault (those are left out one by one): what this chunk
            # queued is dropped, and its shoppers' state in memory with it (nothing
            # written, so it is all due again), and this partition's pass ends here;
            # the other partitions' go on.
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
            n = await self._deadlines(sweep.partition, until, chunk, outbox)
            sweep.handled += n
            if n == chunk:
                return n
            sweep.decays = True
        n = await self._decay(sweep, until, chunk, outbox)
        sweep.handled += n
        return n

    async def _deadlines(self, partition: int, until: float, chunk: int, outbox: Outbox) -> int:
        """Absence deadlines and visit ends due by `until`: signals, scored at once."""
        pipeline = self.pipeline
        reader = pipeline.reader
        shoppers = await pipeline.retry("sweep", reader.due_deadlines, partition, until, chunk)
        if not shoppers:
            return 0
        failures = self._failures()
        records = await pipeline.load(dict.fromkeys(shoppers, partition), failures)
        todo: dict[str, tuple[State, list[Event]]] = {
            shopper: (record.patterns, []) for shopper, record in records.items()
        }
        apply = pipeline.apply(records, failures, "score")
        done = await pipeline.core.run(todo, apply, failures, until=until)
        for shopper, record in records.items():
            outbox.saved[shopper] = (partition, record)
        pipeline.queue(done, dict.fromkeys(shoppers, partition), outbox, failures)
        self._quarantine(failures, partition, outbox)
        return len(shoppers)

    def _failures(self) -> Failures:
        """A shopper whose deadlines raise in detection counts as stage `sweep`."""
        return self.pipeline.failures(detect_as="sweep")

    def _quarantine(self, failed: Failures, partition: int, outbox: Outbox) -> None:
        """Take shoppers whose sweep raised off the timer's indexes (detection deadlines
        and decays), their stored record left as it was (and dropped from memory): the
        pass goes on without them, and later passes do not fail on them again. Their
        next event indexes them again."""
        if not failed:
            return
        write = outbox.write(partition)
        for shopper in failed:
            outbox.saved.pop(shopper, None)
            outbox.dropped.add(shopper)
            write.deadlines[shopper] = None
            write.decays[shopper] = None

    async def _decay(self, sweep: SweepPass, until: float, chunk: int, outbox: Outbox) -> int:
        """Decay demotions and suppression ends due by `until`, at their computed times.

        A shopper due again at the time it was just called for (its call did not move the
        deadline: a fault) is called once per sweep; else it would keep one sweep asking
        up to SWEEP_MAX times. One due again later (the next tier boundary) goes on."""
        pipeline = self.pipeline
        partition = sweep.partition
        reader = pipeline.reader
        due = await pipeline.retry("decay", reader.due_decays, partition, until, chunk)
        due = {s: t for s, t in due.items() if (s, t) not in sweep.decayed}
        if not due:
            return 0
        sweep.decayed.update(due.items())
        failures = self._failures()
        partitions = dict.fromkeys(due, partition)
        records = await pipeline.load(partitions, failures)
        apply = pipeline.apply(records, failures, "decay")
        results = await apply({s: ([], t) for s, t in due.items() if s in records})
        outputs = pipeline.core.outputs(results, {}, failures)
        for shopper in results:
            outbox.saved[shopper] = (partition, records[shopper])
        pipeline.index(results, {}, partitions, outputs, outbox)
        pipeline.send_outputs([o for outs in outputs.values() for o in outs], outbox)
        self._quarantine(failures, partition, outbox)
        return len(due)

    async def refresh_tier_gauge(self) -> None:
        counts = await self.pipeline.reader.tier_counts()
        for tier, count in counts.items():
            self.metrics.shoppers.labels(tier).set(count)

    async def _flush_until_sent(self, outbox: Outbox) -> None:
        """The sweep's flush. Its changes are computed and go out once: if the broker
        refuses the records, send them again (same ids) until it takes them, holding the
        lock, so nothing newer for these shoppers goes out ahead of them. Only a
        stopping worker gives up, and says what it could not send; nothing of it was
        written, so it is all due again at the next owner."""
        delay = 0.1
        while True:
            try:
                await self.pipeline.flush(outbox)
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
                delay = min(delay * 2, SEND_RETRY_MAX_SECONDS)
