"""The Redis Cluster test helper (`tests/integration/cluster.py`) against redis-py's
cluster clients: slots resharded under traffic, and scripts on one hash tag while their
slot migrates."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio.cluster
import redis.cluster
from redis.exceptions import AskError, ClusterError, MovedError, ResponseError, TryAgainError

from tests.integration.cluster import Cluster, redis_cluster, standalone_redis

pytestmark = pytest.mark.integration

KEYS = 1000
WRITERS = 8
MOVED_SLOTS = 2000
HOT_TAGS = 24
FILL_KEYS = 300

# The shape of the application's fence script: KEYS[1] an epoch that exists, KEYS[2..]
# the keys written, which may not exist yet; all on one hash tag.
FENCE = """
local held = redis.call("GET", KEYS[1])
if held ~= ARGV[1] then return redis.error_reply("FENCED") end
for k = 2, #KEYS do redis.call("SET", KEYS[k], ARGV[2]) end
return #KEYS - 1
"""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with redis_cluster(tmp_path / "cluster") as running:
        yield running


class RedirectCounter(logging.Handler):
    """Counts the MOVED / ASK / TRYAGAIN replies redis-py's cluster clients absorbed
    (they log each at DEBUG before retrying)."""

    KINDS = ("MOVED", "ASK", "TRYAGAIN")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.counts: collections.Counter[str] = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        for kind in self.KINDS:
            if message.startswith(f"{kind} error received"):
                self.counts[kind] += 1


@pytest.fixture
def redirects() -> Iterator[RedirectCounter]:
    counter = RedirectCounter()
    loggers = [logging.getLogger("redis.cluster"), logging.getLogger("redis.asyncio.cluster")]
    saved = [(logger.level, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.addHandler(counter)
        logger.setLevel(logging.DEBUG)
        logger.propagate = False  # thousands of DEBUG lines: not for pytest's report
    yield counter
    for logger, (level, propagate) in zip(loggers, saved, strict=True):
        logger.removeHandler(counter)
        logger.setLevel(level)
        logger.propagate = propagate


def test_info_cluster_tells_a_cluster_from_a_standalone_server(
    cluster: Cluster, tmp_path: Path
) -> None:
    for url in cluster.urls:
        with redis.Redis.from_url(url) as node:
            assert node.info("cluster")["cluster_enabled"] == 1
    with standalone_redis(tmp_path / "standalone") as url, redis.Redis.from_url(url) as node:
        assert node.info("cluster")["cluster_enabled"] == 0


def test_reshard_under_traffic_loses_no_write(cluster: Cluster, redirects: RedirectCounter) -> None:
    source, target = cluster.ports[0], cluster.ports[1]
    before = cluster.slot_map()
    keys = [f"h:{{{i}}}" for i in range(KEYS)]
    assert len({cluster.key_slot(key) for key in keys}) > KEYS * 0.9  # spread over slots
    # Hot tags: slots of the source made slow to migrate (many keys), each hit without
    # pause by a writer of one key and by the fence script, so that commands land on
    # them mid-migration (ASK, TRYAGAIN) rather than only after (MOVED).
    hot = [
        tag for tag in (f"hot{i}" for i in range(400)) if before[cluster.key_slot(tag)] == source
    ]
    hot = hot[:HOT_TAGS]

    async def run() -> tuple[dict[str, str], collections.Counter[str], dict[str, str], float]:
        client = redis.asyncio.cluster.RedisCluster.from_url(cluster.url, decode_responses=True)
        fence = client.register_script(FENCE)
        last: dict[str, str] = {}
        errors: collections.Counter[str] = collections.Counter()
        fenced: dict[str, str] = {}
        stop = asyncio.Event()

        async def writer(mine: list[str]) -> None:
            round_ = 0
            while not stop.is_set():
                round_ += 1
                for key in mine:
                    value = f"{round_}"
                    try:
                        await client.set(key, value)
                        last[key] = value
                        read = await client.get(key)
                    except redis.RedisError as exc:
                        errors[f"single-key {type(exc).__name__}: {exc}"] += 1
                        continue
                    if read != value:
                        errors[f"single-key read {read!r} after writing {value!r}"] += 1

        async def fencer(tag: str) -> None:
            round_ = 0
            while not stop.is_set():
                round_ += 1
                written = f"{{{tag}}}w:{round_}"  # a new key each time
                try:
                    await fence(keys=[f"{{{tag}}}epoch", written], args=["7", tag])
                    fenced[written] = tag
                except redis.RedisError as exc:
                    errors[f"script {type(exc).__name__}: {exc}"] += 1

        for key in keys:
            await client.set(key, "0")
            last[key] = "0"
        for tag in hot:
            await client.mset({f"{{{tag}}}fill:{i}": "x" * 100 for i in range(FILL_KEYS)})
            await client.set(f"{{{tag}}}epoch", "7")
            await client.set(f"{{{tag}}}hot", "0")
            last[f"{{{tag}}}hot"] = "0"
        tasks = [asyncio.create_task(writer(keys[i::WRITERS])) for i in range(WRITERS)]
        tasks += [asyncio.create_task(writer([f"{{{tag}}}hot"])) for tag in hot]
        tasks += [asyncio.create_task(fencer(tag)) for tag in hot]
        await asyncio.sleep(0.2)
        started = time.monotonic()
        proc = cluster.reshard_async(MOVED_SLOTS, source, target)
        while proc.poll() is None:
            await asyncio.sleep(0.05)
        took = time.monotonic() - started
        assert proc.returncode == 0, f"reshard exited {proc.returncode}"
        await asyncio.to_thread(cluster.wait_stable)
        await asyncio.sleep(0.2)  # traffic on the settled cluster too
        stop.set()
        await asyncio.gather(*tasks)

        for key, value in last.items():
            assert await client.get(key) == value, key
        for written, tag in fenced.items():
            assert await client.get(written) == tag, written
        await client.aclose()
        return last, errors, fenced, took

    last, errors, fenced, took = asyncio.run(run())
    after = cluster.slot_map()
    moved = sorted(slot for slot in range(len(before)) if before[slot] != after[slot])
    print(
        f"reshard of {MOVED_SLOTS} slots took {took:.1f} s; redis-py absorbed "
        f"{dict(redirects.counts)}; {len(fenced)} fenced writes; errors raised: {dict(errors)}"
    )
    assert len(moved) == MOVED_SLOTS
    assert all(before[slot] == source and after[slot] == target for slot in moved)
    moved_key = next(key for key in keys if cluster.key_slot(key) in set(moved))
    assert cluster.slot_owner(cluster.key_slot(moved_key)) == target
    assert redirects.counts["MOVED"] > 0 and redirects.counts["ASK"] > 0
    assert not errors
    assert all(int(value) > 1 for value in last.values())  # every key written meanwhile


def _open_slot(cluster: Cluster, slot: int) -> tuple[redis.Redis, redis.Redis, int]:
    """Put `slot` half-way through a migration: MIGRATING on its owner, IMPORTING on
    another master. Returns plain clients of (source, target) and the target's port."""
    ids = cluster.node_ids()
    source = cluster.slot_owner(slot)
    target = next(port for port in cluster.ports if port != source)
    src, dst = cluster.client(source), cluster.client(target)
    _command(dst, "CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
    _command(src, "CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
    return src, dst, target


def _command(node: redis.Redis, *args: Any) -> Any:
    """One command on one node (redis-py leaves `execute_command` untyped)."""
    return node.execute_command(*args)  # type: ignore[no-untyped-call]


def _asking(node: redis.Redis, *args: object) -> object:
    """One command after ASKING, on one connection."""
    pipe = node.pipeline(transaction=False)
    pipe.execute_command("ASKING")  # type: ignore[no-untyped-call]
    pipe.execute_command(*args)  # type: ignore[no-untyped-call]
    reply = pipe.execute(raise_on_error=False)[1]
    if isinstance(reply, Exception):
        raise reply
    return reply


def test_script_on_one_hash_tag_while_its_slot_migrates(
    cluster: Cluster, redirects: RedirectCounter
) -> None:
    epoch, old, new, other = "{t}epoch", "{t}old", "{t}new", "{t}other"
    slot = cluster.key_slot(epoch)
    sync_client = redis.cluster.RedisCluster.from_url(cluster.url, decode_responses=True)
    fence = sync_client.register_script(FENCE)
    sync_client.script_load(FENCE)  # on every primary
    for key, value in ((epoch, "7"), (old, "old"), (other, "other")):
        sync_client.set(key, value)

    src, dst, target = _open_slot(cluster, slot)
    sha = fence.sha
    # On the source: all keys there, the script runs; some missing, TRYAGAIN, and it
    # does not run (nothing written).
    assert _command(src, "EVALSHA", sha, 2, epoch, old, "7", "a") == 1
    with pytest.raises(TryAgainError):
        _command(src, "EVALSHA", sha, 2, epoch, new, "7", "a")
    assert src.get(old) == "a"
    # A single missing key: ASK.
    with pytest.raises(AskError):
        _command(src, "GET", new)
    # A key touched inside the script but not declared: the script fails midway, after
    # its first write.
    with pytest.raises(ResponseError, match="non local key"):
        src.eval(f"redis.call('SET', KEYS[1], 'b'); redis.call('SET', '{new}', 'b')", 1, old)
    assert src.get(old) == "b"
    # The target serves the slot only after ASKING; without it, MOVED back.
    with pytest.raises(MovedError):
        _command(dst, "EVALSHA", sha, 2, epoch, old, "7", "c")

    # redis-py retries TRYAGAIN 16 times in all, then gives up with ClusterError.
    redirects.counts.clear()
    started = time.monotonic()
    with pytest.raises(ClusterError, match="TTL exhausted"):
        fence(keys=[epoch, new], args=["7", "c"])
    gave_up_after = time.monotonic() - started
    assert redirects.counts["TRYAGAIN"] == redis.cluster.RedisCluster.RedisClusterRequestTTL

    async def through_async_client() -> None:
        client = redis.asyncio.cluster.RedisCluster.from_url(cluster.url, decode_responses=True)
        script = client.register_script(FENCE)
        with pytest.raises(ClusterError, match="TTL exhausted"):
            await script(keys=[epoch, new], args=["7", "c"])
        await client.aclose()

    asyncio.run(through_async_client())

    # Move `old` only: the source has `epoch`, not `old`: TRYAGAIN; so does the target
    # after ASKING (it has `old`, not `epoch`).
    _command(src, "MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", old)
    with pytest.raises(TryAgainError):
        _command(src, "EVALSHA", sha, 2, epoch, old, "7", "d")
    with pytest.raises(TryAgainError):
        _asking(dst, "EVALSHA", sha, 2, epoch, old, "7", "d")
    # Move `epoch` too: the source answers ASK, the target (after ASKING) runs it if all
    # its keys are there, and answers TRYAGAIN for a key that exists nowhere yet.
    _command(src, "MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", epoch)
    with pytest.raises(AskError):
        _command(src, "EVALSHA", sha, 2, epoch, old, "7", "d")
    assert _asking(dst, "EVALSHA", sha, 2, epoch, old, "7", "d") == 1
    with pytest.raises(TryAgainError):
        _asking(dst, "EVALSHA", sha, 2, epoch, new, "7", "d")
    # redis-py follows that ASK by itself; a script object also reloads a script the
    # target does not have (NOSCRIPT there: SCRIPT LOAD on every primary, EVALSHA again).
    dst.script_flush()
    redirects.counts.clear()
    assert fence(keys=[epoch, old], args=["7", "e"]) == 1
    assert redirects.counts["ASK"] >= 1
    # Now the retries go source (ASK), target after ASKING (TRYAGAIN), target without
    # ASKING (MOVED back to the source): a third of the 16 attempts are TRYAGAIN.
    redirects.counts.clear()
    started = time.monotonic()
    with pytest.raises(ClusterError, match="TTL exhausted"):
        fence(keys=[epoch, new], args=["7", "e"])
    gave_up_after_ask = time.monotonic() - started
    cycle = dict(redirects.counts)
    assert sum(cycle.values()) == redis.cluster.RedisCluster.RedisClusterRequestTTL

    # Finish the migration (`other` still on the source): the script succeeds.
    _command(src, "MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", other)
    ids = cluster.node_ids()
    for port in (target, *cluster.ports):
        with cluster.client(port) as node:
            _command(node, "CLUSTER", "SETSLOT", slot, "NODE", ids[target])
    cluster.wait_stable()
    assert fence(keys=[epoch, new], args=["7", "f"]) == 1
    assert sync_client.mget([old, new, other]) == ["e", "f", "other"]
    assert cluster.slot_owner(slot) == target
    print(
        f"a stuck slot: redis-py gave up after {gave_up_after:.2f} s (TRYAGAIN from the "
        f"source), {gave_up_after_ask:.2f} s (keys moved: {cycle})"
    )
    src.close()
    dst.close()
    sync_client.close()
