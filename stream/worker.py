"""`intent worker`: one stream worker against the configured Kafka and Redis."""

from __future__ import annotations

import asyncio
import logging

import faust
import redis
import redis.asyncio as aioredis

from stream.agents import Pipeline
from stream.app import create_app
from stream.metrics import default_metrics, serve
from stream.rulesfile import load_ruleset
from stream.settings import Settings
from stream.topics import ensure_topics

log = logging.getLogger(__name__)


def build(settings: Settings) -> tuple[faust.App, Pipeline]:
    rules = load_ruleset(settings)
    app = create_app(settings)
    return app, Pipeline(app, settings, default_metrics(), rules, redis_client(settings))


def redis_client(settings: Settings) -> aioredis.Redis:
    """The pipeline's client. No per-reply socket timeout: every Redis step of the
    pipeline runs under one deadline of its own (`stream.agents.REDIS_STEP_SECONDS`),
    which costs one timer per round trip instead of one per reply (a batch pipelines
    thousands of commands; the per-reply timers were 4.5 % of the hot path)."""
    return aioredis.Redis.from_url(settings.redis_url.get_secret_value(), socket_timeout=None)


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
    ensure_topics(settings)
    if settings.metrics_port:
        probe = redis.Redis.from_url(
            settings.redis_url.get_secret_value(), socket_timeout=1, socket_connect_timeout=1
        )

        def ready() -> bool:
            try:
                return pipeline.ready() and bool(probe.ping())
            except Exception:
                return False

        serve(pipeline.metrics, settings.metrics_port, ready)
    faust_worker(app, loglevel).execute_from_commandline()


def faust_worker(app: faust.App, loglevel: str) -> faust.Worker:
    """Faust's worker, without its terminal spinner: at --loglevel warning or above,
    Faust feeds the spinner by setting the root logger to DEBUG, and every library's
    debug call then builds a log record (aiokafka logs per request: ~6 % of the worker's
    py-spy samples at 1k events/s).

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
