"""A crash of the stream loop is never silent: the worker process stops and exits
non-zero (EXIT_CRASHED), so whatever runs it restarts it, and `/ready` is not 200 once
the loop is down. The fault is injected into a real worker process, with real topics."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from stream.devstack.embedded import spawn, stop_process
from stream.settings import Settings
from stream.topics import ensure_topics
from stream.worker.main import EXIT_CRASHED
from tests.integration.conftest import wait_for
from tests.integration.kafka_io import produce
from tests.scenarios import ev

# The worker, with its batch handling broken for records of one shopper: an exception
# no stage catches, as a bug in the loop itself would raise.
CRASHING_WORKER = """
import stream.worker.pipeline as agents
handle = agents.Pipeline.handle
async def broken(self, records):
    if any(r.key == b"crash-me" for r in records):
        raise RuntimeError("injected: a bug in the loop")
    await handle(self, records)
agents.Pipeline.handle = broken
from stream.cli import main
main(["worker"])
"""


def _status(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None  # not serving (yet, or any more)


def test_a_crashed_stream_loop_stops_the_worker_with_a_failure_code(
    settings: Settings, env: dict[str, str], tmp_path: Path
) -> None:
    ensure_topics(settings)
    log = tmp_path / "worker.log"
    proc = spawn([sys.executable, "-c", CRASHING_WORKER], log, env={**os.environ, **env})
    try:
        wait_for(lambda: _status(settings.metrics_port) == 200, 60, "the worker to be ready")
        body = ev("crash-me", 0, "product_view", sku="MUG", start=datetime.now(UTC))
        produce(settings.kafka_bootstrap, settings.topic_clickstream,
                [(b"crash-me", json.dumps(body).encode())])  # fmt: skip
        seen: list[int | None] = []
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            seen.append(_status(settings.metrics_port))
            time.sleep(0.05)
        assert proc.returncode == EXIT_CRASHED, log.read_text()[-3000:]
        down = next((i for i, status in enumerate(seen) if status != 200), len(seen))
        assert 200 not in seen[down:], seen  # once down, never ready again
        text = log.read_text()
        assert "the stream loop crashed" in text
        assert "injected: a bug in the loop" in text
    finally:
        stop_process(proc)
