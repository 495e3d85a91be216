"""`stream.state.redisbatch` on a real Redis: replies in order and undecoded, an error reply
raises and leaves no stray replies behind, a forgotten script is loaded again."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from stream.state.redisbatch import Script, execute
from tests.integration.servers import Servers

ECHO = "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('GET', KEYS[1])"


def _run(servers: Servers, body: object) -> None:
    async def main() -> None:
        client = aioredis.Redis.from_url(servers.redis_url, socket_timeout=None)
        try:
            await body(client, uuid.uuid4().hex)  # type: ignore[operator]
        finally:
            await client.aclose()

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


def test_index_writes_in_one_round_trip_end_as_if_made_one_by_one(servers: Servers) -> None:
    """A sweep chunk can hold two writes for one shopper (an absence scored, then a
    decay): its tier set and decay deadline end as the later write left them."""
    from stream.core.scoring import ScoreConfig
    from stream.state.scores import ScoreStore

    async def body(client: aioredis.Redis, p: str) -> None:
        store = ScoreStore(client, p, ScoreConfig(10.0, 40.0, 70.0, 2.0))
        first = (
            {"s-1": (3, 500.0), "s-2": (3, 600.0)},
            [("add", "a", "s-1")],
            [("s-1", "none", "low"), ("s-2", "none", "mid")],
        )
        later = ({"s-1": (3, None)}, [("remove", "a", "s-1")], [("s-1", "low", "none")])
        await execute(client, store.index_commands([first, later]))
        assert await client.smembers(store.tier_key("low")) == set()
        assert await client.smembers(store.tier_key("mid")) == {b"s-2"}
        assert await client.zrange(store.decay_key(3), 0, -1, withscores=True) == [(b"s-2", 600.0)]
        assert await client.smembers(store.audience_key("a")) == set()

    _run(servers, body)
