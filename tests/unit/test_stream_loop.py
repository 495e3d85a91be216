"""`StreamLoop`'s commit discipline: offsets are committed only after a batch was handled
(sent and acknowledged); a batch whose sends failed is read again, never committed."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError
from prometheus_client import CollectorRegistry

from stream.core.ingest import RawRecord
from stream.metrics import Metrics
from stream.settings import Settings
from stream.worker import kafka as kafka_module
from stream.worker import loop as stream_loop
from stream.worker import pipeline as agents
from stream.worker import routing, sweep, takeover
from stream.worker.loop import StreamLoop


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


def test_no_sweep_until_a_batch_whose_sends_failed_was_processed_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its scores are applied and its output is not out: a decay fired before it is
    processed again would move the shopper's transitions on, and the score script could
    no longer hand that output back. It may come back in parts."""
    from datetime import UTC, datetime

    async def no_wait(seconds: float) -> None:
        return None

    monkeypatch.setattr(agents.asyncio, "sleep", no_wait)
    pipeline = _pipeline([])
    loop = pipeline.loop
    fail = {"next": True}

    async def handle(records: list[RawRecord]) -> None:
        if fail["next"]:
            fail["next"] = False
            raise KafkaError("broker unavailable")

    loop.handle = handle  # type: ignore[method-assign]
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC).timestamp()
    pipeline.sweeper.saw({0: now - 7200, 5: now - 7200})
    event_time = now - 7200 - pipeline.core.engine.lateness
    assert pipeline.sweeper.until(0) == pipeline.sweeper.until(5) == event_time

    consumer = Consumer()
    batches = _batches()
    asyncio.run(loop._handle(consumer, batches))  # type: ignore[arg-type]
    assert consumer.commits == []  # it failed: read again, and no sweep meanwhile
    assert pipeline.sweeper.until(0) is None and pipeline.sweeper.until(5) is None

    first = {tp: ms[:1] for tp, ms in batches.items()}  # the first part comes back
    asyncio.run(loop._handle(consumer, first))  # type: ignore[arg-type]
    assert len(consumer.commits) == 1
    assert pipeline.sweeper.until(0) is None and pipeline.sweeper.until(5) is None
    rest = {tp: ms[1:] for tp, ms in batches.items()}  # then the rest
    asyncio.run(loop._handle(consumer, rest))  # type: ignore[arg-type]
    assert pipeline.sweeper.until(0) == pipeline.sweeper.until(5) == event_time

    # a rebalance: the batch's partitions went elsewhere, their new owner reads it again
    fail["next"] = True
    asyncio.run(loop._handle(consumer, batches))  # type: ignore[arg-type]
    assert pipeline.sweeper.until(0) is None
    (kept,) = [tp for tp in batches if tp.topic == "clickstream.events"]
    asyncio.run(loop.assigned({kept}))
    assert pipeline.sweeper.until(0) is None  # the part on a partition still owned: still held
    asyncio.run(loop.assigned(set()))
    assert pipeline.sweeper.until(0) == event_time


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


def _pipeline(sent: list[Any]) -> Any:
    import redis.asyncio as aioredis

    from stream.rulesfile import load_rules
    from stream.worker.pipeline import Pipeline

    async def send(records: list[Any]) -> None:
        sent.extend(records)

    client = aioredis.Redis(host="127.0.0.1", port=1)  # never reached: Redis steps stubbed
    return Pipeline(
        None, Settings(), Metrics(CollectorRegistry()), load_rules(), client, sender=send
    )


def _event_record(offset: int) -> RawRecord:
    body = {
        "event_id": f"e{offset}",
        "shopper_id": f"s-{offset}",
        "type": "product_view",
        "ts": "2026-11-23T10:00:00Z",
    }
    return RawRecord(json.dumps(body).encode(), b"s", Settings().topic_normalised, 0, offset)


