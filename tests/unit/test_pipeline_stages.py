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

    def broken(*args: Any) -> Any:
        raise RuntimeError("detector bug")

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

    load = pipeline.owner.load

    async def states(shoppers: dict[str, int]) -> dict[str, Any]:
        if "s-1" in shoppers:
            await asyncio.sleep(0.05)  # this group is waiting on Redis when the other fails
        return await load(shoppers)

    detect = pipeline.core.detect

    def group_detect(shoppers: dict[str, Any], *args: Any) -> Any:
        if "s-2" in shoppers:  # not one shopper's failure: the group's own
            raise RuntimeError("detector bug")
        return detect(shoppers, *args)

    def apply(*args: Any) -> Any:
        async def scoring(batch: Any) -> Any:
            scored.append(batch)
            return {}

        return scoring

    monkeypatch.setattr(pipeline.owner, "load", states)
    monkeypatch.setattr(pipeline.core, "detect", group_detect)
    monkeypatch.setattr(pipeline, "apply", apply)
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


def test_after_the_send_each_partition_gets_one_write_of_its_records_and_indexes() -> None:
    """Nothing is written before the broker acked the output; then one fenced write per
    partition, the index moves first and the records last, all in that partition's
    slot."""
    from stream.state.records import decode
    from stream.worker.pipeline import Outbox

    events: list[str] = []

    async def send(records: list[Any]) -> None:
        events.append("send")

    pipeline = _pipeline([])
    pipeline.send = send
    owner = pipeline.owner
    written = owner.made
    outbox = Outbox()
    outbox.add("t", b"s-1", b"{}")
    for shopper, partition in (("s-1", 0), ("s-2", 3)):
        record = owner.fresh()
        record.patterns["wm"] = 100.0
        outbox.saved[shopper] = (partition, record)
    first = outbox.write(0)
    first.move("s-1", "none", "low")
    first.decays["s-1"] = 500.0
    first.audiences[("a", "s-1")] = "add"
    owner.epochs = {0: 4, 3: 9}

    async def run() -> None:
        await pipeline.flush(outbox)
        events.append("written")

    asyncio.run(run())
    assert events == ["send", "written"]
    (writes,) = written  # one write, for both partitions
    assert sorted(writes) == [0, 3]
    steps = owner.fence.steps(0, writes[0])
    assert [(verb, key) for verb, key, _ in steps] == [
        ("ZREM", "intent:deadlines:{0}"),
        ("ZADD", "intent:decay:{0}"),
        ("SADD", "intent:tier:{0}:low"),
        ("SADD", "intent:audience:{0}:a"),
        ("SET", "intent:s:{0}:s-1"),  # last: a failed index write leaves it as it was
    ]
    value, ttl_ms = writes[0].records["s-1"]
    assert decode(value, {}).patterns["wm"] == 100.0 and ttl_ms >= 1000
    command = owner.fence.command(3, 9, writes[3])
    assert command is not None and command[3] == "intent:epoch:{3}" and "9" in command
