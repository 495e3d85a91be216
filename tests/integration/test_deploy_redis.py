"""The Redis of docker-compose.yml and deploy/k8s/redis.yaml, run for real: redis-server
takes their flags as written (a misspelt flag or value would stop it), and keeps an
append-only file fsynced every second, without eviction; the Kubernetes readiness probe
and the worker's URL work against it. Only the data folder, the port and the password
are this test's own. tests/unit/test_deploy.py checks what the files say; this checks
that Redis agrees."""

from __future__ import annotations

import asyncio
import re
import secrets
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
import yaml

from stream.devstack import embedded
from stream.settings import Settings
from stream.state.records import PartitionWrite, encode
from stream.state.store import StateReader, partition_of
from stream.worker.main import redis_client
from stream.worker.owner import Owner

ROOT = Path(__file__).resolve().parents[2]


def _compose_argv() -> list[str]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    argv: list[str] = compose["services"]["redis"]["command"]
    return argv[1:]  # after "redis-server"


def _k8s() -> dict[str, dict[str, Any]]:
    docs = {}
    for name in ("redis.yaml", "deployment.yaml"):
        for doc in yaml.safe_load_all((ROOT / "deploy" / "k8s" / name).read_text()):
            docs[doc["kind"]] = doc
    return docs


def _container(doc: dict[str, Any]) -> dict[str, Any]:
    (container,) = doc["spec"]["template"]["spec"]["containers"]
    return container


def _expand(text: str, env: dict[str, str]) -> str:
    """What the kubelet does to $(NAME) in a container's args and env values."""
    return re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], text)


def _run(args: list[str], tmp_path: Path, password: str | None = None) -> embedded.Server:
    flags = list(args)
    flags[flags.index("--dir") + 1] = str(tmp_path / "data")  # the volume's mount
    (tmp_path / "data").mkdir()
    port = embedded.free_port()
    server = embedded.Server(
        name="redis",
        port=port,
        argv=[str(embedded.redis_binary()), *flags, "--port", str(port), "--bind", "127.0.0.1"],
        log_path=tmp_path / "redis.log",
        ready=embedded.tcp_answers,  # a PING without the password gets NOAUTH
    )
    server.start()
    return server


@pytest.fixture
def password() -> str:
    return secrets.token_hex(32)  # as `openssl rand -hex 32` in deploy/k8s/README.md


@pytest.fixture
def k8s_redis(tmp_path: Path, password: str) -> Iterator[embedded.Server]:
    args = _container(_k8s()["StatefulSet"])["args"]
    server = _run([_expand(a, {"REDIS_PASSWORD": password}) for a in args], tmp_path)
    yield server
    server.stop()


def _check_durable(client: redis.Redis) -> None:
    config = client.config_get("*")
    assert config["appendonly"] == "yes"
    assert config["appendfsync"] == "everysec"
    assert config["maxmemory-policy"] == "noeviction"
    assert config["save"] == ""
    assert client.info("persistence")["aof_enabled"] == 1
    assert client.set("k", "v") and client.get("k") == "v"


def test_the_compose_redis_takes_its_flags(tmp_path: Path) -> None:
    server = _run(_compose_argv(), tmp_path)
    try:
        client = redis.Redis(port=server.port, decode_responses=True)
        _check_durable(client)
        assert any((tmp_path / "data").iterdir()), "no append-only file in the volume"
        client.close()
    finally:
        server.stop()


def test_the_k8s_redis_takes_its_flags_and_wants_the_password(
    k8s_redis: embedded.Server, password: str, tmp_path: Path
) -> None:
    with socket.create_connection(("127.0.0.1", k8s_redis.port), timeout=5) as sock:
        sock.sendall(b"PING\r\n")
        assert sock.recv(64).startswith(b"-NOAUTH")
    client = redis.Redis(port=k8s_redis.port, password=password, decode_responses=True)
    _check_durable(client)
    maxmemory = int(client.config_get("maxmemory")["maxmemory"])
    assert maxmemory == 1536 * 2**20
    assert any((tmp_path / "data").iterdir()), "no append-only file in the volume"
    client.close()


def _probe(port: int, auth: str | None) -> int:
    """The StatefulSet's readiness probe, run against a test port (redis-cli takes no port
    from the environment, so `-p` is added); its exit status."""
    (shell, flag, script) = _container(_k8s()["StatefulSet"])["readinessProbe"]["exec"]["command"]
    cli = embedded.redis_binary().parent / "redis-cli"
    script = script.replace("redis-cli ", f"{cli} -p {port} ", 1)
    env = {"PATH": "/usr/bin:/bin"} | ({"REDISCLI_AUTH": auth} if auth is not None else {})
    return subprocess.run([shell, flag, script], env=env, timeout=10).returncode


def test_the_k8s_readiness_probe_passes_only_with_the_password(
    k8s_redis: embedded.Server, password: str
) -> None:
    assert _probe(k8s_redis.port, password) == 0
    assert _probe(k8s_redis.port, "wrong") != 0
    assert _probe(k8s_redis.port, None) != 0
    port = k8s_redis.port
    k8s_redis.stop()
    assert _probe(port, password) != 0


def test_the_workers_url_reaches_the_k8s_redis(k8s_redis: embedded.Server, password: str) -> None:
    env = {item["name"]: item for item in _container(_k8s()["Deployment"])["env"]}
    url = _expand(env["INTENT_REDIS_URL"]["value"], {"REDIS_PASSWORD": password})
    # The Service's name resolves in the cluster only; the rest of the URL is as written.
    local = url.replace("@intent-redis-0.intent-redis:6379/", f"@127.0.0.1:{k8s_redis.port}/")
    assert local != url
    asyncio.run(_write_through_the_workers_client(Settings(redis_url=local, app_id="deploy")))


async def _write_through_the_workers_client(settings: Settings) -> None:
    """What the worker does with its URL: ask the server whether it is a cluster node
    (it is not: one client for one server), take a partition's epoch, write a record
    with the fence script and read it back."""
    client = redis_client(settings)
    try:
        assert isinstance(client, aioredis.Redis)
        assert await client.ping() is True
        owner = Owner(client, settings.app_id, 10)
        shopper = "deploy-shopper"
        partition = partition_of(shopper, settings.partitions)
        assert await owner.take([partition]) == [partition]  # a new deployment's
        record = owner.fresh()
        write = PartitionWrite(records={shopper: (encode(record), 60_000)})
        assert await owner.write({partition: write}) == 1
        reader = StateReader(client, settings.app_id, settings.partitions)
        assert await reader.record(shopper) == record
    finally:
        await client.aclose()
