"""Redis steps, retried as their error deserves.

- **Connection errors** (refused, reset, timed out, loading, a failover's read-only or
  master-down): retried until they succeed, with a backoff capped at RETRY_MAX_SECONDS.
  An outage delays input, never drops it, and the worker resumes within that cap of
  Redis coming back.
- **Redis refuses the work** (out of memory, no permission, a failed AUTH, writes refused
  after a failed snapshot), whether by reply or from inside the fence script: retried for
  UNUSABLE_SECONDS, in case memory frees up or the ACL is fixed; then `RedisUnusable`,
  and the worker stops with that message (its batch uncommitted, so nothing is lost).
- **Any other error reply** (a script error, WRONGTYPE: a key the worker did not write):
  tried STEP_TRIES times, then `RedisGaveUp`: a batch stage that gives up dead-letters
  its records as `processing_error`; a write that gives up stops the worker, its batch
  uncommitted (the fenced write leaves the records as they were: `records.Fence`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stream.metrics import Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_MAX_SECONDS: Final = 2.0  # the longest wait between two tries
REDIS_STEP_SECONDS: Final = 10.0  # deadline of one Redis step (a round trip); then retried
UNUSABLE_SECONDS: Final = 30.0  # how long Redis may refuse the work before the worker stops
STEP_TRIES: Final = 3  # tries of a step whose error reply is neither of the above

# Checked first: redis-py's AuthenticationError is a ConnectionError.
UNUSABLE: Final = (OutOfMemoryError, NoPermissionError, AuthenticationError, AuthorizationError)
TRANSIENT: Final = (
    RedisConnectionError,
    RedisTimeoutError,
    BusyLoadingError,
    ReadOnlyError,
    MasterDownError,
    TryAgainError,
    ClusterDownError,
)


# The same refusals, raised inside the fence script: Redis reports them as the script's
# error ("Error running script ... -OOM command not allowed ..."), a plain ResponseError.
UNUSABLE_REPLIES: Final = ("-OOM ", "OOM command not allowed", "NOPERM", "NOAUTH", "MISCONF")
# "TTL exhausted": redis-py's cluster client gave up following a slot that is still
# migrating (TRYAGAIN, ASK) after its own 16 tries; the migration ends, so it is retried.
TRANSIENT_REPLIES: Final = (
    "READONLY", "MASTERDOWN", "LOADING", "TRYAGAIN", "CLUSTERDOWN", "TTL exhausted"
)  # fmt: skip


def error_kind(exc: RedisError) -> str:
    """`unusable`, `transient` or `other`: how a Redis error is retried."""
    if isinstance(exc, UNUSABLE):
        return "unusable"
    if isinstance(exc, TRANSIENT):
        return "transient"
    text = str(exc)
    if any(reply in text for reply in UNUSABLE_REPLIES):
        return "unusable"
    if any(reply in text for reply in TRANSIENT_REPLIES):
        return "transient"
    return "other"


class RedisGaveUp(Exception):
    """A step failed STEP_TRIES times with an error reply that retrying does not heal."""

    def __init__(self, what: str, error: Exception, tries: int) -> None:
        super().__init__(f"Redis step {what!r} failed {tries} times: {error}")
        self.what = what
        self.error = error


class RedisUnusable(Exception):
    """Redis refused the work (out of memory, no permission, a failed AUTH) for
    UNUSABLE_SECONDS: the worker stops with this message."""

    def __init__(self, what: str, error: Exception, seconds: float) -> None:
        super().__init__(
            f"Redis refused step {what!r} for {seconds:.0f} s: {type(error).__name__}: {error}. "
            "The worker stops; its batch was not committed and is read again after a restart."
        )
        self.what = what
        self.error = error


class RedisRetry:
    """`await retry("stage", step, *args)`: run a Redis step, retried as its error
    deserves (module docstring), with its latency and errors counted by stage. A step
    that takes longer than REDIS_STEP_SECONDS is cancelled (redis-py drops the
    connection it was reading) and run again: every step the worker runs is idempotent."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def __call__(self, what: str, step: Callable[..., Awaitable[T]], *args: Any) -> T:
        return await self.run(what, step, *args)

    async def run(
        self, what: str, step: Callable[..., Awaitable[T]], *args: Any, tries: int = STEP_TRIES
    ) -> T:
        delay = 0.1
        failed = 0
        refused_since: float | None = None
        latency = self.metrics.redis_seconds.labels(what)
        while True:
            try:
                started = time.perf_counter()
                async with asyncio.timeout(REDIS_STEP_SECONDS):
                    result = await step(*args)
                latency.observe(time.perf_counter() - started)
                return result
            except RedisError as exc:
                kind = error_kind(exc)
                self.metrics.redis_errors.labels(what).inc()
                if kind == "transient":
                    log.warning("%s: Redis error (%s); retrying in %.1f s", what, exc, delay)
                elif kind == "other":
                    failed += 1
                    if failed >= tries:
                        raise RedisGaveUp(what, exc, failed) from exc
                    log.warning("%s: Redis error (%s); trying again in %.1f s", what, exc, delay)
                else:
                    now = time.monotonic()
                    refused_since = now if refused_since is None else refused_since
                    if now - refused_since >= UNUSABLE_SECONDS:
                        raise RedisUnusable(what, exc, now - refused_since) from exc
                    log.error("%s: Redis refused (%s); retrying in %.1f s", what, exc, delay)
            except OSError as exc:  # includes TimeoutError (REDIS_STEP_SECONDS)
                self.metrics.redis_errors.labels(what).inc()
                log.warning("%s: Redis error (%s); retrying in %.1f s", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)
