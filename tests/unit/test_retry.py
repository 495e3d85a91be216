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
    slept: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = iter(float(n) for n in range(1000))
    monkeypatch.setattr(retry_module.time, "monotonic", lambda: next(clock))
    retry = RedisRetry(Metrics(CollectorRegistry()))
    step = _failing([OutOfMemoryError("OOM command not allowed")] * 1000)
    with pytest.raises(RedisUnusable, match="OOM command not allowed.*The worker stops"):
        asyncio.run(retry("score", step))
    assert len(step.calls) == retry_module.UNUSABLE_SECONDS + 1  # a second a try here


def test_each_runs_item_by_item_when_the_batch_gives_up(slept: list[float]) -> None:
    """One item's keys are broken: the batch fails, then each item runs alone, once; only
    the broken one is reported, and the others' results come back."""
    retry = RedisRetry(Metrics(CollectorRegistry()))
    calls: list[list[str]] = []

    async def step(items: dict[str, int]) -> dict[str, int]:
        calls.append(list(items))
        if "bad" in items:
            raise ResponseError("WRONGTYPE Operation against a key")
        return {k: v * 10 for k, v in items.items()}

    failed: list[tuple[str, str]] = []
    got = asyncio.run(
        retry.each(
            "score", step, {"a": 1, "bad": 2, "c": 3}, failed=lambda k, e: failed.append((k, str(e)))
        )
    )
    assert got == {"a": 10, "c": 30}
    assert [k for k, _ in failed] == ["bad"] and "WRONGTYPE" in failed[0][1]
    assert calls == [["a", "bad", "c"]] * STEP_TRIES + [["a"], ["bad"], ["c"]]
