"""`StreamLoop` (stream/worker/loop.py): commits, skipped offsets, assignment, catching up."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from stream.core.ingest import RawRecord
from stream.worker import kafka as kafka_module
from stream.worker import loop as stream_loop
from stream.worker import pipeline as agents
from tests.unit.worker_fakes import Consumer, Offsets, Positions, _batches, _loop, _pipeline


def test_a_handled_batch_is_committed_past_its_last_record() -> None:
    seen: list[RawRecord] = []

    async def handle(records: list[RawRecord]) -> None:
        seen.extend(records)

    loop, metrics = _loop(handle)
    consumer = Consumer()
    batches = _batches()
    asyncio.run(loop._handle(consumer, batches))  # type: ignore[arg-type]
    assert [(r.topic, r.partition, r.offset) for r in seen] == [
        (m.topic, m.partition, m.offset) for ms in batches.values() for m in ms
    ]
    (offsets,) = consumer.commits
    assert offsets == {tp: ms[-1].offset + 1 for tp, ms in batches.items()}
    assert consumer.seeks == []
    lag = metrics.registry.get_sample_value(
        "intent_consumer_lag_messages", {"topic": "intent.events", "partition": "3"}
    )
    assert lag == 100 - 43


def test_a_handled_batch_is_committed_past_what_the_consumer_skipped_after_it() -> None:
    """A transaction's marker after the last record (or an aborted transaction's records)
    is never handed over, but the consumer's position is past it: committing the last
    record + 1 left the group one short of the partition's end for good."""

    async def handle(records: list[RawRecord]) -> None:
        return None

    loop, metrics = _loop(handle)
    batches = _batches()
    clicks, events = list(batches)
    consumer = Consumer(at={clicks: 13, events: 43})  # a marker at 12; none after 42
    asyncio.run(loop._handle(consumer, batches))  # type: ignore[arg-type]
    assert consumer.commits == [{clicks: 13, events: 43}]
    assert loop.committed == {clicks: 13, events: 43}
    lag = metrics.registry.get_sample_value(
        "intent_consumer_lag_messages", {"topic": "clickstream.events", "partition": "0"}
    )
    assert lag == 100 - 13

    # a partition no longer assigned has no position: committed past its last record
    consumer = Consumer(at={clicks: -1, events: 45})
    asyncio.run(loop._handle(consumer, batches))  # type: ignore[arg-type]
    assert consumer.commits == [{clicks: 12, events: 45}]


def test_an_idle_worker_commits_what_the_consumer_skipped_since_its_last_commit() -> None:
    """A marker that comes after its records, or a whole aborted transaction, moves the
    position with nothing handed over: committed once nothing is left to read."""
    pipeline = _pipeline([])
    loop = pipeline.loop
    tps = [TopicPartition("clickstream.events", p) for p in range(5)]
    marker, idle, fresh, redo, gone = tps
    loop.assignment = {marker, idle, fresh, redo}
    loop.committed = {marker: 12, idle: 40, redo: 30}  # `fresh`: never committed
    # `redo`: sought back to read a failed batch again; `gone`: no longer owned
    loop.guard.positions = {marker: 13, idle: 40, fresh: 7, redo: 25, gone: 9}
    consumer = Consumer()
    asyncio.run(loop._commit_skipped(consumer))  # type: ignore[arg-type]
    assert consumer.commits == [{marker: 13, fresh: 7}]
    assert loop.committed == {marker: 13, idle: 40, fresh: 7, redo: 30}
    lag = pipeline.metrics.registry.get_sample_value(
        "intent_consumer_lag_messages", {"topic": "clickstream.events", "partition": "0"}
    )
    assert lag == 100 - 13
    asyncio.run(loop._commit_skipped(consumer))  # type: ignore[arg-type]
    assert len(consumer.commits) == 1  # nothing moved since

    async def during_a_sweep() -> None:  # nothing moved: no wait for the lock
        async with pipeline.lock:
            await asyncio.wait_for(loop._commit_skipped(consumer), 1.0)

    asyncio.run(during_a_sweep())


