"""Routing (stream/worker/routing.py): ingest back-pressure and the direct path."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition

from stream.worker import routing
from tests.unit.worker_fakes import Positions, _loop


class Balancing:
    """A consumer with set backlogs: intent.events high-water marks and positions."""

    def __init__(self, waiting: int) -> None:
        self.waiting = waiting
        self.paused_: set[TopicPartition] = set()

    def last_stable_offset(self, tp: TopicPartition) -> int:
        return 1_000_000

    async def position(self, tp: TopicPartition) -> int:
        return 1_000_000 - self.waiting // 2  # two intent.events partitions share it

    def paused(self) -> set[TopicPartition]:
        return set(self.paused_)

    def pause(self, *tps: TopicPartition) -> None:
        self.paused_ |= set(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused_ -= set(tps)


def test_ingest_pauses_while_detection_is_behind_and_resumes_when_it_caught_up() -> None:
    loop, _ = _loop(None)
    settings = loop.settings
    raw = {TopicPartition(settings.topic_clickstream, p) for p in (0, 1)}
    events = {TopicPartition(settings.topic_normalised, p) for p in (0, 1)}
    loop.assignment = raw | events
    batch = settings.batch_size
    pause, resume = routing.PAUSE_BACKLOG_BATCHES, routing.RESUME_BACKLOG_BATCHES
    consumer = Balancing(waiting=pause * batch + 2)
    routing.balance(consumer, loop.settings, loop.assignment, asyncio.run(loop._unread(consumer)))  # type: ignore[arg-type]
    assert consumer.paused_ == raw
    consumer.waiting = (resume + 1) * batch  # catching up, not far enough yet: stays paused
    routing.balance(consumer, loop.settings, loop.assignment, asyncio.run(loop._unread(consumer)))  # type: ignore[arg-type]
    assert consumer.paused_ == raw
    consumer.waiting = resume * batch
    routing.balance(consumer, loop.settings, loop.assignment, asyncio.run(loop._unread(consumer)))  # type: ignore[arg-type]
    assert consumer.paused_ == set()


def test_ingest_pauses_on_what_it_wrote_itself_before_a_fetch_has_seen_it() -> None:
    loop, _ = _loop(None)
    settings = loop.settings
    raw = {TopicPartition(settings.topic_clickstream, 0)}
    events = TopicPartition(settings.topic_normalised, 0)
    loop.assignment = raw | {events}
    consumer = Balancing(waiting=0)  # the last fetch saw nothing waiting
    wrote = (routing.PAUSE_BACKLOG_BATCHES + 1) * settings.batch_size
    loop.sender.written = {events: 1_000_000 + wrote}  # what ingest wrote since
    routing.balance(consumer, loop.settings, loop.assignment, asyncio.run(loop._unread(consumer)))  # type: ignore[arg-type]
    assert consumer.paused_ == raw


class Owned(Positions):
    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0, 1, 2, 3}


def test_only_owned_partitions_read_to_their_end_take_clickstream_events_directly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An event skips intent.events only where nothing of that partition is left to read,
    so it cannot overtake an earlier event of its shopper still in the topic."""
    from aiokafka.partitioner import DefaultPartitioner

    loop, _ = _loop(None)
    tps = {p: TopicPartition("intent.events", p) for p in (0, 1, 2, 3)}
    raw = TopicPartition("clickstream.events", 0)
    loop.assignment = {*tps.values(), raw}
    loop.sender.written = {tps[2]: 7}  # ingest just wrote to partition 2; no fetch has seen it
    loop.guard.holds = {3: 9}  # taken over with 9 records; the last fetch saw only 4
    consumer = Owned(
        {tps[0]: 5, tps[1]: 3, tps[2]: 5, tps[3]: 4, raw: 8},
        {tps[0]: 5, tps[1]: 2, tps[2]: 5, tps[3]: 4, raw: 8},
    )
    loop.consumer = consumer  # type: ignore[assignment]
    loop._track(asyncio.run(loop._unread(consumer)))  # type: ignore[arg-type]
    assert loop.direct == {0}  # 1: one record unread; 2: its own write unread; 3: held

    partitioner = DefaultPartitioner()
    keys = [f"s-{i}".encode() for i in range(40)]
    placed = {key: loop.routing.place(key) for key in keys}
    assert {p for p in placed.values() if p is not None} == {0}
    for key, partition in placed.items():
        expected = partitioner(key, [0, 1, 2, 3], [0, 1, 2, 3])  # as the producer places it
        assert partition == (0 if expected == 0 else None)

    monkeypatch.setenv("INTENT_ALWAYS_REPARTITION", "true")
    loop, _ = _loop(None)
    loop.assignment = {*tps.values(), raw}
    loop.consumer = consumer  # type: ignore[assignment]
    loop._track(asyncio.run(loop._unread(consumer)))  # type: ignore[arg-type]
    assert loop.direct == set()
