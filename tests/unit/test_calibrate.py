"""`intent calibrate`: points and thresholds fitted on the older part of a history, kept
only when they do better on the newer part; the rules file keeps its layout."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from stream.cli import main
from stream.offline.calibrate import Evidence, Fit, calibrate, check_written, rewrite
from stream.offline.replay import REPLAY_UNITS
from stream.rulesfile import check_text, default_rules_text, load_rules

# Views are the playbook's guess here (10 points each: two views make mid), cart adds
# nearly nothing; in the history below it is the other way round.
GIVEN = """\
version: 1
# a comment the calibration must keep
tiers: {low: 1, mid: 15, high: 35, hysteresis: 0.1}
rules:
  - id: product_viewed
    kind: single
    when: {type: product_view}
    points: 10     # a guess
  - id: added_to_cart
    kind: single
    when: {type: add_to_cart}
    points: 1
  - id: purchased
    kind: suppression
    when: {type: purchase}
    scope: category
    duration: 30d
    actions: [reset_score]
"""
T0 = datetime(2026, 9, 1, tzinfo=UTC)


def history(path: Path, shoppers: int = 600, seed: int = 7) -> Path:
    """Over 20 days: every shopper views products; a third also add to the cart, and most
    of those buy within hours; of the others, few buy."""
    rng = random.Random(seed)
    lines = []
    for n in range(shoppers):
        shopper = f"s{n}"
        at = T0 + timedelta(days=rng.uniform(0, 20))
        carter = n % 3 == 0
        for v in range(rng.randint(1, 5)):
            at += timedelta(minutes=rng.uniform(1, 20))
            lines.append(event(shopper, "product_view", at, f"sku{n}-{v}"))
        if carter:
            at += timedelta(minutes=5)
            lines.append(event(shopper, "add_to_cart", at, f"sku{n}-0"))
        if rng.random() < (0.6 if carter else 0.03):
            at += timedelta(hours=rng.uniform(1, 6))
            lines.append(event(shopper, "purchase", at, f"sku{n}-0"))
    lines.sort(key=lambda line: json.loads(line)["ts"])
    path.write_text("\n".join(lines) + "\n")
    return path


def event(shopper: str, kind: str, at: datetime, sku: str) -> str:
    return json.dumps(
        {"shopper_id": shopper, "type": kind, "ts": at.isoformat(),
         "product": {"sku": sku, "category": "shoes", "price": 30.0}}
    )  # fmt: skip


def test_calibration_learns_that_cart_adds_predict_and_beats_the_guess(tmp_path: Path) -> None:
    path = history(tmp_path / "history.jsonl")
    rules, problems = check_text(GIVEN)
    assert rules is not None, problems
    done = calibrate(path, "canonical", rules, GIVEN)
    points = {rule.id: rule.points for rule in done.calibrated.rules}
    assert points["added_to_cart"] > points["product_viewed"]
    assert done.after.beats(done.before) and done.kept
    assert (done.after.lift["high"] or 0) > (done.before.lift["high"] or 0)
    # the written file loads, has the new numbers, and keeps the comments
    written = check_written(done.text)
    assert {r.id: r.points for r in written.rules} == points
    assert written.tiers == done.calibrated.tiers
    assert "# a comment the calibration must keep" in done.text
    assert "# a guess" in done.text
    assert re.search(r"# calibrated: support \d+ shoppers, lift [0-9.]+x; points 1 -> ", done.text)


def command(tmp_path: Path) -> tuple[list[str], Path]:
    """`intent calibrate` on the history, from GIVEN; and where it writes."""
    path = history(tmp_path / "history.jsonl")
    given = tmp_path / "given.yaml"
    given.write_text(GIVEN)
    out = tmp_path / "calibrated.yaml"
    args = ["calibrate", str(path), "--format", "canonical", "--rules", str(given)]
    return [*args, "--out", str(out)], out


def test_the_command_prints_the_table_and_writes_the_rules(tmp_path: Path) -> None:
    args, out = command(tmp_path)
    with open(tmp_path / "history.jsonl", "a") as history_file:
        history_file.write("not json\n")
    result = CliRunner().invoke(main, [*args, "--horizon", "2d", "--split", "0.5"])
    assert result.exit_code == 0, result.output
    assert "1 unreadable line of history.jsonl left out" in result.output
    for row in ("naive rule", "rules given", "calibrated"):
        assert re.search(rf"^{row} +[0-9.]+x +[0-9.]+x +[0-9.]+x +[0-9.]+%$", result.output, re.M)
    assert f"wrote the calibrated rules to {out}" in result.output
    assert check_written(out.read_text()).tiers.mid == 15


def test_rules_that_do_no_better_are_written_back_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stream.offline import standing

    monkeypatch.setattr(standing.Standing, "beats", lambda self, other: False)
    args, out = command(tmp_path)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "do not beat the rules given" in result.output
    assert out.read_text() == GIVEN


def test_bad_input_is_refused_in_one_line(tmp_path: Path) -> None:
    few = tmp_path / "few.jsonl"
    few.write_text(event("s", "product_view", T0, "a") + "\n")
    out = tmp_path / "out.yaml"
    args = ["calibrate", str(few), "--format", "canonical", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "too few to fit" in result.output
    assert not out.exists()
    result = CliRunner().invoke(main, [*args[:-2], "--split", "1.5", "--out", str(out)])
    assert result.exit_code == 2 and "--split" in result.output
    result = CliRunner().invoke(main, [*args, "--horizon", "soon"])
    assert result.exit_code == 2 and "--horizon" in result.output


def test_rewrite_keeps_the_layout_and_adds_the_evidence() -> None:
    text = default_rules_text()
    rules = load_rules()
    evidence = {rule.id: Evidence(rule.id, rule.points) for rule in rules.rules}
    item = evidence["added_to_cart"]
    item.support, item.bought_after, item.lift = 111, 63, 13.03
    item.points, item.fitted = 42, True
    tiers = rules.tiers.model_copy(update={"low": 0.25, "high": 70})
    out = rewrite(text, Fit(evidence, 1.0, 0, 0), tiers)
    written = check_written(out)
    assert next(r.points for r in written.rules if r.id == "added_to_cart") == 42
    assert (written.tiers.low, written.tiers.mid, written.tiers.high) == (0.25, 15, 70)
    assert "# calibrated: support 111 shoppers, lift 13.03x; points 30 -> 42" in out
    # every other line of the file is still there, in order
    kept = [line for line in out.splitlines() if "# calibrated" not in line]
    assert len(kept) == len(text.splitlines())
    # calibrating the output again replaces the comments instead of stacking them
    again = rewrite(out, Fit(evidence, 1.0, 0, 0), tiers)
    assert again.count("# calibrated: support 111") == 1


def test_each_replay_reports_its_progress_to_the_end(tmp_path: Path) -> None:
    path = history(tmp_path / "history.jsonl", shoppers=200)
    rules, _ = check_text(GIVEN)
    assert rules is not None
    totals: dict[str, int] = {}
    ticks: dict[str, int] = {}
    read: list[int] = []

    def replaying(what: str, units: int) -> Callable[[int], None]:
        totals[what] = units
        ticks[what] = 0

        def tick(n: int) -> None:
            ticks[what] += n

        return tick

    done = calibrate(path, "canonical", rules, GIVEN, replaying=replaying, reading=read.append)
    assert list(totals) == [
        "replaying the older part",
        "checking the rules given on the newer part",
        "checking the new rules on it",
    ]
    assert ticks == totals  # every bar ends full
    assert totals["replaying the older part"] == REPLAY_UNITS * len(done.history.older)
    assert read and read[-1] == path.stat().st_size
