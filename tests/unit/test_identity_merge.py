"""The merge of an anonymous shopper's state into a known one (`stream.core.identity`,
`scoring.merge`): the score is what one shopper with both histories would have, a
purchase restarts it, the most restrictive suppression wins, and detection goes on
across the two: a chain started anonymously ends on the known id, an abandoned checkout
is cancelled by a purchase on either side or fires with both carts."""

from __future__ import annotations

import math
import zlib
from datetime import timedelta
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.events import Event
from stream.core import scoring
from stream.core.detectors.engine import Engine, cart_at
from stream.core.identity import link_of, merge_id, merge_patterns, refusal
from stream.core.scoring import ScoreConfig, ScoreSignal
from stream.rulesfile import load_rules
from stream.state.records import FORMAT, OLD_FORMAT, ZDICT_2, Record, decode, encode
from tests.scenarios import T0 as START
from tests.scenarios import ev

CFG = ScoreConfig(low=1.0, mid=15.0, high=35.0, hysteresis=0.1)
DAY = 86400.0
T0 = 1_795_000_000.0

signal_lists = st.lists(
    st.tuples(
        st.floats(0, 5 * DAY), st.sampled_from([5.0, -3.0, 10.0, 25.0]),
        st.sampled_from([DAY, 3 * DAY]),
    ),
    max_size=8,
)  # fmt: skip


def _signals(prefix: str, drawn: list[tuple[float, float, float]]) -> list[ScoreSignal]:
    """Signals of a few rules (a rule has one half-life)."""
    return [
        ScoreSignal(f"{prefix}{i}", T0 + t, p, h, f"rule-{h:.0f}-{i % 2}", "c" if i % 2 else None)
        for i, (t, p, h) in enumerate(drawn)
    ]


@settings(max_examples=200, deadline=None)
@given(signal_lists, signal_lists, st.floats(0, 6 * DAY))
def test_the_merged_score_is_that_of_both_histories_together(
    anonymous: list[Any], known: list[Any], at: float
) -> None:
    a, k = _signals("a", anonymous), _signals("k", known)
    state_a, state_k, both = scoring.new_state(), scoring.new_state(), scoring.new_state()
    scoring.apply(state_a, a, None, CFG)
    scoring.apply(state_k, k, None, CFG)
    scoring.apply(both, a + k, None, CFG)
    result = scoring.merge(state_k, state_a, T0 + at, CFG, "m:1")
    T = result.at
    assert max(t for t in (T0 + at, both["T"]) if t is not None) == T
    assert math.isclose(scoring.score_at(state_k, T), scoring.score_at(both, T), abs_tol=0.02)
    for rule in both["rules"]:
        mine = state_k["rules"].get(rule)
        theirs = both["rules"][rule]
        value = scoring.decay(mine[0], mine[1], mine[2], T) if mine else 0.0
        assert math.isclose(value, scoring.decay(theirs[0], theirs[1], theirs[2], T), abs_tol=0.02)


def test_the_merge_takes_the_tier_again_with_reason_merge() -> None:
    anonymous, known = scoring.new_state(), scoring.new_state()
    scoring.apply(anonymous, [ScoreSignal("a1", T0, 30.0, 3 * DAY, "added_to_cart")], None, CFG)
    scoring.apply(known, [ScoreSignal("k1", T0 + 60, 10.0, 3 * DAY, "viewed")], None, CFG)
    assert known["tier"] == "low"
    result = scoring.merge(known, anonymous, T0 + 120, CFG, "m:abc")
    assert [(c.from_tier, c.to_tier, c.reason, c.cause) for c in result.changes] == [
        ("low", "high", "merge", "m:abc")
    ]
    # the same merge again from the same states gives the same change (its id's inputs)
    again_a, again_k = scoring.new_state(), scoring.new_state()
    scoring.apply(again_a, [ScoreSignal("a1", T0, 30.0, 3 * DAY, "added_to_cart")], None, CFG)
    scoring.apply(again_k, [ScoreSignal("k1", T0 + 60, 10.0, 3 * DAY, "viewed")], None, CFG)
    assert scoring.merge(again_k, again_a, T0 + 120, CFG, "m:abc").changes == result.changes


