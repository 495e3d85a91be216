"""`intent forget` sticks, on a real Redis through the worker's pipeline: a forget that
lands while a batch holds the shopper is not undone by that batch's writes, and events
from before the forget that arrive later are dropped, while a shopper who comes back
after it starts afresh."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from stream.state.erase import forget
from stream.worker.outbox import OutRecord
from tests.integration.test_isolation import Harness
from tests.scenarios import ev

SHOPPER = "gone-1"


def _keys(harness: Harness) -> set[str]:
    """Every key and index entry that names the shopper, but its fence."""
    client = redis.Redis.from_url(harness.settings.redis_url.get_secret_value())
    try:
        app = harness.settings.app_id
        found = {k.decode() for k in client.scan_iter(f"{app}:{{{SHOPPER}}}:*")}
        found.discard(f"{app}:{{{SHOPPER}}}:forgotten")
        for key in client.scan_iter(f"{app}:*"):
            kind = client.type(key)
            in_set = kind == b"set" and client.sismember(key, SHOPPER)
            if in_set or (kind == b"zset" and client.zscore(key, SHOPPER) is not None):
                found.add(key.decode())
        return found
    finally:
        client.close()


def _forget(harness: Harness, at: float) -> Any:
    settings = harness.settings
    return forget(harness.client, settings.app_id, SHOPPER, settings.partitions, at)


def _batch(harness: Harness, start: datetime, first: int) -> list[Any]:
    bodies = [ev(SHOPPER, m, "add_to_cart", sku=f"SKU-{m}", start=start) for m in (0, 1, 2)]
    bodies.append(ev(SHOPPER, 3, "checkout_started", sku="SKU-0", start=start))
    return [harness.event(b, first + i) for i, b in enumerate(bodies)]


def test_a_forget_during_a_batch_is_not_undone_by_its_writes(harness: Harness) -> None:
    pipeline = harness.pipeline
    now = datetime.now(UTC)
    harness.run(pipeline.handle(_batch(harness, now - timedelta(hours=3), 0)))
    assert _keys(harness)  # state, scores, indexes and audiences exist

    # The next batch loads and scores the shopper; the forget lands while its records
    # are being sent, before its state and indexes are written.
    send = pipeline.send
    forgot_at: list[float] = []

    async def send_then_forget(records: list[OutRecord]) -> None:
        await send(records)
        if not forgot_at:
            forgot_at.append(datetime.now(UTC).timestamp())
            await _forget(harness, forgot_at[0])

    pipeline.send = send_then_forget  # type: ignore[method-assign]
    harness.run(pipeline.handle(_batch(harness, now - timedelta(hours=2), 10)))
    pipeline.send = send  # type: ignore[method-assign]
    assert forgot_at
    assert _keys(harness) == set()
    assert harness.metric("intent_forgets_reapplied_total") == 1

    # Events from before the forget, delivered late, are dropped: nothing comes back.
    sent = len(harness.sent)
    harness.run(pipeline.handle(_batch(harness, now - timedelta(hours=1), 20)))
    assert _keys(harness) == set()
    assert harness.metric("intent_events_forgotten_total") == 4
    assert [r for r in harness.sent[sent:] if r[1] == SHOPPER.encode()] == []

    # A shopper who comes back after the forget starts afresh.
    later = datetime.fromtimestamp(forgot_at[0], UTC) + timedelta(seconds=1)
    harness.run(pipeline.handle(_batch(harness, later, 30)))
    assert _keys(harness)
    changes = [k for t, k, _, _ in harness.sent[sent:] if t == harness.settings.topic_tier_changes]
    assert SHOPPER.encode() in changes
    assert harness.metric("intent_forgets_reapplied_total") == 1
