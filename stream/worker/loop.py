"""The stream loop: one aiokafka consumer for clickstream.events and intent.events, read
in batches, and one producer whose acks come before each commit.

Each turn of the loop, in this order:
  1. `getmany`: up to a batch of records from every owned partition, or none after the
     batch window;
  2. under the pipeline's lock (one batch or one sweep chunk at a time), `handle`: ingest,
     detect, score, send and wait for the acks, then write the indexes and state
     (`Pipeline.handle`);
  3. commit the offsets past the batch (a failed send commits nothing: the batch is read
     again, `TakeoverGuard.redo`);
  4. count what is left to read: back-pressure on the clickstream (`routing.balance`),
     which partitions take the direct path (`Routing`), whether every partition is read
     to its end (`caught_up`, for the sweep's clock).
A crash between 2 and 3 loses nothing: the batch is processed again, with the same ids.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from mode import Service

from stream.core.ingest import RawRecord
from stream.metrics import Metrics
from stream.settings import Settings
from stream.worker.kafka import past_skipped, readable_end, stream_consumer, stream_producer
from stream.worker.owner import Fenced
from stream.worker.routing import Routing, Unread, balance
from stream.worker.runtime import tune_gc
from stream.worker.sender import BatchSender
from stream.worker.takeover import TakeoverGuard

log = logging.getLogger(__name__)

Handler = Callable[[list[RawRecord]], Awaitable[None]]


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, loop: StreamLoop) -> None:
        self.loop = loop

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # Let the batch in flight finish and commit before the partitions move on.
        async with self.loop.lock:
            self.loop.revoked()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.loop.assigned(assigned)


class StreamLoop(Service):
    """Reads, hands each batch to `handle`, commits; see the module's docstring."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        handle: Handler,
        lock: asyncio.Lock,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.metrics = metrics
        self.handle = handle
        self.lock = lock  # shared with the sweep: state changes never interleave
        self.assignment: set[TopicPartition] = set()
        self.caught_up = False  # every owned partition read to its end (`Sweeper.until`)
        self.sender = BatchSender(settings.topic_normalised)
        self.routing = Routing(settings, self.sender)
        self.guard = TakeoverGuard(settings)
        # owned partition -> the offset this worker last committed, or the group's at the
        # assignment (`_commit_skipped`)
        self.committed: dict[TopicPartition, int] = {}
        self.consumer: AIOKafkaConsumer | None = None
        # What ended the loop, if it crashed; and who is told (`stream.worker.main`
        # stops the process). None: the exception goes to the service's supervisor.
        self.crash_reason: BaseException | None = None
        self.on_crash: Callable[[BaseException], None] | None = None
        # Told of each assignment once its holds are taken, with the intent.events
        # partitions assigned (`Pipeline.on_assigned`); if it raises, the worker stops.
        self.on_assigned: Callable[[AIOKafkaConsumer, set[int]], Awaitable[None]] | None = None
        # How long getmany waits for records when none are buffered.
        self._window_ms = max(1, int(settings.batch_window_seconds * 1000))

    @property
    def direct(self) -> set[int]:
        return self.routing.direct

    def ready(self) -> bool:
        return bool(self.assignment) and self.crash_reason is None

    async def on_start(self) -> None:
        settings = self.settings
        self.sender.producer = stream_producer(settings)
        self.consumer = stream_consumer(settings)
        await self.sender.producer.start()
        await self.consumer.start()
        tune_gc()
        self.consumer.subscribe(
            topics=[settings.topic_clickstream, settings.topic_normalised],
            listener=_Rebalance(self),
        )

    async def on_stop(self) -> None:
        # Wait for the batch in flight (its sends and commit), then leave the group.
        async with self.lock:
            if self.consumer is not None:
                await self.consumer.stop()
            if self.sender.producer is not None:
                await self.sender.producer.stop()
            self.assignment = set()

    def revoked(self) -> None:
        self.assignment = set()
        self.caught_up = False
        self.routing.clear()

    async def assigned(self, assigned: set[TopicPartition]) -> None:
        self.caught_up = False  # what the new partitions hold is not read yet
        self.routing.clear()
        self.assignment = set(assigned)
        self.committed = {}
        self.committed = await self.guard.hold(self.consumer, assigned)
        log.info("assigned %d partitions", len(assigned))
        if self.on_assigned is not None and self.consumer is not None and assigned:
            try:
                internal = {
                    tp.partition for tp in assigned if tp.topic == self.settings.topic_normalised
                }
                await self.on_assigned(self.consumer, internal)
            except Exception as exc:
                self.give_up(exc)

    async def intake_read(self) -> None:
        await self.guard.intake_read(self.consumer, self.assignment)

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
            self.give_up(exc)
            if self.on_crash is None:
                raise

    def give_up(self, exc: BaseException) -> None:
        """Not ready any more, and `on_crash` told (the worker process stops)."""
        if self.crash_reason is not None:
            return
        self.crash_reason = exc
        self.assignment = set()
        self.metrics.up.set(0)
        log.critical("the stream loop crashed; the worker stops: %s", exc, exc_info=exc)
        if self.on_crash is not None:
            self.on_crash(exc)

    async def _consume(self) -> None:
        assert self.consumer is not None
        consumer = self.consumer
        while not self.should_stop:
            # 1. A batch, or none after the window.
            batches = await consumer.getmany(
                timeout_ms=self._window_ms, max_records=self.settings.batch_size
            )
            if not batches:
                self._track(await self._unread(consumer))
                await self._commit_skipped(consumer)
                continue
            async with self.lock:
                if self.should_stop:
                    return  # not committed: the next owner processes it again
                # 2. and 3. Handle it, then commit.
                await self._handle(consumer, batches)
            # 4. What is left to read.
            unread = await self._unread(consumer)
            balance(consumer, self.settings, self.assignment, unread)
            self._track(unread)

    async def _handle(self, consumer: AIOKafkaConsumer, batches: dict[Any, list[Any]]) -> None:
        records = [
            RawRecord(m.value, m.key, m.topic, m.partition, m.offset)
            for messages in batches.values()
            for m in messages
        ]
        ends = {tp: messages[-1].offset + 1 for tp, messages in batches.items()}
        try:
            # 2. ingest -> detect -> score -> send, wait for the acks -> write the state
            await self.handle(records)
        except (KafkaError, Fenced) as exc:
            # Not every record reached the broker, or a newer owner holds a partition
            # (this worker was paused past its session): go back and process the batch
            # again (a rebalance is on its way if it was fenced), and hold the sweep
            # until then.
            if isinstance(exc, Fenced):
                self.metrics.fenced_writes.inc()
                log.warning("a write was fenced (%s); the batch will be processed again", exc)
            else:
                self.metrics.send_errors.labels("batch").inc()
                log.exception("sending a batch failed; it will be processed again")
            for tp, messages in batches.items():
                consumer.seek(tp, messages[0].offset)
                self.guard.failed_send(tp, ends[tp])
            await asyncio.sleep(1.0)
            return
        for tp, end in ends.items():
            self.guard.processed(tp, end)
        # 3. Commit past the batch's last record, and past what the consumer skipped after
        # it: transaction markers, aborted records. Committing the last record + 1 left a
        # partition ending in a marker one short of its end for good.
        offsets = {tp: await past_skipped(consumer, tp, end) for tp, end in ends.items()}
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:  # a rebalance: the next owner redoes it
            log.warning("commit failed (%s); the batch will be processed again", exc)
        else:
            self.committed.update(offsets)
        self._consumer_lag(consumer, offsets)

    async def _unread(self, consumer: AIOKafkaConsumer) -> Unread:
        """Records not read yet on each partition this worker owns: up to the broker's
        high-water mark as of the last fetch, or past what this worker itself wrote to
        intent.events if that is further (a fetch has not seen it yet: counting on the
        high-water mark alone let the internal backlog run to 5-7 times its limit).
        None while unknown: never fetched, or no longer assigned (a rebalance)."""
        unread: Unread = {}
        written = self.sender.written
        for tp in self.assignment:
            end = readable_end(consumer, tp)
            if end is None:
                unread[tp] = None
                continue
            try:
                position = await consumer.position(tp)
            except IllegalStateError:
                unread[tp] = None
                continue
            self.guard.read_to(tp, position)
            unread[tp] = max(0, max(end, written.get(tp, 0)) - position)
        return unread

    def _track(self, unread: Unread) -> None:
        """Whether every partition this worker owns has been read to its end: until then
        the sweep keeps to event time (`Sweeper.until`); and which partitions take the
        direct path (`Routing.update`)."""
        self.caught_up = bool(unread) and all(n == 0 for n in unread.values())
        if self.consumer is None:
            return
        known = self.consumer.partitions_for_topic(self.settings.topic_normalised)
        self.routing.update(unread, known, self.guard.held)

    async def _commit_skipped(self, consumer: AIOKafkaConsumer) -> None:
        """With nothing to read, commit the partitions whose position moved past what was
        committed with no record handed over: a transaction's marker that came after its
        records, or an aborted transaction. Otherwise the group's offset stays short of
        the partition's end (a lag of 1 for good, and a takeover hold that never ends).
        A partition the group never committed is committed where it stands, once."""
        if not self._moved():
            return  # the usual case: not waiting for the lock a sweep may hold
        async with self.lock:
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
            for tp, position in self.guard.positions.items()
            if tp in self.assignment and position > self.committed.get(tp, -1)
        }

    def _consumer_lag(self, consumer: AIOKafkaConsumer, offsets: dict[Any, int]) -> None:
        gauge = self.metrics.consumer_lag
        for tp, offset in offsets.items():
            end = readable_end(consumer, tp)
            if end is not None:
                gauge.labels(tp.topic, str(tp.partition)).set(max(0, end - offset))
