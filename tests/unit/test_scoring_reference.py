"""The scoring maths (pure reference): decay, order independence, tiers, deadlines."""

from __future__ import annotations

import math
import random

import pytest

from stream.core import scoring as reference
from stream.core.scoring import ScoreConfig, ScoreSignal, apply, new_state, tier_for

CFG = ScoreConfig(low=1.0, mid=15.0, high=35.0, hysteresis=0.1)
DAY = 86400.0
H = 3 * DAY


def sig(i: int, t: float, p: float, h: float = H, **kw: object) -> ScoreSignal:
    return ScoreSignal(id=f"s{i}", t=t, points=p, half_life=h, rule=f"r{i % 3}", **kw)  # type: ignore[arg-type]


def test_score_is_the_sum_of_decayed_points() -> None:
    signals = [sig(0, 0, 20), sig(1, DAY, 10, DAY), sig(2, 2 * DAY, 8)]
    state = new_state()
    result = apply(state, signals, 5 * DAY, CFG)
    expected = sum(s.points * 2 ** (-(5 * DAY - s.t) / s.half_life) for s in signals)
    assert result.score == pytest.approx(expected, rel=1e-12)
    assert result.at == 5 * DAY


def test_order_does_not_matter() -> None:
    rng = random.Random(3)
    signals = [sig(i, rng.uniform(0, 9 * DAY), rng.choice([2, 5, 10, 20]),
                   rng.choice([H, DAY])) for i in range(40)]  # fmt: skip
    in_order = new_state()
    apply(in_order, sorted(signals, key=lambda s: s.t), None, CFG)
    shuffled = new_state()
    rng.shuffle(signals)
    for i in range(0, 40, 7):  # several late batches
        apply(shuffled, signals[i : i + 7], None, CFG)
    t = 10 * DAY
    assert reference.score_at(shuffled, t) == pytest.approx(
        reference.score_at(in_order, t), rel=1e-12
    )


def test_a_signal_applied_twice_counts_once_and_its_output_comes_back() -> None:
    """The same batch again (its first run crashed before sending): the score counts it
    once, and the first run's transitions come back with the same ids, to be sent."""
    state = new_state()
    first = apply(state, [sig(0, 0, 20)], None, CFG)
    again = apply(state, [sig(0, 0, 20)], None, CFG)
    assert again.score == first.score
    assert again.changes == first.changes and again.new_ids == first.new_ids == ["s0"]
    assert (again.from_tier, again.to_tier) == ("none", "mid")


def test_a_batch_run_again_with_more_signals_sends_both_outputs() -> None:
    state = new_state()
    first = apply(state, [sig(0, 0, 5)], None, CFG)  # none -> low
    again = apply(state, [sig(0, 0, 5), sig(1, 10, 15)], None, CFG)  # + low -> mid
    assert [c.seq for c in again.changes] == [1, 2]
    assert again.changes[0] == first.changes[0]
    assert (again.from_tier, again.to_tier, again.new_ids) == ("none", "mid", ["s0", "s1"])
    assert again.score == pytest.approx(5 * 2 ** (-10 / H) + 15)


def test_old_duplicates_send_nothing_again() -> None:
    """Once a later call applied something, or a transition happened since, a duplicate
    is only a duplicate: nothing is counted and nothing is sent."""
    state = new_state()
    apply(state, [sig(0, 0, 20)], None, CFG)
    apply(state, [sig(1, 10, 1)], None, CFG)
    old = apply(state, [sig(0, 0, 20)], None, CFG)
    assert not old.changed and old.new_ids == []
    decayed = new_state()
    apply(decayed, [sig(0, 0, 20)], None, CFG)
    apply(decayed, [], 30 * DAY, CFG)  # decays out of mid, then low: a transition
    late = apply(decayed, [sig(0, 0, 20)], None, CFG)
    assert not late.changed and late.new_ids == [] and late.score < 1


def test_a_decay_call_run_again_hands_back_its_transitions() -> None:
    """The sweep's decay call again at the same due time (its first run died before its
    output was sent, so the index still holds that time): the demotions come back with
    the same seqs. A later decay call, or one after a transition since, sends nothing old."""
    state = new_state()
    apply(state, [sig(0, 0, 20)], None, CFG)  # none -> mid
    due = reference.next_deadline(state, CFG)
    assert due is not None
    first = apply(state, [], due, CFG)  # mid -> low
    assert [(c.from_tier, c.to_tier, c.seq) for c in first.changes] == [("mid", "low", 2)]
    again = apply(state, [], due, CFG)
    assert again.changes == first.changes and (again.from_tier, again.to_tier) == ("mid", "low")
    assert again.score == first.score
    later = apply(state, [], due + 60, CFG)  # no transition: nothing, nothing old
    assert later.changes == [] and later.from_tier == later.to_tier == "low"
    assert apply(state, [], due + 60, CFG).changes == []  # it changed nothing: no repeat
    gone = apply(state, [], 60 * DAY, CFG)  # low -> none
    assert [c.seq for c in gone.changes] == [3]
    assert apply(state, [], due, CFG).changes == []  # the old call, after a transition


