"""`intent calibrate`: fit the rules' points and tier thresholds on a history."""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import click

from schemas.readers import FORMATS
from stream.cli.common import _n, _os_error, _settings, follow_position
from stream.cli.replay import _duration


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(sorted(FORMATS)), required=True)
@click.option("--rules", "rules_path", type=click.Path(dir_okay=False, path_type=Path),
              help="The rules to start from (default: INTENT_RULES, else the built-in "
              "playbook).")  # fmt: skip
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Write the calibrated rules file here (its comments give each rule's "
              "evidence).")  # fmt: skip
@click.option("--horizon", default="7d", show_default=True, callback=_duration,
              help="A purchase within this long after a moment labels it a buying one "
              "(e.g. 7d, 36h, 90m, or seconds).")  # fmt: skip
@click.option("--split", type=click.FloatRange(0.05, 0.95), default=0.6, show_default=True,
              help="The share of the events, oldest first, that the fit sees; the rest "
              "checks it.")  # fmt: skip
def calibrate(
    file: Path, fmt: str, rules_path: Path | None, out: Path, horizon: float, split: float
) -> None:
    """Fit each rule's points and the tier thresholds on the older part of FILE, and
    check them on the newer part against the rules given and the naive rule.

    The calibrated rules are written only when they do better out of sample (the high
    tier's lift and the share of buyers caught before they buy); otherwise the rules
    given are written unchanged, and the command says why.
    """
    from stream.offline.calibrate import calibrate as run
    from stream.offline.calibrate import check_written, require_sklearn
    from stream.rulesfile import default_rules_text, load_ruleset, rules_source

    require_sklearn()  # before anything is read
    settings = _settings()
    rules = load_ruleset(settings, rules_path)
    chosen = rules_path or settings.rules
    try:
        text = Path(chosen).read_text() if chosen else default_rules_text()
    except OSError as exc:
        raise click.ClickException(_os_error(exc, doing="cannot read")) from exc
    size = max(file.stat().st_size, 1)
    with ExitStack() as bars:
        bar = bars.enter_context(
            click.progressbar(length=size, label=f"reading {file.name}", file=sys.stderr)
        )
        advance = follow_position(bar)

        def stage(name: str) -> None:
            if name in ("fitting the points", "choosing points and thresholds"):
                bars.close()  # the last bar ends here
                click.echo(f"{name} ...", err=True)

        def replaying(what: str, units: int) -> Callable[[int], None]:
            bars.close()  # one bar at a time: the previous one ends here
            follow = bars.enter_context(
                click.progressbar(length=max(units, 1), label=what, file=sys.stderr)
            )
            return follow.update

        result = run(file, fmt, rules, text, horizon=horizon, split=split,
                     progress=stage, reading=advance, replaying=replaying)  # fmt: skip
    check_written(result.text)
    try:
        out.write_text(result.text)
    except OSError as exc:
        raise click.ClickException(_os_error(exc)) from exc
    history, fit = result.history, result.fit
    click.echo(
        f"fitted on {_n(len(history.older), 'older event')} ({_n(fit.rows, 'moment')}, "
        f"{fit.positives:,} followed by a purchase within the horizon), checked on "
        f"{_n(len(history.newer), 'newer event')}; "
        f"started from {rules_source(settings, rules_path)}"
    )
    if history.line_errors:
        click.echo(f"{_n(history.line_errors, 'unreadable line')} of {file.name} left out")
    for note in fit.notes:
        click.echo(f"note: {note}")
    click.echo("")
    click.echo(table(result))
    click.echo("")
    if result.kept:
        click.echo(f"wrote the calibrated rules to {out}")
    else:
        click.echo(
            "the calibrated rules do not beat the rules given on the newer part (high lift "
            f"and capture both at least as good, one better); wrote the rules given, "
            f"unchanged, to {out}"
        )


def table(result: object) -> str:
    """The before/after table on the newer part, the naive rule beside."""
    from stream.offline.calibrate import Calibration
    from stream.offline.standing import Standing

    assert isinstance(result, Calibration)
    t = result.fit.thresholds or result.given.tiers
    rows: list[tuple[str, Standing]] = [
        ("naive rule", result.naive_newer),
        ("rules given", result.before),
        ("calibrated", result.after),
    ]

    def lift(value: float | None) -> str:
        return f"{value:.2f}x" if value is not None else "-"

    head = f"{'on the newer part':<16} {'low':>8} {'mid':>8} {'high':>8} {'capture':>9}"
    lines = [head, "-" * len(head)]
    for name, s in rows:
        lines.append(
            f"{name:<16} {lift(s.lift['low']):>8} {lift(s.lift['mid']):>8} "
            f"{lift(s.lift['high']):>8} {s.capture:>9.1%}"
        )
    lines.append(
        f"(lift per tier; capture: buyers who reached mid or high before their first "
        f"purchase; calibrated thresholds low {t.low:g}, mid {t.mid:g}, high {t.high:g})"
    )
    return "\n".join(lines)
