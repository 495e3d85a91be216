"""Fixtures of the fault suite: its own broker behind a proxy (for the whole session),
its own Redis per test (killed and started again by the test), and `fault_run`, which
builds a `FaultRun` on them. The integration fixtures `env`, `settings` and
`start_worker` work here too (the moved kill -9 test uses them), on this suite's broker
and a Redis of its own (`servers`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.harness import Broker, FaultRun, RedisBox, start_broker
from tests.integration.conftest import env, settings, start_worker
from tests.integration.servers import Servers

__all__ = ["env", "settings", "start_worker"]  # the integration fixtures, used here too


@pytest.fixture(scope="session")
def fault_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    broker = start_broker(tmp_path_factory.mktemp("fault-broker"))
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def servers(fault_broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    redis = RedisBox(tmp_path_factory.mktemp("fault-redis"))
    redis.start()
    try:
        yield Servers(fault_broker.bootstrap, redis.url, "embedded (fault suite)")
    finally:
        redis.stop()


@pytest.fixture
def redis_box(tmp_path: Path) -> Iterator[RedisBox]:
    box = RedisBox(tmp_path / "redis")
    box.start()
    try:
        yield box
    finally:
        box.stop()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


_FAILED = pytest.StashKey[bool]()


@pytest.fixture
def fault_run(
    fault_broker: Broker, redis_box: RedisBox, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., FaultRun]]:
    runs: list[FaultRun] = []

    def make(fault: str, **kwargs: Any) -> FaultRun:
        run = FaultRun(fault, fault_broker, redis_box, tmp_path, **kwargs)
        runs.append(run)
        return run

    yield make
    failed = request.node.stash.get(_FAILED, False)
    for run in runs:
        run.close()
        for index, worker in enumerate(run.workers):
            if failed or worker.proc.returncode not in (0, -15, None):
                print(f"--- worker {index} exited {worker.proc.returncode}; log tail:")
                print(worker.log_tail())
