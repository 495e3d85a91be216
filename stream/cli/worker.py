"""`intent worker`: one worker process."""

from __future__ import annotations

import click

from stream.cli.common import (
    _settings,
)


@click.command()
@click.option("--loglevel", default="info", show_default=True)
def worker(loglevel: str) -> None:
    """Run one stream worker against the configured Kafka and Redis."""
    from stream.worker.main import run_worker

    run_worker(_settings(), loglevel=loglevel)