@pytest.mark.parametrize(
    ("score", "previous", "expected"),
    [(0.5, "none", "none"), (1.0, "none", "low"), (15.0, "none", "mid"), (35.0, "low", "high"),
     (34.0, "high", "high"),   # within 10 % of the high threshold: stays
     (31.4, "high", "mid"),    # below 31.5: drops, and mid still holds
     (13.6, "high", "mid"),    # mid's own band (13.5) when falling from high
     (13.4, "mid", "low"), (0.95, "low", "low"), (0.89, "low", "none")],
)  # fmt: skip
def test_tiers_with_hysteresis(score: float, previous: str, expected: str) -> None:
    assert tier_for(score, previous, CFG) == expected


def test_demotion_time_is_the_crossing() -> None:
    state = new_state()
    result = apply(state, [sig(0, 0, 40)], None, CFG)
    assert result.to_tier == "high"
    floor = 35 * 0.9  # leaves high below 31.5
    crossing = H * math.log2(40 / floor)
    assert result.deadline == pytest.approx(crossing, abs=1e-6)
    demoted = apply(state, [], result.deadline, CFG)
    (change,) = demoted.changes
    assert (change.from_tier, change.to_tier, change.reason) == ("high", "mid", "decay")
    assert change.at == result.deadline and change.score == pytest.approx(floor)


@pytest.mark.parametrize(
    "signals",
    [[(0, 30, H), (100, 12, DAY), (5000, 9, 600.0)],  # three half-life classes
     [(0, 50, 1800.0), (60, 3, DAY)],
     [(0, 20, H), (10, 20, 7 * DAY), (20, 2, 300.0), (30, 1, 60.0)]],
)  # fmt: skip
def test_demotion_time_of_several_components_is_the_first_time_below(
    signals: list[tuple[float, float, float]],
) -> None:
    """Newton's crossing: strictly below the band at the deadline, still inside it one
    resolution step earlier (the same answer bisection gives, to a microsecond)."""
    state = new_state()
    result = apply(state, [sig(i, t, p, h) for i, (t, p, h) in enumerate(signals)], None, CFG)
    tier = result.to_tier
    floor = CFG.threshold(tier) * (1 - CFG.hysteresis)
    due = reference.demotion_time(state, tier, result.at, CFG)
    assert due is not None
    assert reference.score_at(state, due) < floor
    assert reference.score_at(state, due - 2 * reference.RESOLUTION) >= floor
    bisected = reference._bisect(state, sorted(state["s"]), result.at, floor)
    assert bisected == pytest.approx(due, abs=2e-6)


def test_negative_components_are_bisected() -> None:
    state = new_state()
    apply(state, [sig(0, 0, 40, DAY), sig(1, 0, -5, 600.0)], None, CFG)
    # not convex (the negative part decays first, so the score rises, then falls): bisection
    due = reference.demotion_time(state, "high", 0.0, CFG)
    assert due is not None and reference.score_at(state, due) < 31.5
    assert reference.score_at(state, due - 1e-3) >= 31.5


def test_suppression_overrides_and_expires() -> None:
    state = new_state()
    apply(state, [sig(0, 0, 40)], None, CFG)
    on = apply(state, [sig(1, 10, 0, suppress="all", until=100.0)], None, CFG)
    assert (on.to_tier, on.changes[-1].reason, on.deadline) == ("suppressed", "suppression", 100.0)
    off = apply(state, [], 100.0, CFG)
    (change,) = off.changes
    assert (change.from_tier, change.to_tier, change.reason) == (
        "suppressed",
        "high",
        "suppression",
    )
    assert off.unsuppressed == ["all"]


def test_purchase_resets_and_ignores_earlier_late_points() -> None:
    state = new_state()
    apply(state, [sig(0, 0, 40)], None, CFG)
    bought = apply(state, [sig(1, 100, 0, reset=True)], None, CFG)
    assert (bought.to_tier, bought.changes[-1].reason, bought.score) == ("none", "purchase", 0.0)
    late = apply(state, [sig(2, 50, 20)], None, CFG)  # before the purchase
    assert late.score == 0.0
    after = apply(state, [sig(3, 200, 20)], None, CFG)
    assert after.to_tier == "mid"


def test_state_is_pruned_when_negligible() -> None:
    state = new_state()
    apply(state, [sig(0, 0, 5)], None, CFG)
    apply(state, [], 100 * H, CFG)
    assert state["s"] == {} and state["rules"] == {}


def test_transitions_do_not_depend_on_batching() -> None:
    signals = [sig(0, 0, 2), sig(1, 60, 14), sig(2, 120, 30), sig(3, 5 * DAY, 30)]
    together = new_state()
    all_at_once = apply(together, signals, 6 * DAY, CFG).changes
    apart = new_state()
    one_by_one = [c for s in signals for c in apply(apart, [s], None, CFG).changes]
    one_by_one += apply(apart, [], 6 * DAY, CFG).changes
    assert [(c.from_tier, c.to_tier, c.seq, c.reason) for c in all_at_once] == [
        (c.from_tier, c.to_tier, c.seq, c.reason) for c in one_by_one
    ]
    assert [c.at for c in all_at_once] == pytest.approx([c.at for c in one_by_one])
    # none -> low -> mid -> high, decays to mid and low before the 5th day, high again.
    assert [c.to_tier for c in all_at_once][:3] == ["low", "mid", "high"]
    assert "decay" in [c.reason for c in all_at_once]
