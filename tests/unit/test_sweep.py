"""`Sweeper` (stream/worker/sweep.py): deadlines, decays, event time, chunks and SWEEP_MAX."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaError

from stream.settings import Settings
from stream.worker import pipeline as agents
from stream.worker import sweep
from tests.unit.worker_fakes import _pipeline


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

    monkeypatch.setattr(pipeline.reader, "due_deadlines", due)
    monkeypatch.setattr(pipeline.reader, "due_decays", due)
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


def test_a_decay_moves_its_deadline_only_after_its_output_was_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Until the broker has the demotion, the decay index keeps the shopper due: a crash
    in between leaves the call to be made again, from the record Redis holds."""
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

    def apply(*args: Any) -> Any:
        async def scoring(batch: dict[str, Any]) -> dict[str, Result]:
            order.append("apply")
            change = Change("mid", "low", 13.0, 500.0, 2, "decay", [("r", 13.0)], None)
            return {"s-1": Result("mid", "low", 13.0, 500.0, 2, 9000.0, 3600.0, 0, [change])}

        return scoring

    async def write(outbox: Any) -> None:  # the record and the indexes
        order.append("index")

    async def no_sleep(seconds: float) -> None:
        return None

    pipeline.send = send
    monkeypatch.setattr(pipeline.reader, "due_deadlines", no_due_states)
    monkeypatch.setattr(pipeline.reader, "due_decays", due)
    monkeypatch.setattr(pipeline, "apply", apply)
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

    async def no_writes(commands: Any) -> list[Any]:
        return [None] * len(commands)

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

    def apply(*args: Any) -> Any:
        async def scoring(batch: dict[str, Any]) -> dict[str, Result]:
            results = {}
            for shopper, (_, at) in sorted(batch.items()):
                calls.append((shopper, at))
                if shopper == "stuck":
                    deadline: float | None = at  # not moved on
                else:
                    deadline = {600.0: 700.0, 700.0: 800.0}.get(at)  # two more boundaries
                results[shopper] = Result("low", "low", 1.0, at, 1, deadline, 3600.0, 0)
            return results

        return scoring

    async def write(writes: dict[int, Any]) -> int:  # as if the fenced write ran at once
        for part in writes.values():
            for shopper, deadline in part.decays.items():
                if deadline is None:
                    del index[shopper]
                else:
                    index[shopper] = deadline
        return 0

    monkeypatch.setattr(pipeline.reader, "due_deadlines", no_deadlines)
    monkeypatch.setattr(pipeline.reader, "due_decays", due)
    monkeypatch.setattr(pipeline, "apply", apply)
    monkeypatch.setattr(pipeline.owner, "write", write)
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
    monkeypatch.setattr(pipeline.reader, "due_deadlines", due)
    monkeypatch.setattr(pipeline.reader, "due_decays", due)
    asyncio.run(pipeline.handle([]))
    asyncio.run(pipeline.sweeper.sweep_partitions({0}))
    clock["t"] += sweep.SWEEP_QUIET_SECONDS
    asyncio.run(pipeline.sweeper.sweep_partitions({0}))
    assert limits == [small, small, quiet, quiet]  # deadlines, then decays
