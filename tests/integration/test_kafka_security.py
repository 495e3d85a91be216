"""Kafka over TLS, end to end: every client of ours connecting with
INTENT_KAFKA_SECURITY_PROTOCOL=SSL to a TLS endpoint with a test CA's certificate.

The embedded broker serves plaintext only (its `--cert` option is accepted and ignored:
a TLS client hangs in the handshake), so the endpoint is a TLS-terminating proxy in
front of it, which the broker advertises as its address: clients connect, verify the
certificate and speak Kafka through TLS, as they do to a managed Kafka.

`intent produce` creates the topics (admin client) and sends a file; a real worker reads
it and emits tier changes (its stream and Faust's clients); a TLS reader sees them. A
client that does not trust the CA is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trustme
from kafka import KafkaConsumer, TopicPartition

from stream.devstack.embedded import Server, free_port, tansu_binary, tcp_answers
from stream.errors import BrokerUnavailable
from stream.settings import Settings
from stream.topics import admin_client

SHOPPERS = 5


class TlsProxy:
    """Terminates TLS on one port and forwards the bytes to a plaintext port."""

    def __init__(self, port: int, target: int, pem: Path) -> None:
        self.port, self.target = port, target
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(str(pem))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> TlsProxy:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _serve(self) -> None:
        self.server = await asyncio.start_server(
            self._pipe, "127.0.0.1", self.port, ssl=self.context
        )

    async def _pipe(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            broker_r, broker_w = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            client_w.close()
            return

        async def copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await source.read(1 << 16):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(copy(client_r, broker_w), copy(broker_r, client_w))


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The embedded broker behind a TLS proxy whose certificate for 127.0.0.1 a fresh
    test CA signed: the proxy's address (the one the broker advertises), the CA file."""
    where = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(where / "ca.pem"))
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(where / "tls.pem"))
    port, tls_port = free_port(), free_port()
    server = Server(
        name="kafka (tansu, behind TLS)",
        port=port,
        argv=[
            str(tansu_binary()), "broker",
            "--listener-url", f"tcp://127.0.0.1:{port}",
            "--advertised-listener-url", f"tcp://127.0.0.1:{tls_port}",
            "--storage-engine", "memory://tansu/",
        ],
        log_path=where / "tansu.log",
        ready=tcp_answers,
    )  # fmt: skip
    server.start()
    try:
        with TlsProxy(tls_port, port, where / "tls.pem"):
            yield f"127.0.0.1:{tls_port}", where / "ca.pem"
    finally:
        server.stop()


def _tls_env(env: dict[str, str], tls_broker: tuple[str, Path]) -> dict[str, str]:
    bootstrap, ca = tls_broker
    env.update(
        INTENT_KAFKA_BOOTSTRAP=bootstrap,
        INTENT_KAFKA_SECURITY_PROTOCOL="SSL",
        INTENT_KAFKA_SSL_CAFILE=str(ca),
    )
    return env


def test_every_client_works_over_tls(
    env: dict[str, str],
    tls_broker: tuple[str, Path],
    start_worker: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _tls_env(env, tls_broker)  # start_worker runs with this same env
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    at = datetime.now(UTC) - timedelta(minutes=1)
    events = tmp_path / "checkouts.jsonl"
    events.write_text(
        "".join(
            json.dumps(
                {
                    "event_id": f"tls-{i}",
                    "shopper_id": f"tls-shopper-{i}",
                    "type": "checkout_started",
                    "ts": at.isoformat(),
                    "product": {"sku": "X", "category": "c"},
                }
            )
            + "\n"
            for i in range(SHOPPERS)
        )
    )
    produced = subprocess.run(
        [sys.executable, "-m", "stream", "produce", str(events), "--format", "canonical"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert produced.returncode == 0, produced.stderr
    start_worker()

    reader = KafkaConsumer(**settings.kafka_options(), enable_auto_commit=False)
    topic = settings.topic_tier_changes
    parts = [TopicPartition(topic, p) for p in sorted(reader.partitions_for_topic(topic) or [])]
    assert len(parts) == settings.partitions  # created by `intent produce`, over TLS
    reader.assign(parts)
    reader.seek_to_beginning()
    changed: set[str] = set()
    deadline = time.monotonic() + 90
    while len(changed) < SHOPPERS and time.monotonic() < deadline:
        for batch in reader.poll(timeout_ms=500).values():
            changed |= {json.loads(record.value)["shopper_id"] for record in batch}
    reader.close()
    assert changed == {f"tls-shopper-{i}" for i in range(SHOPPERS)}


def test_a_client_that_does_not_trust_the_ca_is_refused_and_told_what_to_check(
    tls_broker: tuple[str, Path], tmp_path: Path
) -> None:
    bootstrap, _ = tls_broker
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    settings = Settings(
        kafka_bootstrap=bootstrap, kafka_security_protocol="SSL", kafka_ssl_cafile=other
    )
    # (one attempt: kafka-python gives up on a bootstrap after 30 s)
    with pytest.raises(BrokerUnavailable, match="INTENT_KAFKA_SSL_CAFILE"):
        admin_client(settings, timeout=1)
