"""`Pipeline` (stream/worker/pipeline.py): a failing stage dead-letters; the write order."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from stream.core.ingest import RawRecord
from stream.settings import Settings
from stream.worker import pipeline as agents
from tests.unit.worker_fakes import _pipeline


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

    monkeypatch.setattr(pipeline.store, "load_fenced", no_states)
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

    monkeypatch.setattr(pipeline.store, "load_fenced", states)
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


def test_after_the_send_the_score_indexes_go_before_the_detection_state() -> None:
    """One round trip, run in order by Redis. A crash that left the state saved and the
    indexes unwritten would lose them: the batch read again would find its events in
    the state, drop them, and score nothing."""
    from stream.state.patterns import Saved
    from stream.worker.pipeline import Outbox

    pipeline = _pipeline([])
    written: list[list[Any]] = []

    async def write(commands: list[Any]) -> list[Any]:
        written.append(commands)
        return [None] * len(commands)  # Redis's replies

    pipeline._write = write
    outbox = Outbox()
    outbox.index.append(({"s-1": (0, 500.0)}, [("add", "a", "s-1")], [("s-1", "none", "low")]))
    outbox.saved["s-1"] = Saved({"seen": ["e1"]}, ttl_seconds=3600.0, deadline=900.0, partition=0)
    asyncio.run(pipeline.flush(outbox))
    (commands,) = written  # one round trip
    verbs = [c[0] for c in commands]
    # first whether Redis still holds the deployment's state (its mark), then the writes
    assert verbs == ["EXISTS", "SADD", "ZADD", "SADD", "SET", "ZADD"]
    assert commands[0][1] == pipeline.store_guard.key
    assert commands[4][1] == pipeline.store.state_key("s-1")  # the state comes last
