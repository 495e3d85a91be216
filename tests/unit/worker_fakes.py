"""Hand-written Kafka consumer fakes and builders shared by the worker unit tests."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import IllegalStateError
from prometheus_client import CollectorRegistry

from stream.metrics import Metrics
from stream.settings import Settings
from stream.state.records import PartitionWrite, Record
from stream.worker.loop import StreamLoop
from stream.worker.owner import Entry, Owner


@dataclass
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None = b"s-1"
    value: bytes | None = b"{}"


class Consumer:
    def __init__(self, at: dict[TopicPartition, int] | None = None) -> None:
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.commits: list[dict[TopicPartition, int]] = []
        self.at = at or {}  # positions past the batch's last record (skipped records)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    async def position(self, tp: TopicPartition) -> int:
        if self.at.get(tp) == -1:
            raise IllegalStateError("no longer assigned")
        return self.at.get(tp, 0)

    def last_stable_offset(self, tp: TopicPartition) -> int:
        return 100

    def highwater(self, tp: TopicPartition) -> int:
        return 1000  # an open transaction's records up to here: not readable yet


def _loop(handle: Any) -> tuple[StreamLoop, Metrics]:
    metrics = Metrics(CollectorRegistry())
    return StreamLoop(Settings(), metrics, handle, asyncio.Lock()), metrics


def _batches() -> dict[TopicPartition, list[Message]]:
    a, b = TopicPartition("clickstream.events", 0), TopicPartition("intent.events", 3)
    return {
        a: [Message(a.topic, 0, 10), Message(a.topic, 0, 11)],
        b: [Message(b.topic, 3, 40), Message(b.topic, 3, 41), Message(b.topic, 3, 42)],
    }


def _pipeline(sent: list[Any]) -> Any:
    import redis.asyncio as aioredis

    from stream.rulesfile import load_rules
    from stream.worker.pipeline import Pipeline

    async def send(records: list[Any]) -> None:
        sent.extend(records)

    client = aioredis.Redis(host="127.0.0.1", port=1)  # never reached: Redis steps stubbed
    pipeline = Pipeline(
        None, Settings(), Metrics(CollectorRegistry()), load_rules(), client, sender=send
    )

    async def no_guard(consumer: Any, partitions: set[int]) -> None:
        return None  # the store guard has tests of its own, on a real Redis

    pipeline.owner = MemoryOwner(client, pipeline.settings.app_id, 1000)
    pipeline.loop.on_assigned = no_guard
    return pipeline


class MemoryOwner(Owner):
    """The owner with Redis left out: records missing from the cache are new, and the
    fenced writes are kept in `made` (the owner's own tests run on a real Redis)."""

    def __init__(self, client: Any, app_id: str, capacity: int) -> None:
        super().__init__(client, app_id, capacity)
        self.made: list[dict[int, PartitionWrite]] = []

    async def load(self, shoppers: dict[str, int]) -> dict[str, Record | Exception]:
        out: dict[str, Record | Exception] = {}
        for shopper, partition in shoppers.items():
            if shopper in self.live:
                out[shopper] = self.live[shopper]
                continue
            entry = self.cache.get(shopper)
            if entry is None:
                entry = self.cache[shopper] = Entry(partition, None)
            out[shopper] = self._decoded(shopper, entry.raw)
        return out

    async def write(self, writes: dict[int, PartitionWrite]) -> int:
        self.made.append(writes)
        return sum(len(self.fence.steps(p, w)) for p, w in writes.items())


class Offsets:
    """A consumer's view of partitions at an assignment: end offsets, committed offsets
    (None: never committed) and the logs' starts."""

    def __init__(
        self, ends: dict[TopicPartition, int], committed: dict[TopicPartition, int | None]
    ) -> None:
        # ends: every partition of both topics; committed: the clickstream's (intent.events
        # partitions: never committed)
        self.ends, self.committed_ = ends, committed
        self.asked: list[list[TopicPartition]] = []

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        self.asked.append(sorted(tps))
        return {tp: self.ends[tp] for tp in tps}

    async def committed(self, tp: TopicPartition) -> int | None:
        return self.committed_.get(tp)

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: 7 for tp in tps}  # the log's start, after retention

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {tp.partition for tp in self.ends if tp.topic == topic}


class Positions:
    """Readable ends (None: never fetched) and positions; `stable` False: a broker that
    reports no last stable offset (-1), so the high-water mark is the end."""

    def __init__(
        self,
        ends: dict[TopicPartition, int | None],
        at: dict[TopicPartition, int],
        stable: bool = True,
    ):
        self.ends, self.at, self.stable = ends, at, stable

    def last_stable_offset(self, tp: TopicPartition) -> int | None:
        end = self.ends[tp]
        return end if self.stable or end is None else -1

    def highwater(self, tp: TopicPartition) -> int | None:
        end = self.ends[tp]
        # past the stable offset: records of an open transaction, not readable yet
        return end if end is None or not self.stable else end + 10

    async def position(self, tp: TopicPartition) -> int:
        return self.at[tp]
