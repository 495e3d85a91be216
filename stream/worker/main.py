"""`intent worker`: one stream worker against the configured Kafka and Redis."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from typing import Final

import faust
import redis

from stream.metrics import default_metrics, serve
from stream.rulesfile import load_ruleset
from stream.settings import Settings, redis_hint, url_without_credentials
from stream.state.connection import Client, open_client
from stream.topics import ensure_topics
from stream.worker.app import create_app
from stream.worker.pipeline import Pipeline

log = logging.getLogger(__name__)

EXIT_CRASHED: Final = 70  # EX_SOFTWARE: the stream loop crashed (logged as critical)
CRASH_EXIT_SECONDS: Final = 30.0


def build(settings: Settings) -> tuple[faust.App, Pipeline]:
    rules = load_ruleset(settings)
    app = create_app(settings)
    check_redis(settings)
    return app, Pipeline(app, settings, default_metrics(), rules, redis_client(settings))


def redis_client(settings: Settings) -> Client:
    """The pipeline's client: a cluster client if the server is a Redis Cluster node
    (waiting for Redis to answer, to tell). No per-reply socket timeout: every Redis
    step of the pipeline runs under one deadline of its own
    (`stream.worker.retry.REDIS_STEP_SECONDS`), which costs one timer per round trip
    instead of one per reply (docs/performance.md has the cost)."""
    url = settings.redis_url.get_secret_value()
    return open_client(url, settings.redis_options(), wait=True, socket_timeout=None)


def check_redis(settings: Settings) -> None:
    """Stop the start, in one line naming what to fix, when Redis turns the worker away
    for its settings (a wrong password, a user without the permissions, a certificate
    that is not trusted): waiting would not heal that. A Redis that is down or not up yet
    is waited for as at any time (the stream loop retries)."""
    probe = redis.Redis.from_url(
        settings.redis_url.get_secret_value(),
        socket_timeout=5,
        socket_connect_timeout=5,
        **settings.redis_options(),
    )
    where = url_without_credentials(settings.redis_url.get_secret_value())
    try:
        with probe:
            probe.ping()
    except redis.RedisError as exc:
        hint = redis_hint(exc)
        if hint:
            raise SystemExit(f"Redis at {where} refused the worker ({exc}){hint}") from exc
        log.warning("Redis at %s does not answer yet (%s); waiting for it", where, exc)


def use_uvloop() -> None:
    """uvloop's event loop when it is installed (it is a dependency, except on Windows)."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Create the topics, then run the Faust worker until it is told to stop."""
    use_uvloop()
    app, pipeline = build(settings)  # rules first: a bad rules file fails before anything starts
    if settings.open_views:
        log.warning(
            "the HTTP views serve shopper profiles without a token on %s:%d "
            "(INTENT_ALLOW_OPEN_VIEWS); set INTENT_API_TOKEN to require one",
            settings.web_host,
            settings.web_port,
        )
    ensure_topics(settings)
    if settings.metrics_port:
        probe = redis.Redis.from_url(
            settings.redis_url.get_secret_value(),
            socket_timeout=1,
            socket_connect_timeout=1,
            **settings.redis_options(),
        )

        def ready() -> bool:
            try:
                return pipeline.ready() and bool(probe.ping())
            except Exception:
                return False

        serve(pipeline.metrics, settings.metrics_port, ready)
    pipeline.loop.on_crash = stop_on_crash
    try:
        faust_worker(app, loglevel).execute_from_commandline()
    except SystemExit as exc:
        if pipeline.loop.crash_reason is not None:
            raise SystemExit(EXIT_CRASHED) from exc
        raise


def stop_on_crash(reason: BaseException) -> None:
    """The stream loop crashed: stop the worker as a SIGTERM would (it leaves the
    group, so its partitions move on at once), and exit EXIT_CRASHED. If the stop
    itself hangs, the process ends after CRASH_EXIT_SECONDS all the same."""
    watchdog = threading.Timer(CRASH_EXIT_SECONDS, os._exit, (EXIT_CRASHED,))
    watchdog.daemon = True
    watchdog.start()
    os.kill(os.getpid(), signal.SIGTERM)


def faust_worker(app: faust.App, loglevel: str) -> faust.Worker:
    """Faust's worker, without its terminal spinner: at --loglevel warning or above,
    Faust feeds the spinner by setting the root logger to DEBUG, and every library's
    debug call then builds a log record (aiokafka logs per request: a measurable share of
    the worker's time, docs/performance.md).

    Faust creates its data directory without parents, so they are made here."""
    parent = app.conf.datadir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SystemExit(
            f"cannot create the data directory {parent} (INTENT_DATA_DIR): {exc}"
        ) from exc
    worker = faust.Worker(app, loglevel=loglevel, redirect_stdouts=False)
    worker.spinner = None
    return worker
