"""The detection engine, pure: every rule kind, time, order, duplicates, expiry."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from schemas.adapters import to_event
from schemas.events import Event
from schemas.rules import RuleSet
from schemas.signals import Signal
from stream.core.detectors.engine import Engine
from stream.rulesfile import load_rules
from tests.scenarios import T0, TAXONOMIES, ev, scenarios

CABLE = {"sku": "CBL-USB-C", "category": "electronics/cables"}


def engine(*rules: dict[str, Any], **defaults: Any) -> Engine:
    return Engine(RuleSet.model_validate({"defaults": defaults, "rules": list(rules)}))


def events(*bodies: dict[str, Any]) -> list[Event]:
    return [to_event(b) for b in bodies]


def run(eng: Engine, bodies: Iterable[dict[str, Any]], *, flush: bool = True) -> list[Signal]:
    state = eng.new_state()
    signals = eng.process("s", state, events(*bodies)).signals
    if flush:
        signals += eng.advance("s", state, float("inf"))
    return signals


def rule_ids(signals: list[Signal]) -> list[str]:
    return [s.rule_id for s in signals]


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


# --- the six scenarios of tests/scenarios.py on the default rules -----------------------
@pytest.mark.parametrize(
    "case",
    [
        pytest.param(case, id=f"{taxonomy or 'default'}: {case.name}")
        for taxonomy in (None, *TAXONOMIES)
        for case in scenarios(taxonomy=taxonomy)
    ],
)
def test_default_rules_get_the_playbook_scenarios_right(case: Any) -> None:
    eng = Engine(load_rules())
    by_shopper: dict[str, list[Event]] = {}
    for body in case.events:
        by_shopper.setdefault(body["shopper_id"], []).append(to_event(body))
    fired: list[Signal] = []
    for shopper, evs in by_shopper.items():
        state = eng.new_state()
        fired += eng.process(shopper, state, evs).signals
        fired += eng.advance(shopper, state, float("inf"))
    assert Counter(rule_ids(fired)) == Counter(case.fires)
    assert not set(rule_ids(fired)) & case.never


# --- single ----------------------------------------------------------------------------------
def test_single_matches_predicates_and_respects_cooldown() -> None:
    eng = engine(
        {
            "id": "buying_words",
            "kind": "single",
            "points": 8,
            "cooldown": "30m",
            "when": {"type": "search", "properties.query": {"contains_any": ["buy", "price"]}},
        },
    )
    signals = run(
        eng,
        [
            ev("s", 0, "search", query="how to choose a cable"),
            ev("s", 1, "search", query="Best PRICE usb-c"),
            ev("s", 2, "search", query="buy usb-c cable"),  # cooling down
            ev("s", 40, "search", query="buy usb-c cable"),
        ],
    )
    assert [s.at for s in signals] == [at(1), at(40)]
    assert all(s.points == 8 and len(s.anchors) == 1 for s in signals)


def test_email_click_with_product_link_regex() -> None:
    eng = engine(
        {
            "id": "email_product_click",
            "kind": "single",
            "when": {"type": "email_click", "properties.url": {"regex": "/products?/"}},
        }
    )
    signals = run(
        eng,
        [
            ev("s", 0, "email_click", url="https://shop.example/blog/x"),
            ev("s", 1, "email_click", url="https://shop.example/products/cbl"),
        ],
    )
    assert [s.at for s in signals] == [at(1)]


# --- custom events and names -----------------------------------------------------------------
def segment_track(shopper: str, minutes: float, name: str, **props: Any) -> dict[str, Any]:
    return {"type": "track", "event": name, "userId": shopper, "properties": props,
            "timestamp": at(minutes).isoformat()}  # fmt: skip


def ga4_event(shopper: str, minutes: float, name: str, **params: Any) -> dict[str, Any]:
    return {"event_name": name, "client_id": shopper, "params": params,
            "timestamp_micros": int(at(minutes).timestamp() * 1_000_000)}  # fmt: skip


def test_a_rule_matches_custom_events_by_name_from_every_source() -> None:
    eng = engine(
        {
            "id": "quiz_completed",
            "kind": "single",
            "points": 6,
            "when": {"type": "custom", "name": "Quiz Completed"},
        }
    )
    signals = run(
        eng,
        [
            segment_track("s", 0, "Quiz Completed", result="dry skin"),
            segment_track("s", 1, "Quiz Started"),
            ga4_event("s", 2, "quiz_complete"),
            {**ev("s", 3, "custom"), "name": "Quiz Completed"},
            {**ev("s", 4, "signup"), "name": "Quiz Completed"},  # not custom
        ],
    )
    assert [s.at for s in signals] == [at(0), at(3)]
    assert all(s.points == 6 for s in signals)


def test_a_rule_tells_signups_apart_by_name_and_channel() -> None:
    eng = engine(
        {
            "id": "popup_email",
            "kind": "single",
            "points": 3,
            "when": {"type": "signup", "name": {"in": ["Pop-up Email Accepted"]}},
        },
        {
            "id": "email_or_sms_signup",
            "kind": "single",
            "points": 8,
            "when": {"type": "signup", "properties.channel": ["email", "sms"]},
        },
    )
    signals = run(
        eng,
        [
            segment_track("s", 0, "Pop-up Email Accepted"),
            segment_track("s", 1, "Signed Up"),
            ga4_event("s", 2, "generate_lead"),
            segment_track("s", 3, "SMS Signup"),
            ga4_event("s", 4, "sign_up", channel="SMS"),
        ],
    )
    assert sorted((s.at, s.rule_id) for s in signals) == [
        (at(0), "email_or_sms_signup"),
        (at(0), "popup_email"),
        (at(3), "email_or_sms_signup"),
        (at(4), "email_or_sms_signup"),
    ]


def test_name_is_a_field_without_sub_fields() -> None:
    rule = {"id": "r", "kind": "single", "points": 1, "when": {"name.first": "x"}}
    with pytest.raises(ValidationError, match="'name' has no sub-fields"):
        engine(rule)


# --- sequence -------------------------------------------------------------------------------
SEQ = {
    "id": "product_then_returns",
    "kind": "sequence",
    "within": "30m",
    "same": "session",
    "steps": [{"type": "product_view"}, {"type": "page_view", "page.type": "returns"}],
}


def test_sequence_in_order_within_the_window_and_same_visit() -> None:
    signals = run(
        engine(SEQ),
        [
            ev("s", 0, "product_view", session="a", **CABLE),
            ev("s", 5, "page_view", session="a", page="returns"),
            ev("s", 40, "product_view", session="b", **CABLE),
            ev("s", 41, "page_view", session="c", page="returns"),  # another visit
            ev("s", 50, "product_view", session="d", **CABLE),
            ev("s", 90, "page_view", session="d", page="returns"),  # too late
        ],
    )
    assert [s.at for s in signals] == [at(5)]
    assert signals[0].session_id == "a"


def test_sequence_out_of_order_within_lateness_matches_once() -> None:
    bodies = [
        ev("s", 5, "page_view", session="a", page="returns"),
        ev("s", 0, "product_view", session="a", **CABLE),
    ]
    signals = run(engine(SEQ), bodies)
    assert rule_ids(signals) == ["product_then_returns"]
    in_order = run(engine(SEQ), bodies[::-1])
    assert [s.signal_id for s in signals] == [s.signal_id for s in in_order]


def test_sequence_strict_contiguity_rejects_gaps() -> None:
    strict = {**SEQ, "contiguity": "strict", "same": "shopper"}
    gap = [
        ev("s", 0, "product_view", **CABLE),
        ev("s", 1, "page_view", page="faq"),
        ev("s", 2, "page_view", page="returns"),
    ]
    assert run(engine(strict), gap) == []
    assert rule_ids(run(engine({**SEQ, "same": "shopper"}), gap)) == ["product_then_returns"]


def test_three_step_sequence() -> None:
    three = {
        **SEQ,
        "steps": [{"type": "category_view"}, {"type": "product_view"}, {"type": "add_to_cart"}],
    }
    ok = [
        ev("s", 0, "category_view", session="a"),
        ev("s", 1, "product_view", session="a", **CABLE),
        ev("s", 2, "add_to_cart", session="a", **CABLE),
    ]
    assert len(run(engine(three), ok)[0].anchors) == 3
    assert run(engine(three), ok[1:]) == []


# --- count ----------------------------------------------------------------------------------
COUNT = {
    "id": "several_products",
    "kind": "count",
    "when": {"type": "product_view"},
    "count": 3,
    "within": "10m",
    "distinct": "product.sku",
}


def test_count_distinct_products_in_window_fires_once_per_burst() -> None:
    signals = run(
        engine(COUNT),
        [
            ev("s", 0, "product_view", sku="A"),
            ev("s", 1, "product_view", sku="A"),
            ev("s", 2, "product_view", sku="B"),
            ev("s", 3, "product_view", sku="C"),
            ev("s", 4, "product_view", sku="D"),  # same burst: cooldown
            ev("s", 30, "product_view", sku="E"),
            ev("s", 45, "product_view", sku="F"),
        ],
    )
    assert [s.at for s in signals] == [at(3)]
    assert len(signals[0].anchors) == 3


def test_count_same_visit_distinct_page_types() -> None:
    rule = {
        "id": "shipping_and_returns",
        "kind": "count",
        "count": 2,
        "within": "30m",
        "when": {"type": "page_view", "page.type": ["shipping", "returns"]},
        "distinct": "page.type",
        "same": "session",
    }
    assert (
        run(
            engine(rule),
            [
                ev("s", 0, "page_view", session="a", page="shipping"),
                ev("s", 2, "page_view", session="b", page="returns"),
            ],
        )
        == []
    )
    both = run(
        engine(rule),
        [
            ev("s", 0, "page_view", session="a", page="shipping"),
            ev("s", 2, "page_view", session="a", page="returns"),
        ],
    )
    assert rule_ids(both) == ["shipping_and_returns"]


# --- absence --------------------------------------------------------------------------------
ABSENCE = {
    "id": "checkout_abandoned",
    "kind": "absence",
    "within": "30m",
    "points": 15,
    "when": {"type": "checkout_started"},
    "unless": {"type": "purchase"},
}


def test_absence_fires_at_the_deadline_with_no_further_events() -> None:
    eng = engine(ABSENCE)
    state = eng.new_state()
    assert eng.process("s", state, events(ev("s", 0, "checkout_started"))).signals == []
    assert eng.deadline(state) == at(30).timestamp()
    assert eng.advance("s", state, at(29).timestamp()) == []
    (signal,) = eng.advance("s", state, at(30).timestamp())
    assert signal.at == at(30) and signal.points == 15
    assert eng.deadline(state) is None
    assert eng.advance("s", state, at(60).timestamp()) == []  # fires once


def test_absence_is_cancelled_by_the_follow_up_even_out_of_order() -> None:
    bought = [ev("s", 0, "checkout_started"), ev("s", 10, "purchase")]
    assert run(engine(ABSENCE), bought) == []
    assert run(engine(ABSENCE), bought[::-1]) == []  # purchase arrived first
    too_late = [ev("s", 0, "checkout_started"), ev("s", 31, "purchase")]
    assert rule_ids(run(engine(ABSENCE), too_late)) == ["checkout_abandoned"]


def test_absence_fires_in_event_time_when_later_events_pass_the_deadline() -> None:
    eng = engine(ABSENCE, allowed_lateness="5m")
    state = eng.new_state()
    first = eng.process("s", state, events(ev("s", 0, "checkout_started"))).signals
    # 34 min: past the deadline but within the lateness a purchase could still arrive.
    assert (
        first + eng.process("s", state, events(ev("s", 34, "page_view", page="home"))).signals == []
    )
    (signal,) = eng.process("s", state, events(ev("s", 36, "page_view", page="home"))).signals
    assert signal.at == at(30)


def test_a_newer_checkout_supersedes_the_pending_one() -> None:
    signals = run(engine(ABSENCE), [ev("s", 0, "checkout_started"), ev("s", 5, "checkout_started")])
    assert [s.at for s in signals] == [at(35)]


@pytest.mark.parametrize("lateness", ["1s", "5m"])
def test_a_checkout_abandoned_before_the_next_one_fires_whether_or_not_the_timer_came_first(
    lateness: str,
) -> None:
    """Two checkouts an hour apart, no purchase: two abandonments. The second checkout
    used to supersede the first even though its deadline had passed, so the first
    fired only if the timer (a sweep) got to it before the second came: in a replay,
    and in a batch holding both, it was lost."""
    checkouts = [ev("s", 0, "checkout_started"), ev("s", 60, "checkout_started")]
    in_one = run(engine(ABSENCE, allowed_lateness=lateness), checkouts)
    eng = engine(ABSENCE, allowed_lateness=lateness)
    state = eng.new_state()
    eng.process("s", state, events(checkouts[0]))
    timer_first = eng.advance("s", state, at(45).timestamp())  # the sweep, at 45 min
    timer_first += eng.process("s", state, events(checkouts[1])).signals
    timer_first += eng.advance("s", state, at(200).timestamp())
    assert [s.at for s in in_one] == [s.at for s in timer_first] == [at(30), at(90)]
    assert [s.signal_id for s in in_one] == [s.signal_id for s in timer_first]


def test_an_abandoned_checkout_carries_the_cart_of_its_deadline_however_late_it_fires() -> None:
    """The cart at the deadline (30 min), not at the moment the signal fires: here after
    a cart add at 32 min and a remove at 33 (within the lateness), fired either with the next
    event (in one batch, as replay does) or by the timer first. It carried the cart of
    the firing moment, so the two ways gave different carts."""
    rule = {**ABSENCE, "actions": ["cart_recovery"]}
    bodies = [
        ev("s", -6, "add_to_cart", sku="A", category="c"),
        ev("s", -5, "add_to_cart", sku="A", category="c"),
        ev("s", 0, "checkout_started"),
        ev("s", 32, "add_to_cart", sku="B", category="c"),
        ev("s", 33, "remove_from_cart", sku="A", category="c"),
        ev("s", 36, "page_view", page="home"),
    ]
    (in_one,) = run(engine(rule, allowed_lateness="5m"), bodies)
    eng = engine(rule, allowed_lateness="5m")
    state = eng.new_state()
    assert eng.process("s", state, events(*bodies[:3])).signals == []
    (by_timer,) = eng.advance("s", state, at(31).timestamp())
    assert eng.process("s", state, events(*bodies[3:])).signals == []
    cart = {"items": [{"sku": "A", "quantity": 2, "price": 20.0, "category": "c", "name": None}],
            "value": 40.0}  # fmt: skip
    assert in_one.properties["cart"] == by_timer.properties["cart"] == cart


# --- session ---------------------------------------------------------------------------------
BLOG = {
    "id": "blog_only_visit",
    "kind": "session",
    "points": 3,
    "all": {"type": "page_view", "page.type": "blog"},
}


def test_session_rule_fires_when_the_visit_ends_by_inactivity() -> None:
    eng = engine(BLOG, session_gap="30m")
    state = eng.new_state()
    eng.process(
        "s",
        state,
        events(ev("s", 0, "page_view", page="blog"), ev("s", 10, "page_view", page="blog")),
    )
    assert eng.deadline(state) == at(40).timestamp()
    assert eng.advance("s", state, at(39).timestamp()) == []
    (signal,) = eng.advance("s", state, at(40).timestamp())
    assert signal.at == at(40) and signal.anchors[0].startswith("session:")


def test_session_boundary_by_gap_and_by_session_id() -> None:
    eng = engine(BLOG, {"id": "one_page", "kind": "session", "max_events": 1})
    signals = run(
        eng,
        [
            ev("s", 0, "page_view", page="blog"),
            ev("s", 45, "page_view", page="blog"),  # 45 min gap: a new visit
            ev("s", 46, "product_view", **CABLE),  # spoils the blog-only second visit
            ev("s", 47, "page_view", session="x", page="blog"),  # a new session id: new visit
        ],
    )
    assert sorted(rule_ids(signals)) == [
        "blog_only_visit",
        "blog_only_visit",
        "one_page",
        "one_page",
    ]


def test_an_ended_visit_stays_ended_however_the_events_are_batched() -> None:
    """Two tabs, two session ids. The first event of b ends a; a later event of a (a
    visit that ended) leaves b alone and opens nothing, so b is one visit of two pages.
    Before, a and b ended each other over and over: a one-page rule fired for both, and
    for a twice, the same signal id in two batches, which the score script took for a
    batch run again after a crash (REES46 shopper 555461918, through a live worker). And
    what fires is the same whether the timer ends a visit between two batches or not."""
    eng = engine({"id": "one_page", "kind": "session", "max_events": 1}, session_gap="30m")
    minutes = [0, 1, 2, 3, 40]
    bodies = [
        ev("s", 0, "product_view", session="a", **CABLE),
        ev("s", 1, "product_view", session="b", **CABLE),  # ends a (one page)
        ev("s", 2, "product_view", session="a", **CABLE),  # a has ended: b goes on
        ev("s", 3, "product_view", session="b", **CABLE),  # b: two pages
        ev("s", 40, "product_view", session="b", **CABLE),  # b ended at 33 (the gap)
    ]
    whole = run(eng, bodies)
    assert [s.session_id for s in whole] == ["a"]
    assert whole[0].at == at(1)  # when b's first event ended it, not at the end of a gap
    for cut in range(1, len(bodies)):
        for sweep in (minutes[cut - 1] + 0.5, 35):  # a timer tick between the two batches
            state = eng.new_state()
            parts = eng.process("s", state, events(*bodies[:cut])).signals
            parts += eng.advance("s", state, at(min(sweep, minutes[cut])).timestamp())
            parts += eng.process("s", state, events(*bodies[cut:])).signals
            parts += eng.advance("s", state, float("inf"))
            assert [s.signal_id for s in parts] == [s.signal_id for s in whole], cut


def test_a_visit_ended_by_the_gap_fires_once_however_many_of_its_events_come_after() -> None:
    """One session id, then 31 idle minutes, then two more events of it: the gap ended
    the visit at 30, and the id stays ended. The first late event ended the visit but
    left it as the current one, so the second ended it again: the same signal id
    twice, which the score script took for a batch run again after a crash and sent
    its changes twice (found by the generated shoppers of test_batching)."""
    eng = engine({"id": "one_page", "kind": "session", "max_events": 1}, session_gap="30m")
    bodies = [
        ev("s", 0, "product_view", session="a", **CABLE),
        ev("s", 31, "product_view", session="a", **CABLE),
        ev("s", 32, "product_view", session="a", **CABLE),
    ]
    whole = run(eng, bodies)
    assert [(s.session_id, s.at) for s in whole] == [("a", at(30))]
    state = eng.new_state()
    one_by_one = [s for b in bodies for s in eng.process("s", state, events(b)).signals]
    assert eng.deadline(state) is None  # no visit left open to end again
    one_by_one += eng.advance("s", state, float("inf"))
    assert [s.signal_id for s in one_by_one] == [s.signal_id for s in whole]


def test_offsite_events_do_not_break_a_visit() -> None:
    signals = run(engine(BLOG), [ev("s", 0, "page_view", page="blog"), ev("s", 1, "email_open")])
    assert rule_ids(signals) == ["blog_only_visit"]


def test_custom_events_neither_break_nor_count_in_a_visit() -> None:
    # GA4 sends scroll and user_engagement beside most pages: a blog-only visit of one
    # page is still blog-only, and still of one page.
    one_page = {"id": "one_page", "kind": "session", "max_events": 1}
    scrolls = [{**ev("s", minute, "custom"), "name": "scroll"} for minute in (1, 2)]
    signals = run(engine(BLOG, one_page), [ev("s", 0, "page_view", page="blog"), *scrolls])
    assert sorted(rule_ids(signals)) == ["blog_only_visit", "one_page"]


# --- repeat ----------------------------------------------------------------------------------
REPEAT = {
    "id": "repeat_product",
    "kind": "repeat",
    "when": {"type": "product_view"},
    "key": "product",
    "sessions": 2,
    "within": "7d",
}


def test_repeat_across_sessions_within_days() -> None:
    signals = run(
        engine(REPEAT),
        [
            ev("s", 0, "product_view", session="a", **CABLE),
            ev("s", 1, "product_view", session="a", **CABLE),  # same visit: not a repeat
            ev("s", 60 * 24, "product_view", session="b", **CABLE),
            ev("s", 60 * 25, "product_view", session="c", **CABLE),  # cooldown: once a week
        ],
    )
    assert [s.at for s in signals] == [at(60 * 24)]
    assert signals[0].sku == "CBL-USB-C"
    eight_days = run(
        engine(REPEAT),
        [
            ev("s", 0, "product_view", session="a", **CABLE),
            ev("s", 60 * 24 * 8, "product_view", session="b", **CABLE),
        ],
    )
    assert eight_days == []


# --- suppression -----------------------------------------------------------------------------
def test_suppression_scopes_and_repeated_bounces() -> None:
    eng = engine(
        {
            "id": "opted_out",
            "kind": "suppression",
            "when": {"type": "opt_out"},
            "scope": "channel",
            "duration": "3650d",
        },
        {
            "id": "bounces",
            "kind": "suppression",
            "when": {"type": "email_bounce"},
            "scope": "channel",
            "channel": "email",
            "count": 3,
            "within": "30d",
            "duration": "180d",
        },
        {
            "id": "bought",
            "kind": "suppression",
            "when": {"type": "purchase"},
            "scope": "category",
            "duration": "30d",
            "except_actions": ["feedback_request"],
        },
    )
    signals = run(
        eng,
        [
            ev("s", 0, "opt_out", channel="sms"),
            ev("s", 1, "email_bounce"),
            ev("s", 2, "email_bounce"),
            ev("s", 3, "email_bounce"),
            ev("s", 4, "purchase", **CABLE),
        ],
    )
    by_rule = {s.rule_id: s.suppression for s in signals}
    assert by_rule["opted_out"] is not None and by_rule["opted_out"].value == "sms"
    assert by_rule["bounces"] is not None and by_rule["bounces"].scope == "channel"
    bought = by_rule["bought"]
    assert bought is not None and bought.value == "electronics/cables"
    assert bought.until == at(4) + timedelta(days=30)
    assert bought.except_actions == ["feedback_request"]
    assert all(s.points == 0 for s in signals)
    two_bounces = run(eng, [ev("s", 1, "email_bounce"), ev("s", 2, "email_bounce")])
    assert two_bounces == []


# --- time, duplicates, state ---------------------------------------------------------------
def test_late_events_are_returned_not_matched() -> None:
    eng = engine(SEQ, allowed_lateness="5m")
    state = eng.new_state()
    eng.process("s", state, events(ev("s", 30, "page_view", session="a", page="home")))
    outcome = eng.process("s", state, events(ev("s", 20, "product_view", session="a", **CABLE)))
    assert [e.type for e in outcome.late] == ["product_view"]
    assert outcome.signals == []


def test_duplicates_change_nothing() -> None:
    eng = engine(SEQ, COUNT, ABSENCE, BLOG)
    bodies = [
        ev("s", 0, "product_view", session="a", sku="A"),
        ev("s", 1, "product_view", session="a", sku="B"),
        ev("s", 2, "checkout_started", session="a"),
        ev("s", 3, "page_view", session="a", page="returns"),
    ]
    state = eng.new_state()
    first = eng.process("s", state, events(*bodies))
    snapshot = json.dumps(state, sort_keys=True)
    again = eng.process("s", state, events(*bodies))
    assert again.signals == [] and again.duplicates == 4
    assert json.dumps(state, sort_keys=True) == snapshot
    assert rule_ids(first.signals) == ["product_then_returns"]


def test_same_input_gives_same_signal_ids() -> None:
    eng = Engine(load_rules())
    bodies = [body for case in scenarios() for body in case.events if body["shopper_id"] == "s4"]
    assert [s.signal_id for s in run(eng, bodies)] == [s.signal_id for s in run(eng, bodies)]


def test_state_is_pruned_and_bounded() -> None:
    eng = engine(SEQ, COUNT)
    state = eng.new_state()
    many = [ev("s", i, "product_view", session="a", sku=f"P{i}") for i in range(300)]
    eng.process("s", state, events(*many))
    for rule_state in state["r"].values():
        for buffer in rule_state.values():
            assert len(buffer) <= 64
    assert len(state["seen"]) <= 256
    # Far later, everything the windows held is gone.
    eng.process("s", state, events(ev("s", 60 * 24, "page_view", session="z", page="home")))
    assert state["r"] == {}
    assert len(json.dumps(state)) < 400


def test_ttl_covers_the_longest_window_held() -> None:
    eng = engine(REPEAT, ABSENCE, session_gap="30m", allowed_lateness="5m")
    state = eng.new_state()
    eng.process("s", state, events(ev("s", 0, "page_view", page="home")))
    assert eng.ttl(state) == pytest.approx(35 * 60)  # only the visit: gap + lateness
    eng.process("s", state, events(ev("s", 1, "product_view", session="a", **CABLE)))
    assert eng.ttl(state) == pytest.approx(7 * 86400 + 300)
