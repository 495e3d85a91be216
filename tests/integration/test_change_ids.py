"""`change_id` is unique for all time and deterministic: a shopper whose state expired (or
was lost) and who comes back gets new ids, and the same input gives the same ids again.
On a real Redis, through the worker's pipeline."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.integration.servers import drop_keys
from tests.integration.test_isolation import Harness
from tests.scenarios import ev

SHOPPER = "back-1"


def _journey(start: datetime) -> list[dict[str, Any]]:
    """Carts and a checkout: the shopper climbs tiers within minutes."""
    bodies = [ev(SHOPPER, m, "add_to_cart", sku=f"SKU-{m}", start=start) for m in (0, 1, 2)]
    return [*bodies, ev(SHOPPER, 3, "checkout_started", sku="SKU-0", start=start)]


def _changes(harness: Harness, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the pipeline sends for these events, as tier changes of SHOPPER."""
    before = len(harness.sent)
    records = [harness.event(b, i) for i, b in enumerate(bodies)]
    harness.run(harness.pipeline.handle(records))
    topic = harness.settings.topic_tier_changes
    new = harness.sent[before:]
    return [json.loads(v) for t, _, v, _ in new if t == topic]


def _expire(harness: Harness) -> None:
    """Every key of the shopper gone, as their TTLs (or a lost Redis) would leave it, and
    the worker restarted (nothing in memory; the partitions taken again)."""
    drop_keys(harness.settings.redis_url.get_secret_value(), harness.settings.app_id)
    harness.pipeline.owner.clear()
    harness.run(harness.pipeline.owner.take(range(harness.settings.partitions)))


def test_a_shopper_who_comes_back_after_their_state_expired_gets_new_change_ids(
    harness: Harness,
) -> None:
    now = datetime.now(UTC)
    first = _changes(harness, _journey(now - timedelta(days=40)))
    _expire(harness)
    back = _changes(harness, _journey(now - timedelta(hours=1)))

    # The same transitions, from an empty state both times: a per-shopper counter
    # would have started at 1 again and given the same ids.
    moves = [(c["from_tier"], c["to_tier"], c["reason"]) for c in first]
    assert len(moves) >= 2
    assert [(c["from_tier"], c["to_tier"], c["reason"]) for c in back] == moves
    assert not {c["change_id"] for c in first} & {c["change_id"] for c in back}
    assert len({c["change_id"] for c in first + back}) == len(first) + len(back)

    # Replayed from empty, the same input gives the same ids and the same records.
    _expire(harness)
    again = _changes(harness, _journey(now - timedelta(hours=1)))
    assert again == back
