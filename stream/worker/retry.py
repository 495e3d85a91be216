"""Redis steps run until they succeed: an outage delays input, never drops it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

from redis.exceptions import RedisError

from stream.metrics import Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_MAX_SECONDS: Final = 30.0  # the longest wait between two tries
REDIS_STEP_SECONDS: Final = 10.0  # deadline of one Redis step (a round trip); then retried


class RedisRetry:
    """`await retry("stage", step, *args)`: run a Redis step until it succeeds, with its
    latency and errors counted by stage. A step that takes longer than
    REDIS_STEP_SECONDS is cancelled (redis-py drops the connection it was reading) and
    run again: every step the worker runs is idempotent."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def __call__(self, what: str, step: Callable[..., Awaitable[T]], *args: Any) -> T:
        delay = 0.1
        latency = self.metrics.redis_seconds.labels(what)
        while True:
            try:
                started = time.perf_counter()
                async with asyncio.timeout(REDIS_STEP_SECONDS):
                    result = await step(*args)
                latency.observe(time.perf_counter() - started)
                return result
            except (RedisError, OSError) as exc:  # OSError includes TimeoutError
                self.metrics.redis_errors.labels(what).inc()
                log.warning("%s: Redis error (%s); retrying in %.1f s", what, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