def test_points_older_than_the_other_sides_purchase_do_not_come_along() -> None:
    anonymous, known = scoring.new_state(), scoring.new_state()
    scoring.apply(anonymous, [ScoreSignal("a1", T0, 30.0, 3 * DAY, "added_to_cart")], None, CFG)
    scoring.apply(known, [ScoreSignal("k1", T0 + 60, 0.0, DAY, "purchase", reset=True),
                          ScoreSignal("k2", T0 + 90, 2.0, DAY, "viewed")], None, CFG)  # fmt: skip
    scoring.merge(known, anonymous, T0 + 120, CFG, "m:1")
    assert math.isclose(scoring.score_at(known, T0 + 120), 2.0 * 2 ** (-30 / DAY))
    # the other way round: the anonymous side bought after all of the known side's points
    anonymous, known = scoring.new_state(), scoring.new_state()
    scoring.apply(known, [ScoreSignal("k1", T0, 30.0, 3 * DAY, "added_to_cart")], None, CFG)
    scoring.apply(anonymous, [ScoreSignal("a1", T0 + 60, 0.0, DAY, "purchase", reset=True)],
                  None, CFG)  # fmt: skip
    scoring.merge(known, anonymous, T0 + 120, CFG, "m:2")
    assert known["reset"] == T0 + 60 and scoring.score_at(known, T0 + 120) == 0.0


def test_the_most_restrictive_suppression_wins() -> None:
    anonymous, known = scoring.new_state(), scoring.new_state()
    until = T0 + 3650 * DAY
    scoring.apply(anonymous, [ScoreSignal("a1", T0, 0.0, DAY, "spam", suppress="all", until=until),
                              ScoreSignal("a2", T0, 0.0, DAY, "optout", suppress="channel:email",
                                          until=T0 + DAY)], None, CFG)  # fmt: skip
    scoring.apply(known, [ScoreSignal("k1", T0, 40.0, DAY, "added_to_cart"),
                          ScoreSignal("k2", T0, 0.0, DAY, "optout", suppress="channel:email",
                                      until=T0 + 10 * DAY)], None, CFG)  # fmt: skip
    result = scoring.merge(known, anonymous, T0 + 60, CFG, "m:1")
    assert known["tier"] == "suppressed"
    assert known["x"] == {"all": until, "channel:email": T0 + 10 * DAY}
    assert result.suppressed == [("all", until)]  # the email opt-out ended later on K already
    assert [(c.to_tier, c.reason) for c in result.changes] == [("suppressed", "suppression")]


ENGINE = Engine(load_rules())


def _run(shopper: str, state: dict[str, Any], *bodies: dict[str, Any]) -> list[str]:
    events = [Event.model_validate(b) for b in bodies]
    return [s.rule_id for s in ENGINE.process(shopper, state, events).signals]


def test_a_chain_started_anonymously_ends_on_the_known_id() -> None:
    anonymous, known = ENGINE.new_state(), ENGINE.new_state()
    _run("a", anonymous, ev("a", 0, "product_view", session="v1", sku="S1",
                            category="Returns-Risk/shoes"))  # fmt: skip
    _run("k", known, ev("k", 1, "page_view", session="v1", page="home"))
    merge_patterns(ENGINE, known, anonymous)
    fired = _run("k", known, ev("k", 2, "page_view", session="v1", page="returns"))
    assert "product_then_returns" in fired
    # without the merge, the known id alone fires nothing of the kind
    alone = ENGINE.new_state()
    _run("k", alone, ev("k", 1, "page_view", session="v1", page="home"))
    assert "product_then_returns" not in _run(
        "k", alone, ev("k", 2, "page_view", session="v1", page="returns")
    )


def test_an_anonymous_checkout_is_cancelled_by_a_purchase_of_the_known_id() -> None:
    anonymous, known = ENGINE.new_state(), ENGINE.new_state()
    _run("a", anonymous, ev("a", 0, "add_to_cart", sku="S1"), ev("a", 1, "checkout_started"))
    _run("k", known, ev("k", 5, "purchase", sku="S1"))
    merge_patterns(ENGINE, known, anonymous)
    assert known["r"].get("checkout_abandoned", {}).get("pending", []) == []
    assert "checkout_abandoned" not in [s.rule_id for s in ENGINE.advance("k", known, 2e9)]
    # without the purchase, it would have fired
    anonymous = ENGINE.new_state()
    _run("a", anonymous, ev("a", 0, "add_to_cart", sku="S1"), ev("a", 1, "checkout_started"))
    assert "checkout_abandoned" in [s.rule_id for s in ENGINE.advance("a", anonymous, 2e9)]


