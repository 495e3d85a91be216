"""`TakeoverGuard` (stream/worker/takeover.py): sweep holds after a takeover or failed send."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from stream.core.ingest import RawRecord
from stream.worker import pipeline as agents
from stream.worker import takeover
from tests.unit.worker_fakes import Consumer, Offsets, _batches, _pipeline


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
