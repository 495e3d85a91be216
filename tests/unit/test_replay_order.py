"""`intent replay --order`: each shopper's events by event time (the default), or in the
order the file lists them, as a worker reads the file once it is produced to the input
topic. That a worker then emits what replay computes is tested live
(`tests/integration/test_live_matches_replay.py`), with the timer between batches in
`tests/unit/test_batching.py`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from schemas.events import Event
from schemas.outputs import OutputTopic
from stream.cli import main
from stream.offline.replay import Replay, replay
from stream.rulesfile import load_rules
from tests.scenarios import generated_file

RULES = load_rules()


def write(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    """Canonical events (shopper, type, time of 2026-11-23), in the order given."""
    lines = [
        Event.model_validate(
            {"event_id": f"e{i}", "shopper_id": shopper, "type": kind,
             "ts": f"2026-11-23T{at}Z", "source": "test"}
        ).to_json()
        for i, (shopper, kind, at) in enumerate(rows)
    ]  # fmt: skip
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_in_file_order_an_event_older_than_the_lateness_is_late(tmp_path: Path) -> None:
    """A checkout, a cart view ten minutes on, then the purchase of minute four: in time
    order it comes before the cart view and ends the checkout. In file order it is more
    than the allowed lateness (5 minutes) behind the cart view: late, as a worker finds
    it, so the checkout is abandoned."""
    file = write(
        tmp_path / "late.jsonl",
        [("s", "checkout_started", "10:00:00"), ("s", "cart_view", "10:10:00"),
         ("s", "purchase", "10:04:00"), ("s", "page_view", "11:00:00")],
    )  # fmt: skip
    by_time = replay(file, "canonical", RULES)
    by_file = replay(file, "canonical", RULES, order="file")
    assert (by_time.events, by_time.late) == (4, 0)
    assert (by_file.events, by_file.late) == (4, 1)
    rules = {order: [s.rule_id for s in r.signals] for order, r in
             [("time", by_time), ("file", by_file)]}  # fmt: skip
    assert "checkout_abandoned" not in rules["time"]
    assert "checkout_abandoned" in rules["file"]
    assert [a.topic for a in by_file.actions].count(OutputTopic.CART_RECOVERY) == 1
    assert not any(a.topic == OutputTopic.CART_RECOVERY for a in by_time.actions)
    assert [c.to_tier for c in by_time.changes] == ["mid"]
    assert [c.to_tier for c in by_file.changes] == ["mid", "high"]  # with the abandonment
    # late for its shopper, so dropped by a worker too: nothing to warn of
    assert by_time.behind == by_file.behind == 0
    assert by_time.first_seen == by_file.first_seen  # the earliest event either way


def test_within_the_lateness_file_order_matches_time_order(tmp_path: Path) -> None:
    """The purchase of minute 29 after the cart view of minute 31 (two minutes out of
    order, in one visit): within the lateness, it still ends the checkout, and the
    outputs are those of time order. (Across a visit's gap they are not: a visit ends
    as the first event past the gap arrives, and an event before it that comes later
    opens a visit of its own.)"""
    file = write(
        tmp_path / "in_time.jsonl",
        [("s", "checkout_started", "10:00:00"), ("s", "product_view", "10:15:00"),
         ("s", "cart_view", "10:31:00"), ("s", "purchase", "10:29:00"),
         ("s", "page_view", "11:30:00")],
    )  # fmt: skip
    by_time = replay(file, "canonical", RULES)
    by_file = replay(file, "canonical", RULES, order="file")
    assert by_file.late == 0 and by_file.behind == 0
    assert "checkout_abandoned" not in [s.rule_id for s in by_file.signals]
    assert [s.signal_id for s in by_file.signals] == [s.signal_id for s in by_time.signals]
    assert [c.change_id for c in by_file.changes] == [c.change_id for c in by_time.changes]


def test_the_command_warns_of_events_behind_the_files_newest(tmp_path: Path) -> None:
    """Shopper a's second event is ten minutes behind shopper b's, which came before it.
    It is not late for a, but a worker's timer, driven by the partition's newest event,
    may have fired a's deadlines past it: the command says so, in file order only. (A
    shopper's first event has no deadline before it: c's, an hour behind, does not count.)"""
    file = write(
        tmp_path / "two.jsonl",
        [("a", "page_view", "10:00:00"), ("b", "page_view", "10:20:00"),
         ("a", "product_view", "10:10:00"), ("c", "page_view", "09:00:00")],
    )  # fmt: skip
    runner = CliRunner()
    done = runner.invoke(main, ["replay", str(file), "--order", "file"])
    assert done.exit_code == 0, done.output
    assert "4 events of 3 shoppers" in done.output and "0 late" in done.output
    assert "1 event came more than the allowed lateness after newer events" in done.output
    done = runner.invoke(main, ["replay", str(file)])
    assert done.exit_code == 0, done.output
    assert "allowed lateness" not in done.output


def test_an_unknown_order_is_refused(tmp_path: Path) -> None:
    file = write(tmp_path / "one.jsonl", [("a", "page_view", "10:00:00")])
    with pytest.raises(ValueError, match="order must be one of time, file"):
        Replay(file, "canonical", RULES, order="arrival")
    done = CliRunner().invoke(main, ["replay", str(file), "--order", "arrival"])
    assert done.exit_code == 2 and "'arrival' is not one of 'time', 'file'" in done.output


def test_file_order_is_kept_in_shards_on_disk(tmp_path: Path) -> None:
    """200 generated shoppers who step back in time now and then: spilled to shards, each
    shopper's events are replayed in the file's order as in one piece (not sorted)."""
    file = generated_file(tmp_path, 11, 200)
    whole = replay(file, "canonical", RULES, order="file")
    split = replay(file, "canonical", RULES, order="file", shard_events=500)
    by_time = replay(file, "canonical", RULES, shard_events=500)
    assert whole.shards == 1 and split.shards >= 2
    assert whole.late == split.late > 0
    assert len(whole.changes) > 200
    assert [c.model_dump() for c in split.changes] == [c.model_dump() for c in whole.changes]
    assert [s.model_dump() for s in split.signals] == [s.model_dump() for s in whole.signals]
    assert [s.signal_id for s in by_time.signals] != [s.signal_id for s in whole.signals]


def test_the_report_says_the_order_and_the_late_events(tmp_path: Path) -> None:
    """The report names the order and counts the late events (not scored), the same in
    one process and shard by shard in two."""
    file = generated_file(tmp_path, 12, 150)
    late = replay(file, "canonical", RULES, order="file").late
    assert late > 0
    reports = []
    for extra in ([], ["--jobs", "2", "--shard-events", "400"]):
        out = tmp_path / f"report{len(extra)}"
        args = ["replay", str(file), "--order", "file", "--report", str(out), *extra]
        done = CliRunner().invoke(main, args)
        assert done.exit_code == 0, done.output
        assert f"{late:,} late)" in done.output
        reports.append((out / "report.json").read_text())
        markdown = (out / "report.md").read_text()
        assert "Each shopper's events in the file's order, as a worker reads them; " in markdown
        assert f"{late:,} late events (older than the allowed lateness" in markdown
    assert reports[0] == reports[1]
    report = json.loads(reports[0])
    assert (report["order"], report["late_events"]) == ("file", late)
    done = CliRunner().invoke(main, ["replay", str(file), "--report", str(tmp_path / "t")])
    assert done.exit_code == 0, done.output
    report = json.loads((tmp_path / "t" / "report.json").read_text())
    assert (report["order"], report["late_events"]) == ("time", 0)
