"""The takeover guard: after an assignment, and after a batch whose output the broker
refused, nothing is swept until what may have been scored without being sent has been
processed again.

A worker's last batch may have been computed, and even sent, without its state written
(a crash before the write). That batch is read again, perhaps in several parts, from the
state Redis holds. A decay or absence fired in between (in event time) would be
evaluated without the batch's events, which happened before it: a demotion those events
would have prevented, and its outputs sent with ids the run without the crash never
makes.
"""

from __future__ import annotations

import logging
import time
from typing import Final

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from stream.settings import Settings
from stream.worker.kafka import committed_offsets

log = logging.getLogger(__name__)

# After an assignment, clickstream batches per partition processed before any sweep: its
# last owner may have scored up to one batch past its commit without sending the output
# (and up to two if a commit of its failed and it went on).
INTAKE_HOLD_BATCHES: Final = 2
# ... but for at most this long, then logged and let go (a worker stuck elsewhere).
INTAKE_HOLD_MAX_SECONDS: Final = 60.0


class TakeoverGuard:
    """Which partitions may not be swept yet, and why (`blocks`)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # intent.events partitions just assigned -> their end offset at the assignment:
        # no sweep on them until this worker has read that far (`held`)
        self.holds: dict[int, int] = {}
        # after an assignment, clickstream partitions -> the offset the group must commit
        # them to before any sweep (a dead owner's unsent batches; see `hold`)
        self.intake: dict[TopicPartition, int] = {}
        # A batch whose output the broker refused is read again: partition -> the end of
        # that batch. No sweep until it was processed again.
        self.redo: dict[TopicPartition, int] = {}
        self.positions: dict[TopicPartition, int] = {}  # how far this worker has read
        self._held_since = 0.0

    def blocks(self, partition: int) -> bool:
        """Whether nothing may be swept on this intent.events partition now. A batch to
        redo may hold shoppers of any partition (the direct path), so it blocks all."""
        return self.held(partition) or bool(self.redo) or bool(self.intake)

    def read_to(self, tp: TopicPartition, position: int) -> None:
        self.positions[tp] = position

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

    def failed_send(self, tp: TopicPartition, end: int) -> None:
        """A batch up to `end` on this partition is to be processed again."""
        self.redo[tp] = max(self.redo.get(tp, 0), end)

    def processed(self, tp: TopicPartition, end: int) -> None:
        """A batch up to `end` went out: a redo it covers is done (maybe in parts)."""
        if tp in self.redo and end >= self.redo[tp]:
            del self.redo[tp]

    async def hold(
        self, consumer: AIOKafkaConsumer | None, assigned: set[TopicPartition]
    ) -> dict[TopicPartition, int]:
        """After an assignment, hold the sweep until what the last owners may have scored
        without sending has been processed again; returns the group's committed offsets
        of the partitions assigned (those it has).

        - On the intent.events partitions assigned: up to their ends as of the
          assignment (`held`).
        - On the clickstream: a worker takes the events of the intent.events partitions
          it owns straight from there (the direct path), and a dead one may have scored
          up to a batch of them past its last commit without sending their output. Their
          shoppers may be on any partition, and input not keyed by shopper can put them
          on a partition another worker now owns. So until the group has committed
          every clickstream partition `INTAKE_HOLD_BATCHES` batches past where it stood
          (or to its end, if nearer), whoever owns it, no partition sweeps (`intake`,
          checked by each sweep: `intake_read`); then what reached intent.events by then
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
        # a batch to process again on partitions that went elsewhere is their new owner's
        self.redo = {tp: end for tp, end in self.redo.items() if tp in assigned}
        if not assigned or consumer is None:
            return {}
        clickstream = self.settings.topic_clickstream
        raw = [
            TopicPartition(clickstream, p) for p in consumer.partitions_for_topic(clickstream) or ()
        ]
        try:
            ends = await consumer.end_offsets(internal + raw)
            found = await committed_offsets(consumer, raw + internal)
            committed = {tp: found[tp] for tp in raw}
            fresh = [tp for tp, offset in committed.items() if offset is None and ends[tp] > 0]
            firsts = await consumer.beginning_offsets(fresh) if fresh else {}
        except KafkaError as exc:  # then only the event-time rule applies
            log.warning("could not read the offsets of new partitions (%s)", exc)
            return {}
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
        return {tp: offset for tp, offset in found.items() if tp in assigned and offset is not None}

    async def intake_read(
        self, consumer: AIOKafkaConsumer | None, assignment: set[TopicPartition]
    ) -> None:
        """Drop the clickstream holds the group has committed past (`hold`). Once none is
        left, what reached this worker's intent.events partitions meanwhile (its own
        writes and other workers') is held like a takeover's backlog: events a dead
        worker scored may be among it."""
        if not self.intake or consumer is None:
            return
        try:
            committed = await committed_offsets(consumer, list(self.intake))
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
            internal = [tp for tp in assignment if tp.topic == self.settings.topic_normalised]
            ends = await consumer.end_offsets(internal) if internal else {}
        except KafkaError as exc:  # the next sweep asks again
            log.warning("could not read the clickstream's committed offsets (%s)", exc)
            return
        for tp, end in ends.items():
            if end > self.positions.get(tp, 0):  # not read that far yet
                self.holds[tp.partition] = max(self.holds.get(tp.partition, 0), end)
        log.info("clickstream processed past the last commits; %d partitions held", len(self.holds))
