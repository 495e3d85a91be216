"""A real Prometheus scrapes a real worker; every dashboard panel's query returns data.
Also promtool's checks of the config, the alert rules and their unit tests.

Prometheus comes from Debian's package (`.ci/run` installs it). Where it is missing these
tests fail under CI and skip elsewhere, saying how to install it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from stream.devstack.demo import traffic
from stream.devstack.embedded import free_port, spawn, stop_process
from stream.settings import Settings
from stream.topics import ensure_topics
from tests.integration.conftest import wait_for
from tests.integration.kafka_io import produce
from tests.integration.test_ingest_pipeline import mixed_records
from tests.scenarios import scenarios
from tests.unit.test_deploy import panel_exprs

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"


def binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    message = f"{name} is not installed: `apt-get install prometheus` (Debian) provides it"
    if os.environ.get("CI"):
        pytest.fail(message + "; .ci/run should have installed it")
    pytest.skip(message)


@pytest.mark.parametrize(
    "args",
    [["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"],
     ["test", "rules", "alerts_test.yml"]],
    ids=["check-config", "check-rules", "test-rules"],
)  # fmt: skip
def test_promtool(args: list[str]) -> None:
    done = subprocess.run([binary("promtool"), *args], cwd=PROMETHEUS_DIR, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.read()


def _live_traffic(settings: Settings, stop: threading.Event) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=5)
    t0 = time.monotonic()
    for at, key, value in traffic(40.0, datetime.now(UTC), seed=3):
        if stop.wait(max(0.0, t0 + at - time.monotonic())):
            break
        producer.send(settings.topic_clickstream, key=key, value=value)
    producer.close(timeout=2)


def test_every_panel_query_returns_data(
    settings: Settings, start_worker: Any, tmp_path: Path
) -> None:
    prometheus = binary("prometheus")
    ensure_topics(settings)
    cases = scenarios(prefix="obs-", start=datetime.now(UTC) - timedelta(days=3))
    bodies = [b for c in cases for b in c.events]
    produce(settings.kafka_bootstrap, settings.topic_clickstream,
            [(b["shopper_id"].encode(), json.dumps(b).encode()) for b in bodies])  # fmt: skip
    produce(
        settings.kafka_bootstrap, settings.topic_clickstream, mixed_records(datetime.now(UTC))[0]
    )
    start_worker()
    metrics = f"http://127.0.0.1:{settings.metrics_port}"
    wait_for(lambda: _ok(metrics + "/ready"), 60, "the worker to be ready")
    assert _get(metrics + "/healthz")[0] == 200

    stop = threading.Event()
    feeder = threading.Thread(target=_live_traffic, args=(settings, stop), daemon=True)
    feeder.start()
    port = free_port()
    config = tmp_path / "prometheus.yml"
    target = f"127.0.0.1:{settings.metrics_port}"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: intent-worker\n    static_configs: [{{targets: ['{target}']}}]\n"
    )
    argv = [
        prometheus,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    proc = spawn(argv, tmp_path / "prometheus.log")
    api = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ok(api + "/-/ready"), 60, "Prometheus to be ready")
        exprs = panel_exprs()
        missing: list[str] = []

        def all_return_data() -> bool:
            missing[:] = [f"{name} panel {pid}: {expr}" for name, pid, expr in exprs
                          if not _has_data(api, expr)]  # fmt: skip
            return not missing

        try:
            wait_for(all_return_data, 120, "every panel query to return data", step=2)
        except AssertionError:
            raise AssertionError("panels without data:\n" + "\n".join(missing)) from None
    finally:
        stop.set()
        stop_process(proc)
        feeder.join(timeout=5)


def _ok(url: str) -> bool:
    try:
        return _get(url)[0] == 200
    except OSError:
        return False


def _has_data(api: str, expr: str) -> bool:
    try:
        _, body = _get(f"{api}/api/v1/query?query={urllib.parse.quote(expr)}")
    except OSError:
        return False
    result = json.loads(body)["data"]["result"]
    values = [float(r["value"][1]) for r in result]
    return any(not math.isnan(v) for v in values)
