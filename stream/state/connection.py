"""One Redis or a Redis Cluster, told apart by asking the server, and the commands the
state needs sent to either.

`INTENT_REDIS_URL` names one server. If it answers `INFO cluster` with
`cluster_enabled:1`, every client here (the worker, `intent shopper`, `intent forget`)
uses redis-py's cluster client with that node as its seed; no other setting is needed.

Standalone, a batch's commands go in one round trip (`redisbatch.execute`). On a
cluster each command goes to the node that holds its slot, concurrently: the state's
commands are one per partition (an MGET of its records, a fenced script call), and each
touches one slot, so redis-py follows the cluster's redirections (MOVED, and ASK while
a slot migrates) for each.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from stream.settings import redis_hint
from stream.state.redisbatch import Command, Script, execute

log = logging.getLogger(__name__)

Client = aioredis.Redis | RedisCluster


def is_cluster_server(url: str, options: dict[str, Any], wait: bool = False) -> bool:
    """Whether the server at `url` is a node of a Redis Cluster. With `wait`, a server
    that does not answer is asked again (a worker waits for Redis); without, the error
    is raised (a command says at once that Redis is down)."""
    delay = 0.5
    while True:
        probe = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5, **options)
        try:
            with probe:
                info = probe.info("cluster")
            return bool(int(info.get("cluster_enabled", 0)))
        except redis.exceptions.NoPermissionError:
            log.warning(
                "this Redis user may not run INFO: taken for a standalone server (grant "
                "+info to use a Redis Cluster)"
            )
            return False
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if not wait or redis_hint(exc):  # turned away for its settings: no waiting
                raise
            log.warning("Redis did not answer (%s); asking again in %.1f s", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def open_client(url: str, options: dict[str, Any], *, wait: bool = False, **extra: Any) -> Client:
    """A client of the right kind for the server at `url`."""
    if is_cluster_server(url, options, wait):
        return RedisCluster.from_url(url, **options, **extra)
    return aioredis.Redis.from_url(url, **options, **extra)


async def run(client: Client, commands: list[Command], scripts: list[Script] = ()) -> list[Any]:  # type: ignore[assignment]
    """Each command's reply, in order. An error reply raises (standalone: the first one;
    cluster: any). A script the server has forgotten is loaded and the commands sent
    again: every command given here is safe to repeat."""
    try:
        return await _run(client, commands)
    except NoScriptError:
        for script in scripts:
            await client.script_load(script.source)
        return await _run(client, commands)


async def _run(client: Client, commands: list[Command]) -> list[Any]:
    if not commands:
        return []
    if isinstance(client, RedisCluster):
        return list(await asyncio.gather(*(client.execute_command(*c) for c in commands)))
    return await execute(client, commands)


async def close(client: Client) -> None:
    await client.aclose()
