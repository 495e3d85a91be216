"""Integration fixtures: real broker and Redis for the session, unique names per test,
and workers run as real `python -m stream worker` processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stream.devstack.embedded import free_port, spawn, stop_process
from stream.settings import Settings
from tests.integration.servers import Servers, test_servers
from tests.prometheus_text import parse_metrics

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    with test_servers(tmp_path_factory.mktemp("stack")) as found:
        yield found


@pytest.fixture
def env(servers: Servers, request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """INTENT_ environment for one test: its own topics, group and metrics port."""
    tag = f"{request.node.name[:30]}-{uuid.uuid4().hex[:8]}".replace("[", "-").replace("]", "")
    names = {
        name: f"{default}.{tag}"
        for name, default in Settings(kafka_bootstrap=servers.kafka_bootstrap).topic_names().items()
    }
    values = {
        "INTENT_KAFKA_BOOTSTRAP": servers.kafka_bootstrap,
        "INTENT_REDIS_URL": servers.redis_url,
        "INTENT_APP_ID": f"intent-{tag}",
        "INTENT_METRICS_PORT": str(free_port()),
        "INTENT_WEB_PORT": str(free_port()),
        "INTENT_RUN_DIR": str(tmp_path / "run"),
        "INTENT_DATA_DIR": str(tmp_path / "data"),
    }
    values.update({f"INTENT_{name.upper()}": topic for name, topic in names.items()})
    return values


@pytest.fixture
def settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()


@pytest.fixture
def start_worker(
    env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        log = tmp_path / f"worker-{len(started)}.log"
        proc = spawn([sys.executable, "-m", "stream", "worker"], log, env={**os.environ, **env})
        started.append(proc)
        return proc

    yield start
    for proc in started:
        stop_process(proc, grace=15)
    for index, proc in enumerate(started):
        if proc.returncode not in (0, -15, None):
            log = (tmp_path / f"worker-{index}.log").read_text(errors="replace")
            print(f"--- worker {index} exited {proc.returncode}; log tail:\n{log[-3000:]}")


@pytest.fixture
def harness(servers: Servers) -> Iterator[Any]:
    """A pipeline of its own on the test Redis, its sends kept (`test_isolation.Harness`)."""
    from tests.integration.test_isolation import Harness

    made = Harness(servers.redis_url)
    yield made
    made.close()


def wait_for(check: Callable[[], bool], timeout: float, what: str, step: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def scrape_metrics(port: int) -> dict[str, float]:
    """A worker's /metrics, sample name (with labels) -> value."""
    samples: dict[str, float] = {}

    def fetch() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                text = resp.read().decode()
        except OSError:
            return False
        samples.update(parse_metrics(text))
        return True

    wait_for(fetch, 10, "the worker's /metrics")
    return samples
