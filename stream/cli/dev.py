"""`intent dev`: the embedded stack, a worker and demo traffic."""

from __future__ import annotations

import click

from stream.cli.common import (
    _settings,
)


@click.command()
@click.option("--no-demo", is_flag=True, help="Start no demo traffic; produce your own.")
@click.option("--print-env", is_flag=True, help="Print the settings another shell needs first.")
@click.option("--rate", default=20.0, show_default=True, help="Demo traffic, events/s.")
@click.option("--no-worker", is_flag=True, help="Start no worker (others already run).")
def dev(no_demo: bool, print_env: bool, rate: float, no_worker: bool) -> None:
    """Embedded broker + Redis, one worker and demo traffic. Ctrl-C stops it all."""
    from stream.devstack.dev import run_dev

    run_dev(_settings(), demo=not no_demo, print_env=print_env, rate=rate, worker=not no_worker)
