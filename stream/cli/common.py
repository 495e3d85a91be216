"""What the commands share: settings, plurals, Redis and file errors in one line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from stream.errors import IntentError
from stream.settings import Settings, get_settings, redis_hint, url_without_credentials


def _n(count: int, noun: str) -> str:
    """`1 tier change`, `2 tier changes`."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def follow_position(bar: Any) -> Callable[[int], None]:
    """A progress callback that takes a position (bytes read so far) and moves `bar` by
    what was read since the last call."""
    done = 0

    def advance(position: int) -> None:
        nonlocal done
        bar.update(position - done)
        done = position

    return advance


def _settings() -> Settings:
    try:
        return get_settings()
    except ValidationError as exc:
        raise click.ClickException(f"bad INTENT_ setting: {settings_problems(exc)}") from exc


def settings_problems(exc: ValidationError) -> str:
    """What is wrong with the INTENT_ settings, by variable, without the values given
    (pydantic's own message repeats them all, secrets included)."""
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        message = error["msg"].removeprefix("Value error, ")
        names = [f"INTENT_{str(part).upper()}" for part in error["loc"]]
        problems.append(f"{', '.join(names)}: {message}" if names else message)
    return "; ".join(problems)


class Group(click.Group):
    """Turns the processor's own errors into a one-line message and exit code 1."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except IntentError as exc:
            raise click.ClickException(str(exc)) from exc


def _redis(settings: Settings) -> Any:
    """A client of the configured Redis, or of its cluster if it is a cluster node."""
    from stream.state.connection import open_client

    return open_client(settings.redis_url.get_secret_value(), settings.redis_options())


def _where(url: str) -> str:
    """A Redis URL without its user and password."""
    return url_without_credentials(url)


def _redis_down(url: str, exc: Exception) -> click.ClickException:
    hint = redis_hint(exc)
    if hint:  # it answered, and turned us away
        return click.ClickException(f"Redis at {_where(url)} refused the connection ({exc}){hint}")
    return click.ClickException(
        f"Redis at {_where(url)} did not answer ({exc}); is it up? "
        "(`intent dev --print-env` shows the embedded one)"
    )


def _run_redis(settings: Settings, run: Any, coro: Any) -> Any:
    from redis.exceptions import RedisError

    try:
        return run(coro)
    except (RedisError, OSError) as exc:
        raise _redis_down(settings.redis_url.get_secret_value(), exc) from exc


def _ping(url: str) -> None:
    """Fail at once, naming the server, when the Redis at `url` does not answer."""
    import redis
    from redis.exceptions import RedisError

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
        with client:
            client.ping()
    except (RedisError, ValueError) as exc:
        raise _redis_down(url, exc) from exc


def _writable(folder: Path) -> None:
    """Make `folder` if need be, and check a file can be written in it."""
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise click.ClickException(_os_error(exc, folder)) from exc


def _os_error(exc: OSError, path: Path | None = None, doing: str = "cannot write") -> str:
    """A file-system error in one line: what failed, on which file, and what to do."""
    import errno

    where = exc.filename if exc.filename is not None else path
    message = f"{doing} {where}: {exc.strerror or exc}" if where else f"{doing}: {exc}"
    if exc.errno == errno.ENOSPC:
        message += " (shards and part files go to the temporary folder: set TMPDIR to move it)"
    return message
