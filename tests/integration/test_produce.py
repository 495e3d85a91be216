"""`intent produce` sends a file to the input topic; bad lines are reported, not fatal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from schemas.events import Event
from stream.devstack.produce import make_producer
from stream.offline.files import read_events
from stream.settings import Settings
from tests.conftest import REES46_EVENTS, REES46_TYPES
from tests.integration.kafka_io import Reader


def produce(path: Path, fmt: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream", "produce", str(path), "--format", fmt],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def test_produce_rees46_file(settings: Settings, env: dict[str, str], rees46_file: Path) -> None:
    sample = rees46_file
    done = produce(sample, "rees46", env)
    assert done.returncode == 0, done.stderr
    assert f"sent {REES46_EVENTS:,} events" in done.stdout
    assert "1 unreadable line (malformed_line: 1)" in done.stdout
    assert "expected 9 fields, got 8" in done.stderr  # the truncated last line, reported

    reader = Reader(settings.kafka_bootstrap, settings.topic_clickstream)
    try:
        records = reader.read_until(REES46_EVENTS, timeout=120, settle=1)[
            settings.topic_clickstream
        ]
    finally:
        reader.close()
    assert len(records) == REES46_EVENTS
    types = Counter(json.loads(r.value)["type"] for r in records)
    assert types == Counter(REES46_TYPES)
    assert all(r.key == json.loads(r.value)["shopper_id"].encode() for r in records)
    partitions = {r.partition for r in records}
    assert len(partitions) == settings.partitions  # topics were created with the setting
    # each shopper's events in the file's order (what `intent replay --order file` reads)
    sent: dict[str, list[str]] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        sent.setdefault(record.key.decode(), []).append(json.loads(record.value)["event_id"])
    in_file: dict[str, list[str]] = {}
    for item in read_events(sample, "rees46"):
        if isinstance(item, Event):
            in_file.setdefault(item.shopper_id, []).append(item.event_id)
    assert sent == in_file
    producer = make_producer(settings)  # and a batch sent again cannot overtake the next
    try:
        assert producer.config["max_in_flight_requests_per_connection"] == 1
        assert producer.config["compression_type"] is None  # INTENT_OUTPUT_COMPRESSION=none
    finally:
        producer.close()


def test_produce_unknown_file_fails_clearly(env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "events.jsonl"
    bad.write_text('{"shopper_id": "s-1", "type": "page_view", "ts": "2026-01-01T00:00:00Z"}\n')
    done = produce(bad, "parquet", env)
    assert done.returncode == 2
    assert "Invalid value for '--format'" in done.stderr


def test_produce_in_the_wrong_format_fails_and_names_the_right_one(
    env: dict[str, str], taobao_file: Path, tmp_path: Path
) -> None:
    """Not one line read (a Taobao export sent as REES46): exit 1, with the format the
    file's first lines do read as, instead of "sent 0 events" and success."""
    import gzip

    with gzip.open(taobao_file, "rt") as source:
        head = [next(source) for _ in range(30)]
    sample = tmp_path / "taobao_head.csv"
    sample.write_text("".join(head))
    done = produce(sample, "rees46", env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "sent 0 events" in done.stdout
    assert (
        "none of the 30 lines of taobao_head.csv could be read as --format rees46; "
        "its first lines read as: taobao"
    ) in done.stderr


def test_a_cut_short_gzip_file_fails_after_sending_what_it_could_read(
    settings: Settings, env: dict[str, str], rees46_file: Path, tmp_path: Path
) -> None:
    """A partial download: exit 1 naming the last line read, and the events before it
    are on the topic, as many as the message says (not lost in the producer's buffer)."""
    import zlib

    head = rees46_file.read_bytes()[:3000]
    lines = zlib.decompressobj(wbits=31).decompress(head).count(b"\n")
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(head)
    done = produce(cut, "rees46", env)
    assert done.returncode == 1, done.stdout + done.stderr
    sent = lines - 1  # the header
    assert (
        f"cannot read cut.csv.gz past line {lines:,}: the gzip data ends early (a cut-short "
        f"copy or download?); the {sent:,} events before that point were sent to "
        f"{settings.topic_clickstream}"
    ) in done.stderr

    reader = Reader(settings.kafka_bootstrap, settings.topic_clickstream)
    try:
        records = reader.read_until(sent + 1, timeout=30, settle=1)[settings.topic_clickstream]
    finally:
        reader.close()
    assert len(records) == sent
