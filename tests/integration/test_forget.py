"""`intent forget` sticks, on a real Redis through the worker's pipeline. The request
reaches the shopper's owner on intent.events, in order with the shopper's events: the
owner erases the shopper there (a tombstone record, off every index and audience), so
no batch can undo it; events from before the forget that arrive later are dropped,
and a shopper who comes back after it starts afresh."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from stream.core.ingest import RawRecord
from stream.settings import Settings
from stream.state.records import Keys, decode
from stream.worker.control import forget_request
from tests.integration.test_isolation import Harness
from tests.scenarios import ev

SHOPPER = "gone-1"


def _keys(harness: Harness) -> set[str]:
    """Every key and index entry that names the shopper, but its tombstone."""
    client = redis.Redis.from_url(harness.settings.redis_url.get_secret_value())
    try:
        app = harness.settings.app_id
        found = set()
        for key in client.scan_iter(f"{app}:*"):
            name = key.decode()
            kind = client.type(key)
            if name.endswith(f":{SHOPPER}") and kind == b"string":
                if decode(client.get(key) or b"", {}).forgotten is None:
                    found.add(name)  # a live record, not a tombstone
                continue
            in_set = kind == b"set" and client.sismember(key, SHOPPER)
            if in_set or (kind == b"zset" and client.zscore(key, SHOPPER) is not None):
                found.add(name)
        return found
    finally:
        client.close()


def _batch(harness: Harness, start: datetime, first: int) -> list[RawRecord]:
    bodies = [ev(SHOPPER, m, "add_to_cart", sku=f"SKU-{m}", start=start) for m in (0, 1, 2)]
    bodies.append(ev(SHOPPER, 3, "checkout_started", sku="SKU-0", start=start))
    return [harness.event(b, first + i) for i, b in enumerate(bodies)]


def _request(harness: Harness, at: float, offset: int) -> RawRecord:
    like = harness.event(ev(SHOPPER, 0, "page_view"), offset)
    return like._replace(value=forget_request(SHOPPER, at))


def _sent_to(harness: Harness, topic: str, since: int = 0) -> list[Any]:
    return [
        (k, json.loads(v), h)
        for t, k, v, h in harness.sent[since:]
        if t == topic and k == SHOPPER.encode()
    ]


def test_a_forget_request_erases_the_shopper_in_order_with_its_events(harness: Harness) -> None:
    pipeline, settings = harness.pipeline, harness.settings
    now = datetime.now(UTC)
    harness.run(pipeline.handle(_batch(harness, now - timedelta(hours=3), 0)))
    assert _keys(harness)  # record, indexes and audiences exist

    # The request comes in one batch with more of the shopper's events from before it:
    # whatever their order there, none of them survives the forget.
    forgot = now.timestamp()
    sent = len(harness.sent)
    records = _batch(harness, now - timedelta(hours=2), 10)
    records.insert(2, _request(harness, forgot, 12))
    harness.run(pipeline.handle(records))
    assert _keys(harness) == set()
    assert harness.metric("intent_forgets_total") == 1
    (notice,) = _sent_to(harness, settings.topic_suppression, sent)
    assert notice[1]["op"] == "forget"
    assert notice[1]["record_id"] == f"{SHOPPER}:forget:{forgot:.3f}"
    (audit,) = _sent_to(harness, settings.topic_signals, sent)
    assert audit[2] == [("intent-kind", b"forget")]
    assert _sent_to(harness, settings.topic_tier_changes, sent) == []

    # Read again (a crash before the commit): the same request changes nothing more.
    again = len(harness.sent)
    harness.run(pipeline.handle([_request(harness, forgot, 12)]))
    assert harness.metric("intent_forgets_total") == 1 and harness.sent[again:] == []

    # Events from before the forget, delivered late, are dropped: nothing comes back,
    # also when the owner reads the shopper from Redis (a new owner, an evicted cache).
    pipeline.owner.clear()
    harness.run(pipeline.handle(_batch(harness, now - timedelta(hours=1), 20)))
    assert _keys(harness) == set()
    assert harness.metric("intent_events_forgotten_total") == 8
    assert [r for r in harness.sent[again:] if r[1] == SHOPPER.encode()] == []

    # A shopper who comes back after the forget starts afresh.
    later = datetime.fromtimestamp(forgot, UTC) + timedelta(seconds=1)
    harness.run(pipeline.handle(_batch(harness, later, 30)))
    assert _keys(harness)
    assert _sent_to(harness, settings.topic_tier_changes, again)
    record = harness.run(pipeline.reader.record(SHOPPER))
    assert record is not None and record.forgotten == forgot  # the fence stays


def test_a_forget_under_traffic_sticks(
    settings: Settings, env: dict[str, str], start_worker: Any
) -> None:
    """A running worker, the shopper's events flowing before, during and after
    `intent forget`: once applied, nothing of the shopper from before the forget is left
    (its record holds only events from after it), and the events after it count."""
    from click.testing import CliRunner

    from stream.cli import main
    from stream.state.store import StateReader
    from stream.topics import ensure_topics
    from stream.worker.main import redis_client
    from tests.integration.conftest import wait_for
    from tests.integration.kafka_io import produce

    ensure_topics(settings)
    start_worker()
    stop = threading.Event()

    def traffic() -> None:  # a cart add every 50 ms, stamped with the wall clock
        i = 0
        while not stop.is_set():
            body = ev(SHOPPER, 0, "add_to_cart", sku=f"SKU-{i}", start=datetime.now(UTC))
            body["event_id"] = f"t-{i}"
            produce(settings.kafka_bootstrap, settings.topic_clickstream,
                    [(SHOPPER.encode(), json.dumps(body).encode())])  # fmt: skip
            i += 1
            time.sleep(0.05)

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    try:

        def known() -> bool:
            return _read(settings) is not None

        wait_for(known, 60, "the shopper's first record")
        time.sleep(1.0)
        result = CliRunner().invoke(main, ["forget", SHOPPER, "--yes", "--wait", "60"])
        assert result.exit_code == 0, result.output
        time.sleep(2.0)  # more events after the forget
    finally:
        stop.set()
        sender.join(timeout=10)
    record = _read(settings)
    assert record is not None and record.forgotten is not None
    seen = [ts for ts, _ in record.patterns["seen"]]
    assert seen and min(seen) > record.forgotten  # only events from after the forget
    components = record.score["s"].values()
    assert components and all(r > record.forgotten for _, r in components)

    async def view() -> Any:
        client = redis_client(settings)
        try:
            return await StateReader(client, settings.app_id, settings.partitions).record(SHOPPER)
        finally:
            await client.aclose()

    assert asyncio.run(view()) == record


def _read(settings: Settings) -> Any:
    from stream.state.store import partition_of

    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    try:
        key = Keys(settings.app_id).record(partition_of(SHOPPER, settings.partitions), SHOPPER)
        raw = client.get(key)
        return None if raw is None else decode(raw, {})
    finally:
        client.close()
