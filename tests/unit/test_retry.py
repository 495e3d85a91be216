"""How a Redis step is retried: connection errors until they heal (backoff capped),
refusals for a while then a stop, other error replies a few times then shopper by
shopper."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ResponseError

from stream.metrics import Metrics
from stream.worker import retry as retry_module
from stream.worker.retry import (
    RETRY_MAX_SECONDS,
    STEP_TRIES,
    RedisGaveUp,
    RedisRetry,
    RedisUnusable,
)


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(retry_module.asyncio, "sleep", sleep)
    return waits


def _failing(errors: list[Exception], result: Any = "ok") -> Any:
    calls: list[Any] = []

    async def step(*args: Any) -> Any:
        calls.append(args)
        if errors:
            raise errors.pop(0)
        return result

    step.calls = calls  # type: ignore[attr-defined]
    return step


def test_connection_errors_are_retried_until_they_heal_with_the_backoff_capped(
    slept: list[float],
) -> None:
    retry = RedisRetry(Metrics(CollectorRegistry()))
    step = _failing([RedisConnectionError("refused")] * 8)
    assert asyncio.run(retry("load", step)) == "ok"
    assert slept == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]
    assert max(slept) == RETRY_MAX_SECONDS


def test_an_error_reply_is_tried_a_few_times_then_given_up(slept: list[float]) -> None:
    retry = RedisRetry(Metrics(CollectorRegistry()))
    step = _failing([ResponseError("WRONGTYPE Operation against a key")] * 10)
    with pytest.raises(RedisGaveUp, match="WRONGTYPE") as raised:
        asyncio.run(retry("score", step))
    assert len(step.calls) == STEP_TRIES
    assert isinstance(raised.value.error, ResponseError)


def test_redis_refusing_the_work_stops_after_a_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [0.0]  # time moves only when the retry waits
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr(retry_module.asyncio, "sleep", sleep)
    monkeypatch.setattr(retry_module.time, "monotonic", lambda: clock[0])
    retry = RedisRetry(Metrics(CollectorRegistry()))
    step = _failing([OutOfMemoryError("OOM command not allowed")] * 1000)
    with pytest.raises(RedisUnusable, match=r"OOM command not allowed.*The worker stops"):
        asyncio.run(retry("score", step))
    # It gave up at the first try UNUSABLE_SECONDS after the first refusal, not sooner.
    assert sum(slept) >= retry_module.UNUSABLE_SECONDS > sum(slept) - slept[-1]
    assert len(step.calls) == len(slept) + 1


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (RedisConnectionError("Connection refused"), "transient"),
        (ResponseError("READONLY You can't write against a read only replica."), "transient"),
        (OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), "unusable"),
        # Refusals raised inside a script come back as the script's error.
        (
            ResponseError(
                "Error running script (call to f_bbf6): @user_script:222: @user_script: 222: "
                "-OOM command not allowed when used memory > 'maxmemory'."
            ),
            "unusable",
        ),
        (
            ResponseError("NOPERM User worker has no permissions to run the 'evalsha' command"),
            "unusable",
        ),
        (
            ResponseError(
                "MISCONF Redis is configured to save RDB snapshots, but it's currently "
                "unable to persist to disk."
            ),
            "unusable",
        ),
        (
            ResponseError(
                "Error running script (call to f_bbf6): @user_script:58: WRONGTYPE Operation "
                "against a key holding the wrong kind of value"
            ),
            "other",
        ),
    ],
)
def test_each_redis_error_is_retried_as_its_kind_deserves(error: Exception, kind: str) -> None:
    assert retry_module.error_kind(error) == kind  # type: ignore[arg-type]
