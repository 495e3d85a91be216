"""`intent replay`: the rules over a historical file, in event time."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import click

from schemas.readers import FORMATS
from stream.cli.common import (
    _n,
    _os_error,
    _settings,
    _writable,
    follow_position,
)
from stream.offline.files import SHARD_EVENTS, unreadable_file


def _duration(_ctx: click.Context, _param: click.Parameter, value: str) -> float:
    """'7d', '36h', '90m' or a number of seconds, as the rules file writes durations."""
    from pydantic import TypeAdapter, ValidationError

    from schemas.rules import Seconds

    given: str | float = value
    with contextlib.suppress(ValueError):
        given = float(value)  # a number of seconds
    try:
        return float(TypeAdapter(Seconds).validate_python(given))
    except ValidationError as exc:
        problem = exc.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")
        hint = "" if "e.g." in problem else " (e.g. 7d, 36h, 90m)"
        raise click.BadParameter(problem + hint) from exc


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--format", "fmt", type=click.Choice(sorted(FORMATS)), default="canonical", show_default=True
)
@click.option("--rules", "rules_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Rules file (default: INTENT_RULES, else the built-in playbook).")  # fmt: skip
@click.option("--changes", type=click.Path(dir_okay=False, path_type=Path),
              help="Write every tier change here, JSON Lines, in the topic's schema.")  # fmt: skip
@click.option("--actions", type=click.Path(dir_okay=False, path_type=Path),
              help='Write every action here: {"topic", "key", "value"} per line.')  # fmt: skip
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write the evaluation here: report.md, report.json, PNG charts.")  # fmt: skip
@click.option("--shard-events", type=click.IntRange(min=1), default=SHARD_EVENTS,
              show_default=True, help="Events held in memory at once (about 6 KB each); a "
              "bigger file is split by shopper into shards on disk.")  # fmt: skip
@click.option("--min-support", type=click.IntRange(min=1), default=10, show_default=True,
              help="Shoppers a signal needs before the report lists its lift.")  # fmt: skip
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Replay the shards in this many processes (same output).")  # fmt: skip
@click.option("--horizon", default="7d", show_default=True, callback=_duration,
              metavar="DURATION",
              help="The report's score thresholds: a purchase within this long after "
              "reaching one counts (e.g. 7d, 36h, 90m, or seconds).")  # fmt: skip
@click.option("--order", type=click.Choice(["time", "file"]), default="time", show_default=True,
              help="Each shopper's events by event time, or in the order the file lists them, "
              "as a worker reads the file once produced to the input topic (out of order "
              "within the allowed lateness: scored as they come; older: late).")  # fmt: skip
def replay(
    file: Path, fmt: str, rules_path: Path | None, changes: Path | None, actions: Path | None,
    report_dir: Path | None, shard_events: int, min_support: int,
    jobs: int, horizon: float, order: str,
) -> None:  # fmt: skip
    """Run the rules offline, in event time, over a historical FILE."""
    import tempfile
    import time
    from contextlib import ExitStack

    from stream.core.ingest import ingest_bounds
    from stream.offline.outputs import OutputFiles
    from stream.offline.replay import REPLAY_UNITS, Replay
    from stream.offline.report import Tally
    from stream.rulesfile import load_ruleset, rules_source

    settings = _settings()
    rules = load_ruleset(settings, rules_path)
    # What could fail late fails now: the report folder, the output files.
    if report_dir:
        from stream.offline.report import require_charts

        require_charts()
        _writable(report_dir)
    size = max(file.stat().st_size, 1)
    tally = Tally(horizon)
    counts = {"signals": 0, "changes": 0, "actions": 0, "late": 0, "failed": 0, "merges": 0}
    with tempfile.TemporaryDirectory(prefix="intent-replay-out-") as work, ExitStack() as bars:
        try:
            outputs = OutputFiles(changes, actions, settings.output_topics(), Path(work))
        except OSError as exc:
            raise click.ClickException(_os_error(exc)) from exc
        reading = bars.enter_context(
            click.progressbar(length=size, label=f"reading {file.name}", file=sys.stderr)
        )
        replaying: list[Any] = []
        advance = follow_position(reading)

        def read(events: int) -> None:
            bars.close()  # the reading bar ends here, the next one starts
            # each event is detected, scored and turned into outputs: REPLAY_UNITS steps
            replaying.append(bars.enter_context(click.progressbar(
                length=REPLAY_UNITS * events, label="replaying", file=sys.stderr)))  # fmt: skip

        run = Replay(file, fmt, rules, progress=advance, on_read=read,
                     on_replayed=lambda units: replaying[0].update(units),
                     shard_events=shard_events, order=order,
                     bounds=ingest_bounds(settings))  # fmt: skip

        def go() -> None:
            for shard_tally, shard_counts in run.summaries(jobs, outputs, horizon):
                tally.merge(shard_tally)
                for name, n in shard_counts.items():
                    counts[name] += n
            outputs.close()

        started = time.perf_counter()
        try:
            go()
        except BaseException as exc:
            outputs.discard()  # an earlier file of the same name stays as it was
            if isinstance(exc, OSError):
                raise click.ClickException(_os_error(exc, doing="replay failed on")) from exc
            raise
        seconds = time.perf_counter() - started  # wall clock: reading, replaying, writing
    bad = sum(run.line_errors.values())
    for error in run.first_errors:
        click.echo(f"line {error.line_no}: {error.reason}: {error.detail}", err=True)
    if bad > len(run.first_errors):
        more = _n(bad - len(run.first_errors), "more unreadable line")
        click.echo(f"... and {more}", err=True)
    rate = tally.events / seconds if seconds else 0.0
    sharded = f", {run.shards} shards" if run.shards > 1 else ""
    reasons = f" ({', '.join(f'{k}: {v:,}' for k, v in run.line_errors.items())})" if bad else ""
    click.echo(
        f"replayed {_n(tally.events, 'event')} of {_n(tally.shoppers, 'shopper')} in "
        f"{seconds:.1f} s ({rate:,.0f} events/s{sharded}; {_n(bad, 'unreadable line')}"
        f"{reasons}, {counts['late']:,} late): {_n(counts['signals'], 'signal')}, "
        f"{_n(counts['changes'], 'tier change')}, {_n(counts['actions'], 'action')}"
    )
    if counts["merges"]:
        click.echo(
            f"{_n(counts['merges'], 'anonymous id')} merged into known profiles "
            "(identify, alias, or events carrying both ids)"
        )
    if counts["failed"]:
        click.echo(
            f"{_n(counts['failed'], 'shopper')} could not be processed (an error of ours, "
            "logged above) and were left out; every other shopper was replayed",
            err=True,
        )
    if run.behind:
        click.echo(
            f"{_n(run.behind, 'event')} came more than the allowed lateness after newer "
            "events of other shoppers: a worker's timer may have fired their shoppers' "
            "deadlines ahead of them (replay fires them after), so a worker's output for "
            "those shoppers can differ",
            err=True,
        )
    if bad and not tally.events:
        raise click.ClickException(unreadable_file(file, fmt, bad))
    if report_dir:
        from stream.offline.report import write

        try:
            source = rules_source(settings, rules_path)
            report = write(tally, report_dir, file.name, (rules, source), min_support, order)
        except OSError as exc:
            raise click.ClickException(_os_error(exc)) from exc
        for tier, plain in zip(report["tiers"], report["naive"]["tiers"], strict=True):
            conv = tier["conversion"]
            lift = tier["lift"]
            naive = plain["lift"]
            click.echo(
                f"  {tier['tier']:<5} reached {tier['reached']:>7,}  conversion "
                f"{'-' if conv is None else f'{100 * conv:.1f} %':>7}  lift "
                f"{'-' if lift is None else f'{lift:.2f}x'}  (naive rule: lift "
                f"{'-' if naive is None else f'{naive:.2f}x'})"
            )
        click.echo(f"report: {report_dir / 'report.md'}")