def test_a_bug_in_a_stage_dead_letters_its_records_and_the_loop_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent: list[Any] = []
    pipeline = _pipeline(sent)

    async def no_states(shoppers: list[str]) -> dict[str, Any]:
        return {}

    def broken(*args: Any) -> Any:
        raise RuntimeError("detector bug")

    monkeypatch.setattr(pipeline.store, "load", no_states)
    monkeypatch.setattr(pipeline.core.engine, "process", broken)
    monkeypatch.setattr(agents, "ingest_batch", broken)
    raw = RawRecord(b'{"x": 1}', b"k", Settings().topic_clickstream, 2, 7)
    records = [raw, _event_record(1), _event_record(2)]
    asyncio.run(pipeline.handle(records))
    settings = pipeline.settings
    assert [topic for topic, *_ in sent] == [settings.topic_dead_letter] * 3
    letters = [json.loads(value) for _, _, value, _ in sent]
    assert [(d["reason"], d["source"]["offset"]) for d in letters] == [
        ("processing_error", 7),
        ("processing_error", 1),
        ("processing_error", 2),
    ]
    assert all(d["detail"] == "RuntimeError: detector bug" for d in letters)
    rejected = pipeline.metrics.registry.get_sample_value(
        "intent_events_rejected_total", {"reason": "processing_error"}
    )
    assert rejected == 3


