"""Every codec, both ways: gzip, snappy, lz4 and zstd batches from a librdkafka producer
become tier changes through a real worker; the worker writes its output with
INTENT_OUTPUT_COMPRESSION, which librdkafka and kafka-python both read; `intent produce`
compresses with the same setting; and `intent dev` prints compressed records.

How each batch was compressed is read from the broker raw (`stored_batches`), so a
client that silently sent uncompressed batches would fail these tests too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from stream.devstack.produce import produce_file
from stream.settings import Settings
from stream.topics import ensure_topics
from tests.integration.kafka_io import (
    CODECS,
    Reader,
    StoredBatch,
    missing_codecs,
    rd_read,
    stored_batches,
)

SHOPPERS = 5  # per codec: one group of shoppers for each


def track_calls(group: str, now: datetime) -> list[tuple[bytes, bytes]]:
    """Segment track calls: each shopper of the group views a product, then starts a
    checkout (a signal worth a tier change on its own)."""
    records = []
    for i in range(SHOPPERS):
        user = f"{group}-{i}"
        for n, (event, props) in enumerate(
            [
                ("Product Viewed", {"product_id": f"SKU-{i}", "category": "shoes", "price": 80}),
                ("Checkout Started", {"order_id": f"o-{user}", "value": 80, "currency": "EUR"}),
            ]
        ):
            body = {
                "type": "track", "event": event, "userId": user, "messageId": f"{user}-{n}",
                "timestamp": (now - timedelta(seconds=30 - 10 * n)).isoformat(),
                "properties": props,
            }  # fmt: skip
            records.append((user.encode(), json.dumps(body).encode()))
    return records


def rd_produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]], codec: str) -> None:
    """Send with librdkafka, compressed with `codec`; fail unless every record landed."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "compression.type": codec, "linger.ms": 20, "acks": 1}
    )
    failed: list[Any] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(err)

    for key, value in records:
        producer.produce(topic, key=key, value=value, on_delivery=delivered)
    assert producer.flush(30) == 0, "librdkafka did not deliver every record"
    assert not failed, failed


def shopper_of(value: bytes) -> str:
    """The shopper of a canonical record, or of a Segment call (its userId)."""
    data = json.loads(value)
    return str(data["shopper_id"] if "shopper_id" in data else data["userId"])


def codecs_by_group(batches: list[StoredBatch]) -> dict[str, set[str]]:
    """Group (the shopper id's prefix) -> the codecs of the batches its records were in."""
    out: dict[str, set[str]] = {}
    for batch in batches:
        for value in batch.values:
            assert value is not None
            out.setdefault(shopper_of(value).rsplit("-", 1)[0], set()).add(batch.codec)
    return out


def test_every_client_has_every_codec() -> None:
    assert missing_codecs() == []


@pytest.mark.parametrize("output", CODECS)
def test_a_worker_reads_every_codec_and_writes_with_the_one_set(
    output: str, settings: Settings, env: dict[str, str], start_worker: Any
) -> None:
    """Input: one group of shoppers per codec, from librdkafka. Output: a tier change for
    every shopper of every group, in batches compressed with `output`, read alike by
    kafka-python and librdkafka. Every event goes through intent.events, so the worker
    also reads its own compressed batches."""
    bootstrap, changes = settings.kafka_bootstrap, settings.topic_tier_changes
    now = datetime.now(UTC)
    ensure_topics(settings)
    for codec in CODECS:
        rd_produce(bootstrap, settings.topic_clickstream, track_calls(codec, now), codec)
    sent = stored_batches(bootstrap, settings.topic_clickstream)
    assert codecs_by_group(sent) == {codec: {codec} for codec in CODECS}
    assert sum(len(batch.values) for batch in sent) == len(CODECS) * SHOPPERS * 2

    env["INTENT_OUTPUT_COMPRESSION"] = output
    env["INTENT_ALWAYS_REPARTITION"] = "true"
    worker = start_worker()
    shoppers = {f"{codec}-{i}" for codec in CODECS for i in range(SHOPPERS)}
    reader = Reader(bootstrap, changes)
    try:
        reader.wait(
            lambda: {shopper_of(r.value) for r in reader.records[changes]} >= shoppers,
            60,
            "a tier change for every shopper of every codec's group",
        )
        read = reader.settle(0.5)[changes]
    finally:
        reader.close()
    assert worker.poll() is None, "the worker died"
    got = {shopper_of(r.value) for r in read}
    assert got == shoppers, f"no tier change for {sorted(shoppers - got)}"
    assert all(json.loads(r.value)["to_tier"] != "none" for r in read)

    # On the wire: every batch the worker wrote is compressed with the codec set.
    for topic in (
        settings.topic_normalised,
        settings.topic_signals,
        changes,
        settings.topic_retargeting,
    ):
        written = stored_batches(bootstrap, topic)
        assert written, f"the worker wrote nothing to {topic}"
        assert {batch.codec for batch in written} == {output}, topic
    # librdkafka reads what kafka-python read, byte for byte.
    values = sorted(r.value for r in read)
    messages = rd_read(bootstrap, changes, lambda m: len(m) >= len(values), 30)
    assert sorted(m.value() for m in messages) == values


