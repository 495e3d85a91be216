"""Erasing one shopper: everything stored about them, in both stores.

`forget` first sets the shopper's fence (`<app>:{<shopper>}:forgotten`, the time of the
forget), then erases. The worker reads the fence with the shopper's state: events from
before it are dropped, not processed (the clickstream may still hold them); and a batch
that loaded the shopper before the forget and writes after it finds the fence changed
and erases again, so a batch in flight does not undo a forget.
"""

from __future__ import annotations

from typing import Final

import redis.asyncio as aioredis

from stream.state.patterns import PatternStore
from stream.state.scores import ScoreStore

# How long the fence lives: longer than any event from before the forget can take to
# reach the worker (consumer lag, a restart, a replay of recent input).
FENCE_SECONDS: Final = 30 * 86400


async def forget(
    client: aioredis.Redis, app_id: str, shopper: str, partitions: int, at: float
) -> dict[str, int]:
    """Fence the shopper at `at` (epoch seconds), then erase everything stored about
    them. Returns what was removed, by kind."""
    fence = PatternStore(client, app_id).fence_key(shopper)
    await client.set(fence, f"{at:.6f}", ex=FENCE_SECONDS)
    return await erase(client, app_id, shopper, partitions)


async def erase(
    client: aioredis.Redis, app_id: str, shopper: str, partitions: int
) -> dict[str, int]:
    """Erase everything stored about a shopper but its fence: score, applied ids, pattern
    state, index entries and audience memberships. Returns what was removed, by kind."""
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
