"""Reading a shopper (score now, tier, suppression, top signals) and erasing one.

Used by `intent shopper`, `intent forget` and the worker's HTTP views
(`GET /shoppers/{id}`, `GET /audiences/{name}`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

import redis.asyncio as aioredis

from stream.core.scoring import decay
from stream.state.patterns import PatternStore
from stream.state.scores import ScoreStore, _text

TOP: Final = 5
AUDIENCE_PAGE: Final = 100  # members per page of GET /audiences/{name}


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).isoformat()


def shopper_view(shopper: str, fields: dict[str, str], now: float) -> dict[str, Any]:
    """The score hash read back: the score decayed to `now` (or to its last event time,
    if that is later), tier, active suppressions, top signals and category scores."""
    if not fields:
        return {"shopper_id": shopper, "known": False, "tier": "none", "score": 0.0}
    last = float(fields.get("T", 0.0))
    at = max(now, last)
    score = 0.0
    rules: list[tuple[str, float]] = []
    categories: dict[str, float] = {}
    suppressions = []
    for key in sorted(fields):
        kind, _, rest = key.partition("|")
        parts = [float(x) for x in fields[key].split()] if kind in "src" else []
        if kind == "s":
            score += decay(parts[0], parts[1], float(rest), at)
        elif kind == "r":
            rules.append((rest, decay(parts[0], parts[1], parts[2], at)))
        elif kind == "c":
            h, _, category = rest.partition("|")
            categories[category] = categories.get(category, 0.0) + decay(
                parts[0], parts[1], float(h), at
            )
        elif kind == "x" and float(fields[key]) > at:
            scope, _, value = rest.partition(":")
            suppressions.append({"scope": scope, "value": value or None,
                                 "until": _iso(float(fields[key]))})  # fmt: skip
    rules.sort(key=lambda item: (-abs(item[1]), item[0]))
    return {
        "shopper_id": shopper,
        "known": True,
        "tier": fields.get("tier", "none"),
        "score": round(score, 6),
        "at": _iso(at),
        "last_signal_at": _iso(last),
        "transitions": int(fields.get("seq", 0)),
        "suppressions": suppressions,
        "top_signals": [{"name": n, "points": round(p, 6)} for n, p in rules[:TOP]],
        "categories": {c: round(v, 6) for c, v in sorted(categories.items(), key=lambda i: -i[1])},
    }


async def read_shopper(scores: ScoreStore, shopper: str, now: float) -> dict[str, Any]:
    return shopper_view(shopper, await scores.read(shopper), now)


async def audience_page(
    client: aioredis.Redis, scores: ScoreStore, name: str, cursor: int, count: int
) -> dict[str, Any]:
    next_cursor, members = await client.sscan(scores.audience_key(name), cursor, count=count)
    return {
        "audience": name,
        "members": sorted(_text(m) for m in members),
        "next_cursor": int(next_cursor) or None,
        "size": int(await client.scard(scores.audience_key(name))),
    }


async def forget(
    client: aioredis.Redis, app_id: str, shopper: str, partitions: int
) -> dict[str, int]:
    """Erase everything stored about a shopper: score, applied ids, pattern state, index
    entries and audience memberships. Returns what was removed, by kind."""
    patterns = PatternStore(client, app_id)
    scores = ScoreStore(client, app_id)
    removed = {"keys": 0, "index": 0, "audiences": 0}
    async with client.pipeline(transaction=False) as pipe:
        pipe.delete(patterns.state_key(shopper), *scores.keys(shopper))
        for partition in range(partitions):
            pipe.zrem(patterns.deadline_key(partition), shopper)
            pipe.zrem(scores.decay_key(partition), shopper)
        results = await pipe.execute()
    removed["keys"] = int(results[0])
    removed["index"] = sum(int(r) for r in results[1:])
    async for key in client.scan_iter(match=scores.audience_key("*"), count=500):
        removed["audiences"] += int(await client.srem(key, shopper))
    async for key in client.scan_iter(match=scores.tier_key("*"), count=500):
        removed["index"] += int(await client.srem(key, shopper))
    return removed