def test_an_assignment_takes_the_groups_committed_offsets_of_what_it_owns() -> None:
    """What `_commit_skipped` compares positions with, so a partition already committed
    where it stands is not committed again."""
    pipeline = _pipeline([])
    loop = pipeline.loop
    events = pipeline.settings.topic_normalised
    clicks = [TopicPartition("clickstream.events", p) for p in (0, 1)]
    internal = [TopicPartition(events, p) for p in (0, 1)]
    ends = {tp: 50 for tp in clicks + internal}
    consumer = Offsets(ends, {clicks[0]: 50, clicks[1]: 20, internal[0]: 44})
    loop.committed = {clicks[1]: 3}  # from an earlier assignment
    asyncio.run(loop.assigned({clicks[0], internal[0], internal[1]}))
    assert loop.committed == {}  # no consumer yet: nothing read
    loop.consumer = consumer  # type: ignore[assignment]
    asyncio.run(loop.assigned({clicks[0], internal[0], internal[1]}))
    assert loop.committed == {clicks[0]: 50, internal[0]: 44}  # clicks[1]: not owned


def test_the_stream_consumer_reads_committed_records_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Records of an aborted transaction are never scored, and those of an open one only
    once it commits (the broker and the consumer filter them: read_committed). The
    embedded broker takes no transactions, so the integration test shows this on Apache
    Kafka only (tests/integration/test_transactions.py)."""
    made: dict[str, dict[str, Any]] = {}

    class Client:
        def __init__(self, **kwargs: Any) -> None:
            made[type(self).__name__] = kwargs

        async def start(self) -> None:
            return None

        def subscribe(self, **kwargs: Any) -> None:
            return None

    class Consumer(Client):
        pass

    class Producer(Client):
        pass

    monkeypatch.setattr(kafka_module, "AIOKafkaConsumer", Consumer)
    monkeypatch.setattr(kafka_module, "AIOKafkaProducer", Producer)
    monkeypatch.setattr(stream_loop, "tune_gc", lambda: None)
    loop, _ = _loop(None)
    asyncio.run(loop.on_start())
    assert made["Consumer"]["isolation_level"] == "read_committed"
    assert made["Consumer"]["enable_auto_commit"] is False


def test_a_batch_whose_sends_failed_is_read_again_not_committed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def handle(records: list[RawRecord]) -> None:
        raise KafkaError("broker unavailable")

    async def no_wait(seconds: float) -> None:
        return None

    monkeypatch.setattr(agents.asyncio, "sleep", no_wait)
    loop, _ = _loop(handle)
    consumer = Consumer()
    batches = _batches()
    asyncio.run(loop._handle(consumer, batches))  # type: ignore[arg-type]
    assert consumer.commits == []
    assert consumer.seeks == [(tp, ms[0].offset) for tp, ms in batches.items()]


@pytest.mark.parametrize(
    ("ends", "at", "written", "caught_up"),
    [
        ({0: 5, 1: 0}, {0: 5, 1: 0}, {}, True),  # everything read (an empty partition too)
        ({0: 5, 1: 3}, {0: 5, 1: 2}, {}, False),  # one record left on partition 1
        ({0: 5, 1: None}, {0: 5, 1: 0}, {}, False),  # partition 1 never fetched yet
        ({}, {}, {}, False),  # owns nothing
        # ingest just wrote two records to partition 0 that no fetch has seen yet
        ({0: 5, 1: 0}, {0: 5, 1: 0}, {0: 7}, False),
        ({0: 7, 1: 0}, {0: 7, 1: 0}, {0: 7}, True),
    ],
)
@pytest.mark.parametrize("stable", [True, False])
def test_caught_up_means_every_owned_partition_read_to_its_end(
    ends: dict[int, int | None],
    at: dict[int, int],
    written: dict[int, int],
    caught_up: bool,
    stable: bool,
) -> None:
    """Its end is what can be read: the last stable offset (records of an open
    transaction past it are not handed over yet), or the high-water mark from a broker
    that reports none."""
    loop, _ = _loop(None)
    tps = {p: TopicPartition("intent.events", p) for p in ends}
    loop.assignment = set(tps.values())
    loop.sender.written = {tps[p]: offset for p, offset in written.items()}
    loop.caught_up = not caught_up
    consumer = Positions(
        {tps[p]: e for p, e in ends.items()}, {tps[p]: a for p, a in at.items()}, stable
    )
    loop._track(asyncio.run(loop._unread(consumer)))  # type: ignore[arg-type]
    assert loop.caught_up is caught_up
    # the positions read on the way are kept for the sweep's hold (Pipeline.until)
    assert loop.guard.positions == {tps[p]: a for p, a in at.items() if ends[p] is not None}