def test_intent_produce_compresses_with_the_setting(
    settings: Settings, env: dict[str, str], tmp_path: Path
) -> None:
    """`intent produce` writes batches compressed with INTENT_OUTPUT_COMPRESSION: one
    file per codec (in process, as the command runs it; zstd also as a command), each
    read back by kafka-python and librdkafka."""
    now = datetime.now(UTC)
    files = {}
    for codec in [*CODECS, "cli"]:
        files[codec] = tmp_path / f"{codec}.jsonl"
        files[codec].write_bytes(b"\n".join(value for _, value in track_calls(codec, now)) + b"\n")
    for codec in CODECS:
        compressed = settings.model_copy(update={"output_compression": codec})
        report = produce_file(files[codec], "segment", compressed, show_progress=False)
        assert (report.sent, report.failed) == (SHOPPERS * 2, 0)
    done = subprocess.run(
        [sys.executable, "-m", "stream", "produce", str(files["cli"]), "--format", "segment"],
        env={**os.environ, **env, "INTENT_OUTPUT_COMPRESSION": "zstd"},
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    assert f"sent {SHOPPERS * 2:,} events" in done.stdout

    topic, total = settings.topic_clickstream, (len(CODECS) + 1) * SHOPPERS * 2
    stored = stored_batches(settings.kafka_bootstrap, topic)
    assert codecs_by_group(stored) == {**{codec: {codec} for codec in CODECS}, "cli": {"zstd"}}
    reader = Reader(settings.kafka_bootstrap, topic)
    try:
        read = reader.read_until(total, timeout=30, settle=0.5)[topic]
    finally:
        reader.close()
    values = sorted(r.value for r in read)
    assert len(values) == total
    messages = rd_read(settings.kafka_bootstrap, topic, lambda m: len(m) >= total, 30)
    assert sorted(m.value() for m in messages) == values


def test_intent_dev_prints_records_of_every_codec(
    settings: Settings, env: dict[str, str], tmp_path: Path
) -> None:
    """The console (kafka-python) reads input compressed with each codec: every event
    is printed, none unreadable."""
    now = datetime.now(UTC)
    ensure_topics(settings)
    for codec in CODECS:
        rd_produce(
            settings.kafka_bootstrap, settings.topic_clickstream, track_calls(codec, now), codec
        )
    total = len(CODECS) * SHOPPERS * 2
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream", "dev", "--no-demo", "--no-worker"],
        env={**os.environ, **env, "INTENT_METRICS_PORT": "0", "INTENT_WEB_PORT": "0"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")))  # type: ignore[union-attr]
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sum("#" in line for line in lines) < total:
            assert proc.poll() is None, "".join(lines)
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        reader.join(timeout=5)
    events = [line for line in lines if "#" in line]
    assert len(events) == total, "".join(lines)
    assert not [line for line in lines if "unreadable" in line]
    printed = {line.split()[1] for line in events}
    assert printed == {f"{codec}-{i}" for codec in CODECS for i in range(SHOPPERS)}
    assert proc.returncode == 0, "".join(lines)
