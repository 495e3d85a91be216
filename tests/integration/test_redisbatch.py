"""`stream.state.redisbatch` on a real Redis: replies in order and undecoded, an error reply
raises and leaves no stray replies behind, a forgotten script is loaded again. And the
fenced write of a partition (`lua/fence.lua`): merged index moves end as if made one by
one, a stale or lost epoch writes nothing, and a write past Lua's stack is made whole."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from stream.state.redisbatch import Script, execute
from tests.integration.servers import Servers, drop_keys

ECHO = "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('GET', KEYS[1])"


def _run(servers: Servers, body: object) -> None:
    async def main() -> None:
        client = aioredis.Redis.from_url(servers.redis_url, socket_timeout=None)
        prefix = uuid.uuid4().hex
        try:
            await body(client, prefix)  # type: ignore[operator]
        finally:
            await client.aclose()
            drop_keys(servers.redis_url, prefix)

    asyncio.run(main())


def test_replies_come_back_in_order_as_the_server_sent_them(servers: Servers) -> None:
    async def body(client: aioredis.Redis, p: str) -> None:
        replies = await execute(
            client,
            [
                ("SET", f"{p}:a", b"\x00bytes", "PX", 60_000),
                ("GET", f"{p}:a"),
                ("GET", f"{p}:missing"),
                ("ZADD", f"{p}:z", 1764000000.123456, "m", 2.5, "n"),
                ("ZSCORE", f"{p}:z", "m"),
            ],
        )
        assert replies[:4] == [b"OK", b"\x00bytes", None, 2]
        assert float(replies[4]) == 1764000000.123456  # a double (RESP3) or its text (RESP2)
        assert await execute(client, []) == []

    _run(servers, body)


def test_an_error_reply_raises_and_the_next_call_is_not_handed_its_leftovers(
    servers: Servers,
) -> None:
    async def body(client: aioredis.Redis, p: str) -> None:
        await client.set(f"{p}:s", "text")
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await execute(client, [("LPUSH", f"{p}:s", "x"), ("GET", f"{p}:s")])
        # The failed connection was dropped with its unread reply ("text"): a fresh one
        # answers this call with its own replies only.
        assert await execute(client, [("SET", f"{p}:t", "1"), ("GET", f"{p}:t")]) == [
            b"OK",
            b"1",
        ]

    _run(servers, body)


def test_a_script_the_server_forgot_is_loaded_again(servers: Servers) -> None:
    async def body(client: aioredis.Redis, p: str) -> None:
        script = Script(f"-- {p}\n{ECHO}")  # a new script: the server cannot have it
        commands = [script.command([f"{p}:k{i}"], [f"v{i}"]) for i in range(3)]
        assert await script.run_all(client, commands) == [b"v0", b"v1", b"v2"]
        assert await script.run_all(client, commands) == [b"v0", b"v1", b"v2"]
        assert (await client.script_exists(script.sha)) == [True]

    _run(servers, body)


def test_index_writes_merged_in_one_fenced_write_end_as_if_made_one_by_one(
    servers: Servers,
) -> None:
    """A sweep chunk can hold two writes for one shopper (an absence scored, then a
    decay): its tier set and decay deadline end as the later write left them."""
    from stream.state.connection import run
    from stream.state.records import Fence, Keys, PartitionWrite

    async def body(client: aioredis.Redis, p: str) -> None:
        keys = Keys(p)
        fence = Fence(keys)
        first = PartitionWrite(decays={"s-1": 500.0, "s-2": 600.0})
        first.audiences[("a", "s-1")] = "add"
        first.move("s-1", "none", "low")
        first.move("s-2", "none", "mid")
        later = PartitionWrite(decays={"s-1": None})
        later.audiences[("a", "s-1")] = "remove"
        later.move("s-1", "low", "none")
        first.merge(later)
        await client.set(keys.epoch(3), 7)
        command = fence.command(3, 7, first)
        assert command is not None
        await run(client, [command], [fence.script])
        assert await client.smembers(keys.tier(3, "low")) == set()
        assert await client.smembers(keys.tier(3, "mid")) == {b"s-2"}
        assert await client.zrange(keys.decays(3), 0, -1, withscores=True) == [(b"s-2", 600.0)]
        assert await client.smembers(keys.audience(3, "a")) == set()
        # a writer with another epoch writes nothing
        stale = fence.command(3, 6, PartitionWrite(decays={"s-3": 1.0}))
        assert stale is not None
        with pytest.raises(ResponseError, match="FENCED"):
            await run(client, [stale], [fence.script])
        assert await client.zscore(keys.decays(3), "s-3") is None
        # nor one whose partition has lost its epoch (Redis lost its data)
        await client.delete(keys.epoch(3))
        lost = fence.command(3, 7, PartitionWrite(decays={"s-3": 1.0}))
        assert lost is not None
        with pytest.raises(ResponseError, match="NOEPOCH"):
            await run(client, [lost], [fence.script])
        assert await client.zscore(keys.decays(3), "s-3") is None

    _run(servers, body)


def test_a_fenced_write_larger_than_luas_stack_is_made_whole(servers: Servers) -> None:
    """A partition's write after a large batch (or a sweep of a busy partition): more
    index arguments than a Lua call takes at once are split, inside the one script call,
    and every record and index move is made."""
    from stream.state.connection import run
    from stream.state.records import MAX_ARGS, Fence, Keys, PartitionWrite

    async def body(client: aioredis.Redis, p: str) -> None:
        keys = Keys(p)
        fence = Fence(keys)
        shoppers = [f"s-{i}" for i in range(3 * MAX_ARGS)]
        write = PartitionWrite()
        for i, shopper in enumerate(shoppers):
            write.records[shopper] = (b"\x02record", 60_000)
            write.deadlines[shopper] = 1_000.0 + i
            write.move(shopper, "none", "low")
            write.audiences[("big", shopper)] = "add"
        await client.set(keys.epoch(0), 1)
        command = fence.command(0, 1, write)
        assert command is not None
        (made,) = await run(client, [command], [fence.script])
        assert made > len(shoppers) + 3  # the records, then more than one call per index
        assert await client.scard(keys.tier(0, "low")) == len(shoppers)
        assert await client.scard(keys.audience(0, "big")) == len(shoppers)
        assert await client.zcard(keys.deadlines(0)) == len(shoppers)
        last = shoppers[-1]
        assert await client.zscore(keys.deadlines(0), last) == 1_000.0 + len(shoppers) - 1
        assert await client.get(keys.record(0, last)) == b"\x02record"

    _run(servers, body)
