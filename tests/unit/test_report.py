"""The backtest report on a hand-made file whose answers were worked out by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from schemas.outputs import TierChange
from stream.cli import main
from stream.replay import Replay, replay
from stream.report import Tally, compute, write
from stream.rulesfile import load_rules
from tests.scenarios import ev

CABLE = {"sku": "CBL-USB-C", "category": "electronics/cables"}
JACKET = {"sku": "JKT-RAIN", "category": "apparel/outerwear"}


def handmade() -> list[dict[str, Any]]:
    """Seven shoppers over one hour (minutes from 10:00). Default rules, tiers 1/15/35.

    a: product view (2 -> low), returns page at +3 (+35 -> high), buys at +60.
    b: two blog pages; the blog-only visit ends at +34 (+3 -> low). Never buys.
    c: product view (low), buys at +10.
    d: buys at 0 with nothing before; that one-event visit ends at +30 (+1 -> low).
    e: one product view (low); its one-page visit adds 1 at +30. Never buys.
    f: cart, then checkout at 0 (20 -> mid); abandoned at +30 (34.99: still mid). No buy.
    g: like f, then buys at +45, after the cart-recovery trigger at +30.
    """
    return [
        ev("a", 0, "product_view", session="a1", **CABLE),
        ev("a", 3, "page_view", session="a1", page="returns"),
        ev("a", 60, "purchase", session="a2", **CABLE),
        ev("b", 0, "page_view", session="b1", page="blog"),
        ev("b", 4, "page_view", session="b1", page="blog"),
        ev("c", 0, "product_view", session="c1", **CABLE),
        ev("c", 10, "purchase", session="c1", **CABLE),
        ev("d", 0, "purchase", session="d1", **CABLE),
        ev("e", 0, "product_view", session="e1", **JACKET),
        ev("f", -1, "cart_view", session="f1"),
        ev("f", 0, "checkout_started", session="f1", **JACKET),
        ev("g", -1, "cart_view", session="g1"),
        ev("g", 0, "checkout_started", session="g1", **JACKET),
        ev("g", 45, "purchase", session="g2", **JACKET),
    ]


@pytest.fixture
def events_file(tmp_path: Path) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in handmade()))
    return path


def tally(path: Path, shard_events: int | None) -> dict[str, Any]:
    """The report of a run in one piece, or counted shard by shard as the command does."""
    if shard_events is None:
        return compute(replay(path, "canonical", load_rules()))
    run = Replay(path, "canonical", load_rules(), shard_events=shard_events)
    counts = Tally()
    for part in run.results():
        counts.add(part)
    assert run.shards > 1
    return counts.report()


@pytest.mark.parametrize("shard_events", [None, 2], ids=["one-piece", "shards"])
def test_report_has_the_known_answers(events_file: Path, shard_events: int | None) -> None:
    report = tally(events_file, shard_events)
    assert (report["shoppers"], report["buyers"]) == (7, 4)
    assert report["base_rate"] == pytest.approx(4 / 7)
    low, mid, high = report["tiers"]
    assert (low["reached"], low["bought_after"]) == (7, 3)
    assert low["conversion"] == pytest.approx(3 / 7) and low["lift"] == pytest.approx(0.75)
    assert low["share_of_buyers"] == pytest.approx(3 / 4)
    assert low["median_lead_time_seconds"] == pytest.approx(45 * 60)
    assert (mid["reached"], mid["bought_after"]) == (3, 2)
    assert mid["lift"] == pytest.approx((2 / 3) / (4 / 7))
    assert mid["share_of_buyers"] == pytest.approx(2 / 4)
    assert mid["median_lead_time_seconds"] == pytest.approx((57 + 45) / 2 * 60)
    assert (high["reached"], high["bought_after"]) == (1, 1)
    assert high["lift"] == pytest.approx(7 / 4)
    assert high["share_of_buyers"] == pytest.approx(1 / 4)
    assert high["median_lead_time_seconds"] == pytest.approx(57 * 60)
    assert report["cart_recovery"] == {"triggers": 2, "followed_by_purchase": 1, "rate": 0.5}
    assert report["top_signals"] == []  # no rule reaches 10 shoppers here


def test_report_files(events_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    write(replay(events_file, "canonical", load_rules()), out, "events.jsonl")
    assert json.loads((out / "report.json").read_text())["buyers"] == 4
    text = (out / "report.md").read_text()
    assert "| high | 1 | 1 | 100.0 % | 1.75x | 25.0 % | 57 min |" in text
    assert (out / "conversion_by_tier.png").read_bytes()[:4] == b"\x89PNG"


def test_replay_command_writes_changes_and_actions_in_topic_schemas(
    events_file: Path, tmp_path: Path
) -> None:
    changes, actions = tmp_path / "out" / "changes.jsonl", tmp_path / "out" / "actions.jsonl"
    args = ["replay", str(events_file), "--format", "canonical"]
    done = CliRunner().invoke(main, [*args, "--changes", str(changes), "--actions", str(actions)])
    assert done.exit_code == 0, done.output
    assert "replayed 14 events of 7 shoppers" in done.output
    records = [TierChange.model_validate_json(line) for line in changes.read_text().splitlines()]
    assert {c.shopper_id for c in records} == set("abcdefg")
    assert [c.to_tier for c in records if c.shopper_id == "a"] == ["low", "high", "none"]
    lines = [json.loads(line) for line in actions.read_text().splitlines()]
    assert {line["topic"] for line in lines} <= {
        "intent.actions.retargeting", "intent.actions.cart-recovery",
        "intent.actions.nurture", "intent.actions.suppression",
    }  # fmt: skip
    triggers = [x for x in lines if x["topic"] == "intent.actions.cart-recovery"]
    assert sorted(t["key"] for t in triggers) == ["f", "g"]
    assert all(set(x) == {"topic", "key", "value"} for x in lines)