def test_an_anonymous_checkout_fires_on_the_known_id_with_both_carts() -> None:
    anonymous, known = ENGINE.new_state(), ENGINE.new_state()
    _run("a", anonymous, ev("a", 0, "add_to_cart", sku="S1"), ev("a", 1, "checkout_started"))
    _run("k", known, ev("k", -60, "add_to_cart", sku="S2"))
    merge_patterns(ENGINE, known, anonymous, (None, None))
    fired = [s for s in ENGINE.advance("k", known, 2e9) if s.rule_id == "checkout_abandoned"]
    assert len(fired) == 1 and fired[0].shopper_id == "k"
    assert sorted(i["sku"] for i in fired[0].properties["cart"]["items"]) == ["S1", "S2"]


def test_the_decisions_of_a_merge_request() -> None:
    assert refusal(None, "k", "identify", None, T0) is None
    assert refusal({"into": ["k", T0, "m"]}, "k", "identify", None, T0) == "duplicate"
    assert refusal({"into": ["k2", T0, "m"]}, "k", "identify", None, T0) == "conflict"
    assert refusal({"known": True}, "k", "identify", None, T0) == "known"
    assert refusal({"known": True}, "k", "alias", None, T0) is None
    assert refusal(None, "k", "identify", T0 + 1, T0) == "forgotten"
    assert refusal({"refused": ["k"]}, "k", "identify", None, T0) == "capped"
    assert refusal({"ids": {"k": ["m", T0]}}, "k", "alias", None, T0) == "loop"
    assert merge_id("a", "k", T0) == merge_id("a", "k", T0) != merge_id("k", "a", T0)
    assert merge_id("a", "k", T0) != merge_id("a", "k", T0 + 1)  # linked again later


def test_which_events_link_two_ids() -> None:
    identify = Event.model_validate({**ev("k", 0, "identify"), "anonymous_id": "a"})
    view = Event.model_validate({**ev("k", 0, "page_view"), "anonymous_id": "a"})
    alone = Event.model_validate(ev("k", 0, "page_view"))
    assert link_of(identify) == ("a", "k", "identify")
    assert link_of(view) == ("a", "k", "implicit")
    assert link_of(alone) is None


def test_records_are_format_3_with_or_without_an_identity_and_format_2_is_read() -> None:
    plain = Record(ENGINE.new_state(), scoring.new_state())
    assert encode(plain)[0] == FORMAT == 3
    linked = Record(ENGINE.new_state(), scoring.new_state(), None, {"into": ["k", T0, "m:1"]})
    raw = encode(linked)
    assert decode(raw, scoring.new_state()).identity == {"into": ["k", T0, "m:1"]}
    assert decode(encode(plain), scoring.new_state()).identity is None
    # a record written on 2026-12-05 (format 2: the field names alone in the dictionary)
    state = ENGINE.new_state()
    _run("s", state, ev("s", 0, "product_view", sku="S1", category="shoes"))
    body = orjson.dumps([state, {"tier": "low", "T": T0, "s": {"259200.0": [0.5, T0]}}, None])
    packer = zlib.compressobj(6, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, ZDICT_2)
    old = bytes([OLD_FORMAT]) + packer.compress(body) + packer.flush()
    read = decode(old, scoring.new_state())
    assert read.patterns == state and read.score["s"] == {259200.0: [0.5, T0]}
    assert len(encode(read)) < len(old)  # the skeleton in format 3's dictionary


def test_a_purchase_on_one_side_empties_what_the_other_put_in_the_cart_before() -> None:
    anonymous, known = ENGINE.new_state(), ENGINE.new_state()
    _run("k", known, ev("k", 0, "add_to_cart", sku="X"))
    _run("a", anonymous, ev("a", 10, "purchase", sku="Y"), ev("a", 80, "page_view", page="home"))
    assert "cartlog" not in anonymous  # the purchase is settled on its side
    bought = (START + timedelta(minutes=10)).timestamp()
    merge_patterns(ENGINE, known, anonymous, (None, bought))
    assert cart_at(known, bought + 1) == {}
    assert "X" in cart_at(known, bought - 1)
