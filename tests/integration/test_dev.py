"""`intent dev` as a user runs it: events flow, Ctrl-C stops every process it started."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

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
