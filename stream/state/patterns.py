"""Per-shopper pattern state in Redis, behind one class that builds every key.

Why Redis and not a changelogged Faust table: on the embedded broker a table restored
from its changelog lost updates (docs/performance.md), and partial matches must
survive restarts and rebalances exactly. Redis also lets the timer find due shoppers
without scanning: a sorted set per input partition holds each shopper's next deadline.

Key layout (the `{shopper}` hash tag keeps a shopper's keys in one cluster slot):
    <app>:{<shopper>}:patterns     JSON state, expires `Engine.ttl(state)` after writing
    <app>:{<shopper>}:forgotten    when `intent forget` erased the shopper (epoch seconds)
    <app>:deadlines:{<partition>}  sorted set: shopper -> next deadline (epoch seconds)

A batch reads every shopper's state in one round trip (a pipelined GET), and writes the
changed ones with SET + ZADD/ZREM in the round trip that also writes its score indexes
(`Pipeline.flush`).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, NamedTuple

import orjson
import redis.asyncio as aioredis
from prometheus_client import Counter

from stream.state.redisbatch import Command, execute, zrem_by_partition

State = dict[str, Any]


class Saved(NamedTuple):
    state: State
    ttl_seconds: float
    deadline: float | None
    partition: int


class Loaded(NamedTuple):
    state: State | None
    forgotten: float | None  # when `intent forget` last erased the shopper


def fence_value(reply: bytes | str | None) -> float | None:
    """A fence's GET reply as a time, or None."""
    return None if reply is None else float(reply)


class PatternStore:
    def __init__(
        self, client: aioredis.Redis, app_id: str, roundtrips: Counter | None = None
    ) -> None:
        self.redis = client
        self.prefix = app_id
        self.roundtrips = roundtrips

    def _trip(self, op: str) -> None:
        if self.roundtrips is not None:
            self.roundtrips.labels(op).inc()

    def state_key(self, shopper: str) -> str:
        return f"{self.prefix}:{{{shopper}}}:patterns"

    def deadline_key(self, partition: int) -> str:
        return f"{self.prefix}:deadlines:{{{partition}}}"

    def fence_key(self, shopper: str) -> str:
        return f"{self.prefix}:{{{shopper}}}:forgotten"

    async def load(self, shoppers: list[str]) -> dict[str, State]:
        """States of the shoppers that have one (one round trip)."""
        if not shoppers:
            return {}
        raw = await execute(self.redis, [("GET", self.state_key(s)) for s in shoppers])
        self._trip("patterns_load")
        return {s: orjson.loads(r) for s, r in zip(shoppers, raw, strict=True) if r is not None}

    async def load_fenced(self, shoppers: list[str]) -> dict[str, Loaded]:
        """Each shopper's state (None: none) and when it was last forgotten (None: not
        within the fence's life), in one round trip."""
        if not shoppers:
            return {}
        commands: list[Command] = []
        for s in shoppers:
            commands += [("GET", self.state_key(s)), ("GET", self.fence_key(s))]
        raw = await execute(self.redis, commands)
        self._trip("patterns_load")
        return {
            s: Loaded(None if state is None else orjson.loads(state), fence_value(fence))
            for s, state, fence in zip(shoppers, raw[::2], raw[1::2], strict=True)
        }

    async def fences(self, shoppers: list[str]) -> dict[str, float | None]:
        """When each shopper was last forgotten (None: not within the fence's life)."""
        if not shoppers:
            return {}
        raw = await execute(self.redis, [("GET", self.fence_key(s)) for s in shoppers])
        return {s: fence_value(r) for s, r in zip(shoppers, raw, strict=True)}

    def fence_commands(self, shoppers: list[str]) -> list[Command]:
        """GETs of the shoppers' fences, to compare with what was read before (`fence_value`
        parses each reply)."""
        return [("GET", self.fence_key(s)) for s in shoppers]

    def save_commands(self, saved: dict[str, Saved]) -> list[Command]:
        """The commands that write states with their expiry and index their deadlines.
        The caller sends them (`redisbatch.execute`), after the batch's output."""
        due: dict[int, dict[str, float]] = defaultdict(dict)
        undue: dict[int, list[str]] = defaultdict(list)
        for shopper, item in saved.items():
            if item.deadline is None:
                undue[item.partition].append(shopper)
            else:
                due[item.partition][shopper] = item.deadline
        commands: list[Command] = [
            (
                "SET",
                self.state_key(shopper),
                orjson.dumps(item.state),
                "PX",
                max(1000, int(item.ttl_seconds * 1000)),
            )
            for shopper, item in saved.items()
        ]
        # one command per partition's deadline index, not per shopper
        for partition, shoppers in undue.items():
            commands.append(("ZREM", self.deadline_key(partition), *shoppers))
        for partition, mapping in due.items():
            pairs = [x for shopper, at in mapping.items() for x in (at, shopper)]
            commands.append(("ZADD", self.deadline_key(partition), *pairs))
        return commands

    def unindex_commands(self, shoppers: dict[str, int]) -> list[Command]:
        """The commands that take shoppers (-> their partition) off the deadline index."""
        return zrem_by_partition(self.deadline_key, shoppers)

    async def due(self, partition: int, until: float, limit: int) -> list[str]:
        """Shoppers of a partition whose next deadline is at or before `until`."""
        members = await self.redis.zrangebyscore(
            self.deadline_key(partition), "-inf", until, start=0, num=limit
        )
        self._trip("deadlines_due")
        return [m.decode() if isinstance(m, bytes) else str(m) for m in members]
