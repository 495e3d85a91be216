"""Many Redis commands in one round trip, for the hot path's per-shopper steps.

redis-py's pipeline builds a command object per command, packs its arguments in Python
and runs a reply callback per reply, and a batch sends a few commands per shopper (a
GET, an EVALSHA and a SET). `execute` packs each command with hiredis (C), writes them
all at once on one pooled connection and reads the raw replies: a fraction of the cost
per command (docs/performance.md).

Replies come back as the server sent them (bytes, ints, None), with no callbacks. An
error reply raises `redis.exceptions.ResponseError`; as on any failure, the connection is
dropped (its unread replies with it), so every step using this must be safe to repeat,
and all of the worker's are.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

Command = Sequence[str | bytes | int | float]


def zrem_by_partition(key: Callable[[int], str], members: dict[str, int]) -> list[Command]:
    """One ZREM per partition's sorted set (`key(partition)`) for members -> partition."""
    by_partition: dict[int, list[str]] = defaultdict(list)
    for member, partition in members.items():
        by_partition[partition].append(member)
    return [("ZREM", key(p), *names) for p, names in by_partition.items()]


async def execute(client: aioredis.Redis, commands: list[Command]) -> list[Any]:
    """Send `commands` in one write and return their replies, in order."""
    if not commands:
        return []
    pool = client.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        pack = hiredis.pack_command  # its stub types the argument as a 1-tuple
        packed = b"".join([pack(tuple(c)) for c in commands])  # type: ignore[arg-type]
        await conn.send_packed_command(packed, check_health=False)
        read = conn.read_response
        return [await read() for _ in commands]
    except BaseException:
        await conn.disconnect(nowait=True)
        raise
    finally:
        await pool.release(conn)


class Script:
    """A Lua script run as EVALSHA inside `execute`, loaded again when the server has
    forgotten it (a restart, SCRIPT FLUSH)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def command(self, keys: Sequence[str], args: Sequence[str | bytes]) -> Command:
        return ("EVALSHA", self.sha, len(keys), *keys, *args)

    async def run_all(self, client: aioredis.Redis, commands: list[Command]) -> list[Any]:
        """`execute`, loading the script when the server does not have it, then running
        the whole batch again: safe, as the worker's script is idempotent."""
        try:
            return await execute(client, commands)
        except NoScriptError:
            await client.script_load(self.source)
            return await execute(client, commands)
