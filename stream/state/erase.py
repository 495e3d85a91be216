"""Erasing one shopper: everything stored about them, in both stores."""

from __future__ import annotations

import redis.asyncio as aioredis

from stream.state.patterns import PatternStore
from stream.state.scores import ScoreStore


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
