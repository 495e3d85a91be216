"""Where an event goes: straight to detection (the direct path) or through the internal
topic; and the back-pressure that keeps that topic short.

A worker that owns an intent.events partition and has read it to its end takes the
clickstream events of that partition straight to detection, in the same batch: nothing of
theirs is left unread there, so each shopper's order is the one the hop would give. A
partition that is not direct sends its events through the topic, and becomes direct again
only once those have been read back, so a shopper's events never overtake each other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.settings import Settings
from stream.worker.sender import BatchSender

PAUSE_BACKLOG_BATCHES: Final = 10  # intent.events batches waiting before ingest pauses
RESUME_BACKLOG_BATCHES: Final = 5  # ... and at most this many before it resumes

Unread = dict[TopicPartition, int | None]  # owned partition -> records not read yet


class Routing:
    """The intent.events partitions whose clickstream events skip the hop (`direct`)."""

    def __init__(self, settings: Settings, sender: BatchSender) -> None:
        self.settings = settings
        self.sender = sender
        self.direct: set[int] = set()

    def clear(self) -> None:
        self.direct = set()

    def place(self, key: bytes) -> int | None:
        """The intent.events partition of a shopper key, if it is one of `direct`."""
        partitions = self.sender.partitions[self.settings.topic_normalised]
        partition = self.sender.partition(key, partitions)
        return partition if partition in self.direct else None

    def update(
        self,
        unread: Unread,
        known: set[int] | None,
        held: Callable[[int], bool],
    ) -> None:
        """Direct: owned, nothing left to read there (not even what this worker wrote
        itself), and not held after a takeover (`TakeoverGuard.held`). `known`: the
        internal topic's partitions, if the consumer knows them yet."""
        if self.settings.always_repartition:
            return
        if not known:
            self.direct = set()
            return
        internal = self.settings.topic_normalised
        self.sender.partitions.setdefault(internal, sorted(known))  # as send_all finds them
        self.direct = {
            tp.partition
            for tp, n in unread.items()
            if tp.topic == internal and n == 0 and not held(tp.partition)
        }

    def own_all(self, partitions: list[int]) -> None:
        """For a pipeline driven without the stream loop (the benchmarks, tests): one
        process that owns every intent.events partition and writes nothing there, so
        every event skips the hop, as in a worker that owns them all."""
        if not self.settings.always_repartition:
            self.sender.partitions[self.settings.topic_normalised] = sorted(partitions)
            self.direct = set(partitions)


def balance(
    consumer: AIOKafkaConsumer,
    settings: Settings,
    assignment: set[TopicPartition],
    unread: Unread,
) -> None:
    """Back-pressure: while this worker's intent.events partitions hold more than a few
    batches of unread records, stop reading the clickstream, so detection keeps up and
    the internal topic stays short. Without it a backlog of input was all re-keyed
    before the first tier change came out."""
    waiting = sum(n or 0 for tp, n in unread.items() if tp.topic == settings.topic_normalised)
    raw = [tp for tp in assignment if tp.topic == settings.topic_clickstream]
    paused = consumer.paused()
    if waiting > PAUSE_BACKLOG_BATCHES * settings.batch_size:
        if not paused:
            consumer.pause(*raw)
    elif paused and waiting <= RESUME_BACKLOG_BATCHES * settings.batch_size:
        consumer.resume(*paused)