def test_a_bug_in_one_group_stops_the_other_groups_before_they_score(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The batch's shopper groups run concurrently. When one fails, the others must not
    go on scoring (and emitting) behind the dead letters, out of the lock."""
    sent: list[Any] = []
    pipeline = _pipeline(sent)
    scored: list[Any] = []

    async def states(shoppers: list[str]) -> dict[str, Any]:
        if "s-1" in shoppers:
            await asyncio.sleep(0.05)  # this group is waiting on Redis when the other fails
        return {}

    detect = pipeline.core.detect

    def group_detect(shoppers: dict[str, Any], *args: Any) -> Any:
        if "s-2" in shoppers:  # not one shopper's failure: the group's own
            raise RuntimeError("detector bug")
        return detect(shoppers, *args)

    async def apply_many(*args: Any) -> Any:
        scored.append(args)
        return {}

    monkeypatch.setattr(pipeline.store, "load", states)
    monkeypatch.setattr(pipeline.core, "detect", group_detect)
    monkeypatch.setattr(pipeline.scores, "apply_many", apply_many)
    monkeypatch.setattr(agents, "PROCESS_GROUPS", 2)

    async def run() -> None:
        await pipeline.handle([_event_record(1), _event_record(2)])
        await asyncio.sleep(0.1)  # time enough for a group left running to score

    asyncio.run(run())
    assert scored == []
    letters = [json.loads(value) for _, _, value, _ in sent]
    assert [(d["reason"], d["source"]["offset"]) for d in letters] == [
        ("processing_error", 1),
        ("processing_error", 2),
    ]
    assert all(d["detail"] == "RuntimeError: detector bug" for d in letters)  # not a group


def test_a_sweep_whose_sends_fail_sends_the_same_records_again_until_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sweep's changes are already applied in Redis and its deadlines moved on: a
    refused send must be repeated, or those decays and absences would never go out."""
    attempts: list[list[Any]] = []

    async def flaky(records: list[Any]) -> None:
        attempts.append(list(records))
        if len(attempts) < 3:
            raise KafkaError("broker away")

    pipeline = _pipeline([])
    pipeline.send = flaky
    record = ("intent.tier-changes", b"s-1", b'{"change_id": "c1"}', None)

    async def swept(partition: int, until: float, chunk: int, outbox: Any) -> int:
        outbox.records.append(record)
        return 1

    async def nothing(sweep: Any, until: float, chunk: int, outbox: Any) -> int:
        return 0

    async def no_sleep(seconds: float) -> None:
        return None

    pipeline.loop.caught_up = True  # event time is known: the wall clock rules

    monkeypatch.setattr(pipeline.sweeper, "_deadlines", swept)
    monkeypatch.setattr(pipeline.sweeper, "_decay", nothing)
    monkeypatch.setattr(agents.asyncio, "sleep", no_sleep)
    asyncio.run(pipeline.sweeper.sweep_partitions({0}))
    assert attempts == [[record]] * 3
    errors = pipeline.metrics.registry.get_sample_value(
        "intent_send_errors_total", {"path": "sweep"}
    )
    assert errors == 2
    assert pipeline.metrics.registry.get_sample_value("intent_worker_ready") == 1


def test_the_sweep_waits_for_event_time_until_everything_owned_was_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a start or takeover the topics may hold the purchase that cancels a due
    checkout: the wall clock only rules once the worker has read all it owns."""
    from datetime import UTC, datetime

    pipeline = _pipeline([])
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    pipeline.clock = lambda: now
    lateness = pipeline.core.engine.lateness
    clock = {"t": 1000.0}
    monkeypatch.setattr(agents.time, "monotonic", lambda: clock["t"])

    assert pipeline.sweeper.until(0) is None  # nothing read, not caught up: nothing is due
    pipeline.loop.caught_up = True
    assert pipeline.sweeper.until(0) == now.timestamp()  # an empty, quiet partition: wall clock

    pipeline.loop.caught_up = False
    pipeline.sweeper.saw({0: now.timestamp() - 7200})  # input from two hours ago
    assert pipeline.sweeper.until(0) == now.timestamp() - 7200 - lateness
    clock["t"] += 60  # a minute with no input on it, but the worker is behind
    assert pipeline.sweeper.until(0) == now.timestamp() - 7200 - lateness
    pipeline.loop.caught_up = True  # ... and now it has read everything
    assert pipeline.sweeper.until(0) == now.timestamp()

    asked: list[Any] = []

    async def due(*args: Any) -> Any:
        asked.append(args)
        return []

    monkeypatch.setattr(pipeline.store, "due", due)
    monkeypatch.setattr(pipeline.scores, "due", due)
    pipeline.loop.caught_up = False
    asyncio.run(pipeline.sweeper.sweep_partitions({5}))  # no event time known on partition 5
    assert asked == []
    assert pipeline.metrics.registry.get_sample_value("intent_worker_ready") == 1


def test_a_partition_is_idle_after_the_grace_the_settings_give(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """INTENT_IDLE_GRACE_SECONDS: how long without input before the wall clock rules (the
    benchmark sets it long, so its sweep keeps to the preloaded events' time)."""
    from datetime import UTC, datetime

    pipeline = _pipeline([])
    pipeline.sweeper.settings = Settings(idle_grace_seconds=30.0)
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    pipeline.clock = lambda: now
    event_time = now.timestamp() - 7200 - pipeline.core.engine.lateness
    clock = {"t": 1000.0}
    monkeypatch.setattr(agents.time, "monotonic", lambda: clock["t"])
    pipeline.loop.caught_up = True
    pipeline.sweeper.saw({0: now.timestamp() - 7200})
    clock["t"] += 29.9  # the default second has long passed
    assert pipeline.sweeper.until(0) == event_time
    clock["t"] += 0.1
    assert pipeline.sweeper.until(0) == now.timestamp()


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


def test_a_partition_just_assigned_fires_nothing_until_what_it_held_then_was_read() -> None:
    """Its last owner may have crashed between scoring a batch and sending the output.
    That batch is read again, maybe in parts; a decay fired between the parts would be
    a transition after the unsent result, and the script could not hand it back."""
    from datetime import UTC, datetime

    pipeline = _pipeline([])
    loop = pipeline.loop
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC).timestamp()
    events = pipeline.settings.topic_normalised
    assigned = {TopicPartition(events, p) for p in (0, 1, 2)}
    clicks = TopicPartition("clickstream.events", 0)
    ends = {tp: 0 if tp.partition == 2 else 50 for tp in assigned}
    consumer = Offsets({**ends, clicks: 80}, {clicks: 80})  # the clickstream: all committed
    loop.consumer = consumer  # type: ignore[assignment]
    asyncio.run(loop.assigned({*assigned, clicks}))
    assert consumer.asked == [sorted([*assigned, clicks])]
    assert loop.guard.holds == {0: 50, 1: 50}  # partition 2 was empty: nothing to wait for
    assert loop.guard.intake == {}  # nothing past the clickstream's commit
    pipeline.sweeper.saw({0: now - 7200, 1: now - 7200, 2: now - 7200})  # event time is known
    lateness = pipeline.core.engine.lateness
    assert pipeline.sweeper.until(0) is None and pipeline.sweeper.until(1) is None
    assert pipeline.sweeper.until(2) == now - 7200 - lateness

    # read up to just short of the end as of the assignment: still held
    loop.guard.positions[TopicPartition(events, 0)] = 49
    assert pipeline.sweeper.until(0) is None
    loop.guard.positions[TopicPartition(events, 0)] = 50  # read to that end
    assert pipeline.sweeper.until(0) == now - 7200 - lateness
    assert pipeline.sweeper.until(1) is None  # partition 1 has not been read yet
    assert loop.guard.holds == {1: 50}


def test_nothing_fires_until_the_clickstream_was_processed_past_what_a_dead_owner_scored() -> None:
    """A worker takes clickstream events straight to detection (the direct path); a dead
    one may have scored up to a batch of them past its commit without sending. Those
    shoppers may be on any partition, and with input not keyed by shopper on a
    partition of another worker. So none fires until the group has committed every
    clickstream partition a few batches past where it stood, and what reached this
    worker's intent.events by then was read back."""
    from datetime import UTC, datetime

    pipeline = _pipeline([])
    loop = pipeline.loop
    settings = pipeline.settings
    span = takeover.INTAKE_HOLD_BATCHES * settings.batch_size
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC).timestamp()
    events = [TopicPartition(settings.topic_normalised, p) for p in (0, 1)]
    # backlog and short are this worker's; elsewhere and fresh another's, empty nobody's
    backlog, short, elsewhere, fresh, empty = (
        TopicPartition(settings.topic_clickstream, p) for p in range(5)
    )
    consumer = Offsets(
        {
            events[0]: 0,
            events[1]: 0,
            backlog: 1000 + 10 * span,
            short: 130,
            elsewhere: 500 + span // 2,
            fresh: 7 + 10 * span,
            empty: 0,
        },
        {backlog: 1000, short: 100, elsewhere: 500, fresh: None, empty: None},
    )
    loop.consumer = consumer  # type: ignore[assignment]
    assigned = {*events, backlog, short}
    loop.assignment = set(assigned)
    asyncio.run(loop.assigned(assigned))
    assert loop.guard.holds == {}  # intent.events held nothing
    # a backlog: a few batches past the commit; a short one: to its end; never committed:
    # from the log's start (7 here); an empty one: nothing to wait for
    assert loop.guard.intake == {
        backlog: 1000 + span,
        short: 130,
        elsewhere: 500 + span // 2,
        fresh: 7 + span,
    }
    pipeline.sweeper.saw({0: now - 7200, 1: now - 7200})
    event_time = now - 7200 - pipeline.core.engine.lateness
    assert pipeline.sweeper.until(0) is None and pipeline.sweeper.until(1) is None

    # this worker processed its own; another worker's is one record short
    consumer.committed_.update(
        {backlog: 1000 + span, short: 130, elsewhere: 500 + span // 2 - 1, fresh: 7 + span}
    )
    asyncio.run(loop.intake_read())
    assert loop.guard.intake == {elsewhere: 500 + span // 2}
    assert pipeline.sweeper.until(0) is None and pipeline.sweeper.until(1) is None

    # it got there; meanwhile ingest (here or there) sent 40 records to partition 1
    consumer.committed_[elsewhere] = 500 + span // 2
    consumer.ends[events[1]] = 40
    asyncio.run(loop.intake_read())
    assert loop.guard.intake == {}
    assert loop.guard.holds == {1: 40}  # ... so partition 1 waits until they are read back
    assert pipeline.sweeper.until(0) == event_time and pipeline.sweeper.until(1) is None
    loop.guard.positions[events[1]] = 40
    assert pipeline.sweeper.until(1) == event_time


def test_the_sweep_asks_whether_the_clickstream_hold_has_ended(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep is the one thing the hold stops, so it asks the group's commits once a
    tick. A hold that lasts INTAKE_HOLD_MAX_SECONDS is let go, and said so in the log:
    a worker stuck elsewhere must not stop every deadline for good."""
    pipeline = _pipeline([])
    loop = pipeline.loop
    settings = pipeline.settings
    clicks = [TopicPartition(settings.topic_clickstream, p) for p in (0, 1)]
    consumer = Offsets({clicks[0]: 50, clicks[1]: 50}, {clicks[0]: 10, clicks[1]: 10})
    loop.consumer = consumer  # type: ignore[assignment]
    clock = {"t": 1000.0}
    monkeypatch.setattr(agents.time, "monotonic", lambda: clock["t"])
    asyncio.run(loop.assigned(set(clicks)))
    assert loop.guard.intake == {clicks[0]: 50, clicks[1]: 50}
    asyncio.run(pipeline.sweeper.sweep())
    assert loop.guard.intake == {clicks[0]: 50, clicks[1]: 50}
    consumer.committed_[clicks[0]] = 50
    asyncio.run(pipeline.sweeper.sweep())
    assert loop.guard.intake == {clicks[1]: 50}
    consumer.committed_[clicks[1]] = 49  # stays one short (a stuck worker)
    clock["t"] += takeover.INTAKE_HOLD_MAX_SECONDS - 0.1
    asyncio.run(pipeline.sweeper.sweep())
    assert loop.guard.intake == {clicks[1]: 50}
    assert "no sweep for" not in caplog.text
    clock["t"] += 0.1
    asyncio.run(pipeline.sweeper.sweep())
    assert loop.guard.intake == {}
    assert "no sweep for 60 s: clickstream partitions 1 not processed" in caplog.text


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


def test_a_decay_moves_its_deadline_only_after_its_output_was_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Until the broker has the demotion, the decay index keeps the shopper due: a crash
    in between leaves the call to be made again, and apply.lua hands its output back."""
    from stream.core.scoring import Change, Result

    order: list[str] = []
    pipeline = _pipeline([])
    pipeline.loop.caught_up = True

    async def send(records: list[Any]) -> None:
        order.append("send")
        if order.count("send") == 1:
            raise KafkaError("broker away")

    async def no_due_states(*args: Any) -> Any:
        return []

    async def due(partition: int, until: float, limit: int) -> dict[str, float]:
        return {} if "index" in order else {"s-1": 500.0}  # due until it was indexed

    async def apply_many(batch: dict[str, Any]) -> dict[str, Result]:
        order.append("apply")
        change = Change("mid", "low", 13.0, 500.0, 2, "decay", [("r", 13.0)], None)
        return {"s-1": Result("mid", "low", 13.0, 500.0, 2, 9000.0, 3600.0, 0, [change])}

    async def write(commands: list[Any]) -> None:  # the indexes and the state
        order.append("index")

    async def no_sleep(seconds: float) -> None:
        return None

    pipeline.send = send
    monkeypatch.setattr(pipeline.store, "due", no_due_states)
    monkeypatch.setattr(pipeline.scores, "due", due)
    monkeypatch.setattr(pipeline.scores, "apply_many", apply_many)
    monkeypatch.setattr(pipeline, "_write", write)
    monkeypatch.setattr(agents.asyncio, "sleep", no_sleep)
    asyncio.run(pipeline.sweeper.sweep_partitions({0}))
    assert order == ["apply", "send", "send", "index"]


def test_the_sweep_fires_everything_due_two_partitions_at_a_time_in_turns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Partitions hold disjoint shoppers, so their chunks run concurrently (the process
    computes one while Redis runs the other's scripts) and go out in one send. A sweep
    goes on until every partition has less than a chunk due (a backlog is not left to
    the next timer tick), and a partition with a long backlog hands over to the next
    after SWEEP_TURN shoppers, so the others are not held up behind it."""
    sent: list[Any] = []
    pipeline = _pipeline(sent)
    chunk = sweep.SWEEP_CHUNK
    monkeypatch.setattr(pipeline.sweeper, "sweep_chunk", lambda: chunk)  # input flowing
    turn = sweep.SWEEP_TURN // chunk
    # shoppers due at each chunk, in order
    due = {0: [chunk] * (turn + 5) + [1], 1: [chunk] * (turn + 3) + [0], 2: [4], 3: [chunk, 2]}
    every = sum(sum(counts) for counts in due.values())
    calls: list[int] = []
    running = {"now": 0, "most": 0}

    async def swept(partition: int, until: float, chunk: int, outbox: Any) -> int:
        calls.append(partition)
        running["now"] += 1
        running["most"] = max(running["most"], running["now"])
        await asyncio.sleep(0)  # a Redis round trip: the other partition's turn
        running["now"] -= 1
        outbox.records.append(("intent.tier-changes", f"{partition}".encode(), b"{}", None))
        return due[partition].pop(0)

    async def nothing(sweep: Any, until: float, chunk: int, outbox: Any) -> int:
        return 0

    monkeypatch.setattr(pipeline.sweeper, "_deadlines", swept)
    monkeypatch.setattr(pipeline.sweeper, "_decay", nothing)
    pipeline.loop.caught_up = True
    handled = asyncio.run(pipeline.sweeper.sweep_partitions({0, 1, 2, 3}))
    assert handled == every  # what it says it handled (the Quix Streams bench sweeps on it)
    assert running["most"] == 2
    assert due == {0: [], 1: [], 2: [], 3: []}  # all of it in one sweep
    assert calls[: 2 * turn] == [0, 1] * turn  # two at a time, for a turn each
    assert calls[2 * turn : 2 * turn + 4] == [2, 3, 3, 0]  # then the two that waited
    assert len(sent) == len(calls)  # every chunk's output went out
    assert pipeline.metrics.registry.get_sample_value("intent_worker_ready") == 1


def test_a_failing_partition_chunk_leaves_the_other_partitions_sweep_going_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug in one partition's chunk ends that partition's pass, with nothing of it
    sent (all of it is due again at the next tick); the chunk running beside it goes on
    and its output goes out, and the failure is counted."""
    sent: list[Any] = []
    pipeline = _pipeline(sent)
    scored: list[int] = []

    async def swept(partition: int, until: float, chunk: int, outbox: Any) -> int:
        if partition == 1:
            outbox.records.append(("intent.tier-changes", b"1", b"{}", None))
            raise RuntimeError("detector bug")
        await asyncio.sleep(0.05)  # partition 0 is still waiting for Redis
        scored.append(partition)
        outbox.records.append(("intent.tier-changes", b"0", b"{}", None))
        return 1

    async def nothing(sweep: Any, until: float, chunk: int, outbox: Any) -> int:
        return 0

    async def no_writes(commands: Any) -> None:
        return None

    monkeypatch.setattr(pipeline.sweeper, "_deadlines", swept)
    monkeypatch.setattr(pipeline.sweeper, "_decay", nothing)
    monkeypatch.setattr(pipeline, "_write", no_writes)
    pipeline.loop.caught_up = True
    asyncio.run(pipeline.sweeper.sweep_partitions({0, 1}))
    assert scored == [0]
    assert [key for _, key, _, _ in sent] == [b"0"]
    registry = pipeline.metrics.registry
    assert registry.get_sample_value("intent_worker_ready") == 1
    failures = registry.get_sample_value("intent_shopper_failures_total", {"stage": "sweep_chunk"})
    assert failures == 1


def test_a_sweep_fires_every_detection_deadline_before_any_decay_up_to_one_until(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A visit end or an absence (a signal at its own time) must be scored before a decay
    due later: a decay first demoted, then the signal landed at the decay's time and
    promoted again, and the next decay demoted a second time. The live worker sent
    23,254 tier changes for replay's 16,378 on 10k Taobao events. And the decays stop at
    the same `until` as the deadlines, though the clock moves on meanwhile."""
    from datetime import UTC, datetime, timedelta

    pipeline = _pipeline([])
    pipeline.loop.caught_up = True
    clock = {"now": datetime(2026, 11, 24, 12, 0, tzinfo=UTC)}
    pipeline.clock = lambda: clock["now"]
    start = clock["now"].timestamp()
    chunk = sweep.SWEEP_CHUNK
    monkeypatch.setattr(pipeline.sweeper, "sweep_chunk", lambda: chunk)
    order: list[tuple[str, float]] = []
    # a decay can leave its shopper due again (the next tier boundary): the sweep asks
    # until nothing is due, not until a chunk comes back short
    deadlines, decays = [chunk, chunk, 7], [chunk, 3, 0]

    async def swept(partition: int, until: float, chunk: int, outbox: Any) -> int:
        order.append(("deadlines", until))
        clock["now"] += timedelta(seconds=5)  # a chunk takes time
        return deadlines.pop(0)

    async def decayed(sweep: Any, until: float, chunk: int, outbox: Any) -> int:
        order.append(("decays", until))
        clock["now"] += timedelta(seconds=5)
        return decays.pop(0)

    monkeypatch.setattr(pipeline.sweeper, "_deadlines", swept)
    monkeypatch.setattr(pipeline.sweeper, "_decay", decayed)
    asyncio.run(pipeline.sweeper.sweep_partitions({0}))
    assert [kind for kind, _ in order] == ["deadlines"] * 3 + ["decays"] * 3
    assert {until for _, until in order} == {start}


def test_a_partition_that_stays_due_stops_at_sweep_max(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shoppers that stay due after being handled (a fault) cannot keep one sweep going
    for ever: each partition stops at SWEEP_MAX shoppers, and the next tick goes on."""
    pipeline = _pipeline([])
    pipeline.loop.caught_up = True
    calls: list[int] = []

    async def always(partition: int, until: float, chunk: int, outbox: Any) -> int:
        calls.append(partition)
        if len(calls) > 100:  # fail, rather than hang, if nothing stops it
            raise AssertionError("the sweep did not stop")
        return chunk

    monkeypatch.setattr(pipeline.sweeper, "_deadlines", always)
    # no batch has come: the quiet chunk size
    monkeypatch.setattr(sweep, "SWEEP_MAX", 5 * sweep.SWEEP_CHUNK_QUIET)
    asyncio.run(pipeline.sweeper.sweep_partitions({0, 1, 2}))
    assert sorted(calls) == [0] * 5 + [1] * 5 + [2] * 5
    assert pipeline.metrics.registry.get_sample_value("intent_worker_ready") == 1


def test_a_decay_left_due_goes_out_in_the_same_sweep_and_a_stuck_one_only_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A decay can leave its shopper due again by the same `until`, at the next tier
    boundary: the sweep asks again until nothing is due, so that one goes out in this
    sweep, not at the next tick. A shopper whose call leaves its deadline where it was (a
    fault) is called once per sweep, not until SWEEP_MAX."""
    from stream.core.scoring import Result

    pipeline = _pipeline([])
    pipeline.loop.caught_up = True
    index = {"chained": 600.0, "stuck": 500.0}  # partition 0's decay index
    calls: list[tuple[str, float]] = []

    async def no_deadlines(*args: Any) -> list[str]:
        return []

    async def due(partition: int, until: float, limit: int) -> dict[str, float]:
        ready = sorted((t, s) for s, t in index.items() if t <= until)
        return {s: t for t, s in ready[:limit]}

    async def apply_many(batch: dict[str, Any]) -> dict[str, Result]:
        results = {}
        for shopper, (_, at) in sorted(batch.items()):
            calls.append((shopper, at))
            if shopper == "stuck":
                deadline: float | None = at  # not moved on
            else:
                deadline = {600.0: 700.0, 700.0: 800.0}.get(at)  # two more boundaries
            results[shopper] = Result("low", "low", 1.0, at, 1, deadline, 3600.0, 0)
        return results

    def write(writes: list[Any]) -> list[Any]:  # as if the round trip ran at once
        for deadlines, *_ in writes:
            for shopper, (_, deadline) in deadlines.items():
                if deadline is None:
                    del index[shopper]
                else:
                    index[shopper] = deadline
        return []

    monkeypatch.setattr(pipeline.store, "due", no_deadlines)
    monkeypatch.setattr(pipeline.scores, "due", due)
    monkeypatch.setattr(pipeline.scores, "apply_many", apply_many)
    monkeypatch.setattr(pipeline.scores, "index_commands", write)
    monkeypatch.setattr(pipeline.sweeper, "until", lambda partition: 1000.0)
    asyncio.run(pipeline.sweeper.sweep_partitions({0}))
    assert calls == [("chained", 600.0), ("stuck", 500.0), ("chained", 700.0), ("chained", 800.0)]
    assert index == {"stuck": 500.0}
    asyncio.run(pipeline.sweeper.sweep_partitions({0}))  # the next tick: once more
    assert calls[4:] == [("stuck", 500.0)]


def test_the_sweep_takes_small_chunks_while_batches_come_and_large_ones_when_quiet(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch of live events waits for the chunk being swept, so while input flows the
    chunks are small (SWEEP_CHUNK). Once no batch has come for SWEEP_QUIET_SECONDS the
    sweep takes SWEEP_CHUNK_QUIET shoppers at a time, from Redis too: a backlog with
    nothing waiting goes faster. Decided chunk by chunk: a batch that arrives during a
    sweep makes the next chunk small again."""
    pipeline = _pipeline([])
    pipeline.loop.caught_up = True
    clock = {"t": 1000.0}
    monkeypatch.setattr(agents.time, "monotonic", lambda: clock["t"])
    small, quiet = sweep.SWEEP_CHUNK, sweep.SWEEP_CHUNK_QUIET
    assert small < quiet

    assert pipeline.sweeper.sweep_chunk() == quiet  # no batch yet
    asyncio.run(pipeline.handle([]))
    assert pipeline.sweeper.sweep_chunk() == small
    clock["t"] += sweep.SWEEP_QUIET_SECONDS * 0.9
    assert pipeline.sweeper.sweep_chunk() == small
    clock["t"] += sweep.SWEEP_QUIET_SECONDS * 0.1
    assert pipeline.sweeper.sweep_chunk() == quiet

    asked: list[int] = []

    async def swept(partition: int, until: float, chunk: int, outbox: Any) -> int:
        asked.append(chunk)
        if len(asked) == 1:
            await pipeline.handle([])  # a batch arrives meanwhile
        elif len(asked) == 3:
            clock["t"] += sweep.SWEEP_QUIET_SECONDS  # and nothing after it
        return chunk if len(asked) < 4 else 0

    async def nothing(sweep: Any, until: float, chunk: int, outbox: Any) -> int:
        return 0

    monkeypatch.setattr(pipeline.sweeper, "_deadlines", swept)
    monkeypatch.setattr(pipeline.sweeper, "_decay", nothing)
    asyncio.run(pipeline.sweeper.sweep_partitions({0}))
    assert asked == [quiet, small, small, quiet]

    limits: list[int] = []

    async def due(partition: int, until: float, limit: int) -> Any:
        limits.append(limit)
        return []

    monkeypatch.undo()  # the real chunk functions, asking Redis for that many
    monkeypatch.setattr(agents.time, "monotonic", lambda: clock["t"])
    monkeypatch.setattr(pipeline.store, "due", due)
    monkeypatch.setattr(pipeline.scores, "due", due)
    asyncio.run(pipeline.handle([]))
    asyncio.run(pipeline.sweeper.sweep_partitions({0}))
    clock["t"] += sweep.SWEEP_QUIET_SECONDS
    asyncio.run(pipeline.sweeper.sweep_partitions({0}))
    assert limits == [small, small, quiet, quiet]  # deadlines, then decays


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


def test_after_the_send_the_score_indexes_go_before_the_detection_state() -> None:
    """One round trip, run in order by Redis. A crash that left the state saved and the
    indexes unwritten would lose them: the batch read again would find its events in
    the state, drop them, and score nothing."""
    from stream.state.patterns import Saved
    from stream.worker.pipeline import Outbox

    pipeline = _pipeline([])
    written: list[list[Any]] = []

    async def write(commands: list[Any]) -> None:
        written.append(commands)

    pipeline._write = write
    outbox = Outbox()
    outbox.index.append(({"s-1": (0, 500.0)}, [("add", "a", "s-1")], [("s-1", "none", "low")]))
    outbox.saved["s-1"] = Saved({"seen": ["e1"]}, ttl_seconds=3600.0, deadline=900.0, partition=0)
    asyncio.run(pipeline.flush(outbox))
    (commands,) = written  # one round trip
    verbs = [c[0] for c in commands]
    assert verbs == ["SADD", "ZADD", "SADD", "SET", "ZADD"]
    assert commands[3][1] == pipeline.store.state_key("s-1")  # the state comes last


def test_send_all_hands_the_producer_closed_batches_one_per_partition() -> None:
    """An open batch waits out the producer's linger for records that will not come
    (2.2 ms of a 4.2 ms flush of 40 batches on the embedded broker); a closed one goes
    out at once. Records are placed by key, as a plain send would."""
    from aiokafka import AIOKafkaProducer

    async def main() -> list[tuple[str, int, Any]]:
        producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1")  # never started
        handed: list[tuple[str, int, Any]] = []

        async def send_batch(batch: Any, topic: str, *, partition: int) -> Any:
            handed.append((topic, partition, batch))
            done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            done.set_result(SimpleNamespace(topic=topic, partition=partition, offset=0))
            return done

        producer.send_batch = send_batch  # type: ignore[method-assign]
        loop, _ = _loop(None)
        loop.sender.producer = producer
        loop.sender.partitions = {"out": [0, 1, 2, 3]}
        await loop.sender.send_all([("out", b"s-%d" % i, b"{}", None) for i in range(20)])
        await producer.stop()
        return handed

    handed = asyncio.run(main())
    assert len({(topic, partition) for topic, partition, _ in handed}) == len(handed)
    assert sum(batch.record_count() for _, _, batch in handed) == 20
    for _, _, batch in handed:  # closed: it takes no more records
        assert batch.append(key=b"k", value=b"v", timestamp=None) is None
