"""Actions from a score result carry the tier and the suppressions of their own time."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from schemas.adapters import to_event
from schemas.outputs import AudienceChange, SuppressionRecord
from stream.detectors.engine import ADVANCED, Engine
from stream.rulesfile import load_rules
from stream.scoring.actions import outputs_for, to_score_signal
from stream.scoring.reference import ScoreConfig, apply, new_state
from tests.scenarios import T0, ev

PHONE = {"sku": "PH-1", "category": "electronics/phones"}
DAY = 24 * 60  # minutes


def test_a_call_running_past_a_suppression_still_applies_it_to_its_own_moments() -> None:
    """One score call, as replay makes for each shopper: a view, a purchase in its
    category (30 days of category suppression), a view ten minutes after the purchase,
    and one after the 30 days, then decay to day 40. The view inside the 30 days adds
    no audience; the ones outside do, each with the tier of its own moment (not the
    tier, nor the suppressions, of day 40, when everything has decayed and ended)."""
    rules = load_rules()
    tiers = rules.tiers
    cfg = ScoreConfig(tiers.low, tiers.mid, tiers.high, tiers.hysteresis)
    engine = Engine(rules)
    bodies = [
        ev("s", 0, "product_view", session="a", **PHONE),
        ev("s", 5, "purchase", session="a", **PHONE),
        ev("s", 15, "product_view", session="a", **PHONE),
        ev("s", 31 * DAY, "product_view", session="b", **PHONE),
    ]
    state = engine.new_state()
    signals = engine.process("s", state, [to_event(b) for b in bodies]).signals
    end = (T0 + timedelta(days=40)).timestamp()
    signals += engine.advance("s", state, end)
    result = apply(new_state(), [to_score_signal(s) for s in signals], end, cfg)
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
    rules = load_rules()
    tiers = rules.tiers
    cfg = ScoreConfig(tiers.low, tiers.mid, tiers.high, tiers.hysteresis)
    engine = Engine(rules)
    bodies = [
        ev("s", 0, "product_view", session="a", **PHONE),
        ev("s", 1, "add_to_cart", session="a", **PHONE),
        ev("s", 2, "checkout_started", session="a"),
        ev("s", 5, "purchase", session="a", **PHONE),
        ev("s", 15, "product_view", session="a", **PHONE),
        ev("s", 16, "opt_out", channel="email"),
        ev("s", 31 * DAY, "product_view", session="b", **PHONE),
    ]
    state = engine.new_state()
    outcome = engine.process("s", state, [to_event(b) for b in bodies])
    end = (T0 + timedelta(days=40)).timestamp()
    signals = outcome.signals + engine.advance("s", state, end)
    scored = [to_score_signal(s, outcome.groups.get(s.signal_id, ADVANCED)) for s in signals]
    result = apply(new_state(), scored, end, cfg)
    assert result.after and result.held  # the newer fields are there ...
    stored = replace(result, after={}, held={})  # ... and the older script's result lacks them
    assert outputs_for("s", stored, signals) == outputs_for("s", result, signals)
    assert len(outputs_for("s", result, signals)) > 8
