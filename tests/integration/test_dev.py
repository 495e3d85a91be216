"""`intent dev` as a user runs it: events flow, Ctrl-C stops every process it started."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import pytest
from pydantic_core import PydanticSerializationError

from schemas.events import Event
from stream.core.ingest import ingest_limits
from stream.devstack import dev
from stream.settings import Settings

START_BUDGET_SECONDS = 60  # the promise: events visible within 60 s of a cold start


def _port_open(hostport: str) -> bool:
    host, port = hostport.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


def test_dev_runs_the_stack_and_stops_everything(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTENT_")}
    env["INTENT_RUN_DIR"] = str(tmp_path / "run")
    env["INTENT_DATA_DIR"] = str(tmp_path / "data")
    env["INTENT_METRICS_PORT"] = "0"
    env["INTENT_WEB_PORT"] = "0"
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream", "dev", "--print-env", "--rate", "50"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")))  # type: ignore[union-attr]
    reader.start()
    try:
        deadline = time.monotonic() + START_BUDGET_SECONDS
        while time.monotonic() < deadline and sum("#" in line for line in lines) < 20:
            assert proc.poll() is None, proc.stderr.read()  # type: ignore[union-attr]
            time.sleep(0.2)
        exports = dict(
            line.removeprefix("export ").strip().split("=", 1)
            for line in lines
            if line.startswith("export ")
        )
        assert set(exports) == {"INTENT_KAFKA_BOOTSTRAP", "INTENT_REDIS_URL"}
        assert lines[0].startswith("export "), "--print-env output must come first"
        events = [line for line in lines if "#" in line]
        assert len(events) >= 20, f"no events flowing within {START_BUDGET_SECONDS} s: {lines}"
        assert _port_open(exports["INTENT_KAFKA_BOOTSTRAP"])
        redis_hostport = exports["INTENT_REDIS_URL"].removeprefix("redis://").rsplit("/", 1)[0]
        assert _port_open(redis_hostport)
        worker_log = tmp_path / "run" / "worker.log"
        assert worker_log.exists()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        reader.join(timeout=5)
    stderr = proc.stderr.read()  # type: ignore[union-attr]
    assert proc.returncode == 0, stderr
    assert "stopped." in stderr
    # Nothing left behind: the broker, Redis and worker are gone.
    assert not _port_open(exports["INTENT_KAFKA_BOOTSTRAP"])
    assert not _port_open(redis_hostport)
    assert "Closing event loop" in worker_log.read_text() or "Stopping" in worker_log.read_text()


def test_dev_uses_given_servers_and_starts_none(tmp_path: Path, servers: object) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTENT_")}
    env.update(
        INTENT_KAFKA_BOOTSTRAP=servers.kafka_bootstrap,  # type: ignore[attr-defined]
        INTENT_REDIS_URL=servers.redis_url,  # type: ignore[attr-defined]
        INTENT_RUN_DIR=str(tmp_path / "run"),
        INTENT_METRICS_PORT="0",
        INTENT_APP_ID=f"dev-given-{os.getpid()}",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream", "dev", "--no-demo", "--no-worker"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    time.sleep(4)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert f"using Kafka at {servers.kafka_bootstrap}" in out  # type: ignore[attr-defined]
    assert "embedded stack up" not in out
    assert not (tmp_path / "run" / "tansu.log").exists()


class FakeRecord(NamedTuple):
    topic: str
    partition: int
    offset: int
    value: bytes | None


def test_the_console_prints_an_unreadable_record_and_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bad bytes, a lone surrogate, a field missing, no value, a serialiser that raises:
    each record is printed as unreadable (topic, partition, offset, a preview), and the
    good record after them is still printed."""
    settings = Settings()
    now = datetime.now(UTC).isoformat()

    def canonical(shopper: str, name: str = "USB-C cable") -> bytes:
        return json.dumps(
            {"shopper_id": shopper, "type": "product_view", "ts": now,
             "product": {"sku": "CBL-1", "name": name}}
        ).encode()  # fmt: skip

    change = {
        "shopper_id": "x\ud800y", "at": now, "from_tier": "none", "to_tier": "mid",
        "score": 20.0, "reason": "signal", "signals": [{"name": "checkout_started", "points": 20}],
    }  # fmt: skip
    to_json = Event.to_json

    def raising(event: Event) -> bytes:
        if event.shopper_id == "s-serialiser":
            raise PydanticSerializationError("Error serializing to JSON: surrogates not allowed")
        return to_json(event)

    monkeypatch.setattr(Event, "to_json", raising)
    clicks, changes = settings.topic_clickstream, settings.topic_tier_changes
    records = [
        FakeRecord(changes, 3, 10, b"\xff\xfe not UTF-8 " + b"x" * 100),
        FakeRecord(changes, 3, 11, json.dumps(change).encode()),  # "\ud800": a lone surrogate
        FakeRecord(settings.topic_signals, 0, 7, b"{}"),
        FakeRecord(settings.topic_dead_letter, 1, 2, None),
        FakeRecord(clicks, 5, 40, canonical("s-serialiser")),
        FakeRecord(clicks, 5, 41, b"\xff\xfe"),  # not an event: the worker dead-letters it
        FakeRecord(clicks, 5, 42, canonical("s-named", "x\ud800y")),
        FakeRecord(clicks, 6, 43, canonical("s-good")),
    ]
    # strict UTF-8, as a terminal's: a lone surrogate cannot be written
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict", write_through=True)
    counts = {"valid": 0, "rejected": 0}
    for record in records:
        dev.show(settings, ingest_limits(settings), record, counts, out)
    lines = out.buffer.getvalue().decode().splitlines()  # type: ignore[attr-defined]

    unreadable = [line.split()[1] for line in lines if line.startswith("  unreadable ")]
    assert unreadable[:5] == [
        f"{changes}[3]@10:", f"{changes}[3]@11:", f"{settings.topic_signals}[0]@7:",
        f"{settings.topic_dead_letter}[1]@2:", f"{clicks}[5]@40:",
    ]  # fmt: skip
    assert "UnicodeDecodeError" in lines[0] and "b'\\xff\\xfe not UTF-8 xx" in lines[0]
    assert lines[0].endswith("...")  # the preview is cut short
    assert "UnicodeEncodeError" in lines[1]
    assert "KeyError" in lines[2]
    assert "no value" in lines[3]
    assert "PydanticSerializationError" in lines[4]
    # the event named with a lone surrogate: printed, or unreadable, but one line
    assert len(lines) == 7
    assert "s-good" in lines[-1] and "product_view" in lines[-1]
    assert counts["unreadable"] == len(unreadable) >= 5
