"""The `intent` command: one module per subcommand."""

from __future__ import annotations

import logging

import click

from stream.cli.calibrate import calibrate
from stream.cli.common import Group
from stream.cli.dev import dev
from stream.cli.forget import forget
from stream.cli.migrate import migrate_state
from stream.cli.produce import produce
from stream.cli.replay import replay
from stream.cli.rules import rules
from stream.cli.shopper import shopper
from stream.cli.worker import worker


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="intent-processor")
def main() -> None:
    """Streaming intent processor: clickstream in, intent tiers and actions out."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


for command in (dev, worker, produce, rules, shopper, forget, replay, calibrate, migrate_state):
    main.add_command(command)
