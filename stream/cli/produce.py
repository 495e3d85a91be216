"""`intent produce`: a file of events onto the clickstream topic."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from schemas.readers import FORMATS
from stream.cli.common import _n, _settings
from stream.offline.files import unreadable_file


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--format", "fmt", type=click.Choice(sorted(FORMATS)), default="canonical", show_default=True
)
@click.option("--topic", help="Send here instead of INTENT_TOPIC_CLICKSTREAM.")
def produce(file: Path, fmt: str, topic: str | None) -> None:
    """Send the events of FILE to the input topic."""
    from stream.devstack.produce import produce_file

    settings = _settings()
    report = produce_file(file, fmt, settings, topic=topic, show_progress=sys.stderr.isatty())
    bad = sum(report.line_errors.values())
    click.echo(
        f"sent {_n(report.sent, 'event')} to {topic or settings.topic_clickstream} in "
        f"{report.seconds:.1f} s ({report.rate:,.0f}/s); {_n(bad, 'unreadable line')}"
        + (f" ({', '.join(f'{k}: {v}' for k, v in report.line_errors.items())})" if bad else "")
        + (f"; {report.failed:,} sends FAILED" if report.failed else "")
    )
    if report.failed:
        sys.exit(1)
    if bad and not report.sent:
        raise click.ClickException(unreadable_file(file, fmt, bad))
