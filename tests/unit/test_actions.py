"""Actions from a score result carry the tier and the suppressions of their own time."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

from schemas.adapters import to_event
from schemas.outputs import AudienceChange, SuppressionRecord
from schemas.signals import Signal
from stream.core.detectors.engine import Engine
from stream.core.outputs import outputs_for, score_signals
from stream.core.scoring import Result, ScoreConfig, apply, new_state
from stream.rulesfile import load_rules
from tests.scenarios import T0, ev

PHONE = {"sku": "PH-1", "category": "electronics/phones"}
DAY = 24 * 60  # minutes


def in_one_call(*bodies: dict[str, Any]) -> tuple[list[Signal], Result]:
    """Shopper s's events detected and scored in one call up to day 40, as replay does."""
    rules = load_rules()
    tiers = rules.tiers
    engine = Engine(rules)
    state = engine.new_state()
    outcome = engine.process("s", state, [to_event(b) for b in bodies])
    end = (T0 + timedelta(days=40)).timestamp()
    signals = outcome.signals + engine.advance("s", state, end)
    cfg = ScoreConfig(tiers.low, tiers.mid, tiers.high, tiers.hysteresis)
    return signals, apply(new_state(), score_signals(signals, outcome.groups), end, cfg)


def test_a_call_running_past_a_suppression_still_applies_it_to_its_own_moments() -> None:
    """One score call, as replay makes for each shopper: a view, a purchase in its
    category (30 days of category suppression), a view ten minutes after the purchase,
    and one after the 30 days, then decay to day 40. The view inside the 30 days adds
    no audience; the ones outside do, each with the tier of its own moment (not the
    tier, nor the suppressions, of day 40, when everything has decayed and ended)."""
    signals, result = in_one_call(
        ev("s", 0, "product_view", session="a", **PHONE),
        ev("s", 5, "purchase", session="a", **PHONE),
        ev("s", 15, "product_view", session="a", **PHONE),
        ev("s", 31 * DAY, "product_view", session="b", **PHONE),
    )
    assert result.to_tier == "none"  # all decayed by day 40

    outputs = outputs_for("s", result, signals)
    views = [
        o.value
        for o in outputs
        if isinstance(o.value, AudienceChange) and o.value.audience == "viewed_product"
        and o.value.op == "add"
    ]  # fmt: skip
    assert [(v.at, v.tier) for v in views] == [
        (T0, "low"),
        (T0 + timedelta(days=31), "low"),
    ]
    records = [o.value for o in outputs if isinstance(o.value, SuppressionRecord)]
    assert [(r.op, r.at) for r in records] == [
        ("suppress", T0 + timedelta(minutes=5)),
        ("unsuppress", T0 + timedelta(minutes=5, days=30)),
    ]


def test_a_result_stored_before_after_and_held_existed_gives_the_same_outputs_by_time() -> None:
    """A batch run again across an upgrade gets back a result the older script stored,
    without `after` and `held`: its actions take the tier and suppressions by their
    signal's time, which, for events in time order, is what the newer fields give."""
    signals, result = in_one_call(
        ev("s", 0, "product_view", session="a", **PHONE),
        ev("s", 1, "add_to_cart", session="a", **PHONE),
        ev("s", 2, "checkout_started", session="a"),
        ev("s", 5, "purchase", session="a", **PHONE),
        ev("s", 15, "product_view", session="a", **PHONE),
        ev("s", 16, "opt_out", channel="email"),
        ev("s", 31 * DAY, "product_view", session="b", **PHONE),
    )
    assert result.after and result.held  # the newer fields are there ...
    stored = replace(result, after={}, held={})  # ... and the older script's result lacks them
    assert outputs_for("s", stored, signals) == outputs_for("s", result, signals)
    assert len(outputs_for("s", result, signals)) > 8
