"""`intent worker`: one stream worker against the configured Kafka and Redis."""

from __future__ import annotations

import logging

import faust
from prometheus_client import start_http_server

from stream.agents import Pipeline
from stream.app import create_app
from stream.metrics import default_metrics
from stream.settings import Settings
from stream.topics import ensure_topics

log = logging.getLogger(__name__)


def build(settings: Settings) -> tuple[faust.App, Pipeline]:
    app = create_app(settings)
    return app, Pipeline(app, settings, default_metrics())


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Create the topics, then run the Faust worker until it is told to stop."""
    ensure_topics(settings)
    app, _ = build(settings)
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr="0.0.0.0")
    worker = faust.Worker(app, loglevel=loglevel, redirect_stdouts=False)
    worker.execute_from_commandline()
