"""The Lua script and the Python reference agree, on a real Redis, to 1e-9."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.core import scoring as reference
from stream.core.detectors.engine import ADVANCED
from stream.core.scoring import Result, ScoreConfig, ScoreSignal
from stream.state.scores import lua_source, parse_result, script_args
from tests.integration.servers import Servers

CFG = ScoreConfig(low=1.0, mid=15.0, high=35.0, hysteresis=0.1, applied_cap=20)
HALF_LIVES = [3600.0, 86400.0, 259200.0]
TOL = 1e-9
_ids = itertools.count()

signal = st.builds(
    lambda t, p, h, rule, cat, kind, group: ScoreSignal(
        id=f"sig-{next(_ids)}",
        t=t,
        points=p if kind == "points" else 0.0,
        half_life=h,
        rule=rule,
        category=cat,
        reset=kind == "reset",
        suppress={"sup_all": "all", "sup_cat": f"category:{cat}"}.get(kind),
        until=t + 7200.0,
        group=group,
    ),
    # a few shared instants too: signals of one time in one group, and in several
    t=st.one_of(
        st.floats(min_value=0, max_value=10 * 86400, allow_nan=False),
        st.sampled_from([3600.0, 7200.0, 86400.0]),
    ),
    p=st.sampled_from([1.0, 2.0, 5.0, 8.0, 10.0, 15.0, 20.0, 35.0, -3.0, 2.5]),
    h=st.sampled_from(HALF_LIVES),
    rule=st.sampled_from(["viewed", "cart", "checkout", "returns", "blog"]),
    cat=st.sampled_from([None, "electronics/cables", "apparel/tops"]),
    kind=st.sampled_from(["points"] * 12 + ["reset", "sup_all", "sup_cat"]),
    group=st.sampled_from([0, 1, 2, ADVANCED]),  # the event that fired it, or advance
)
step = st.tuples(
    st.lists(signal, max_size=6),
    st.one_of(st.none(), st.floats(min_value=0, max_value=12 * 86400, allow_nan=False)),
    st.booleans(),  # process the previous step's batch again first (a crash before sending)
    st.booleans(),  # first, the previous call again exactly (a sweep that died unsent)
)


@pytest.fixture(scope="module")
def client(servers: Servers) -> Any:
    conn = redis.Redis.from_url(servers.redis_url)
    yield conn
    conn.close()


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=TOL, abs_tol=TOL)


def _same(lua: Result, ref: Result) -> None:
    assert (lua.from_tier, lua.to_tier, lua.seq, lua.applied) == (
        ref.from_tier, ref.to_tier, ref.seq, ref.applied)  # fmt: skip
    assert _close(lua.score, ref.score) and _close(lua.at, ref.at)
    assert _close(lua.deadline, ref.deadline)
    assert _close(lua.ttl, ref.ttl)
    assert len(lua.changes) == len(ref.changes)
    for a, b in zip(lua.changes, ref.changes, strict=True):
        assert (a.from_tier, a.to_tier, a.seq, a.reason, a.cause) == (
            b.from_tier,
            b.to_tier,
            b.seq,
            b.reason,
            b.cause,
        )
        assert _close(a.score, b.score) and _close(a.at, b.at)
        assert [r for r, _ in a.top] == [r for r, _ in b.top]
    assert [r for r, _ in lua.top] == [r for r, _ in ref.top]
    assert all(_close(a, b) for (_, a), (_, b) in zip(lua.top, ref.top, strict=True))
    assert [k for k, _ in lua.suppressed] == [k for k, _ in ref.suppressed]
    assert lua.unsuppressed == ref.unsuppressed
    assert lua.new_ids == ref.new_ids
    assert _close(lua.reset, ref.reset)
    assert lua.active == ref.active
    assert lua.after == ref.after
    assert lua.held == ref.held


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=st.lists(step, min_size=1, max_size=8))
def test_lua_agrees_with_the_reference(client: Any, steps: list[Any]) -> None:
    shopper = f"prop-{next(_ids)}"
    keys = [f"prop:{{{shopper}}}:{kind}" for kind in ("score", "applied", "last")]
    script = client.register_script(lua_source())
    state = reference.new_state()
    previous: list[Any] = []
    previous_now: float | None = None
    for signals, now, again, repeat in steps:
        if repeat:  # the previous call exactly: a decay call's output comes back
            lua = parse_result(script(keys=keys, args=[script_args(previous, previous_now, CFG)]))
            _same(lua, reference.apply(state, previous, previous_now, CFG))
        # Re-send some signals of the step: they must change nothing (dedupe by id).
        batch = signals + signals[: len(signals) // 2]
        if again:  # the previous batch, run again (its output comes back), plus this one
            batch = previous + batch
        previous, previous_now = batch, now
        lua = parse_result(script(keys=keys, args=[script_args(batch, now, CFG)]))
        ref = reference.apply(state, batch, now, CFG)
        _same(lua, ref)
    stored = {k.decode(): v.decode() for k, v in client.hgetall(keys[0]).items()}
    assert stored["tier"] == state["tier"] and int(stored["seq"]) == state["seq"]
    components = {
        float(k[2:]): [float(x) for x in v.split()] for k, v in stored.items() if k.startswith("s|")
    }
    assert set(components) == set(state["s"])
    for h, (v, r) in state["s"].items():
        assert _close(components[h][0], v) and _close(components[h][1], r)
    # every other field too: a decay call writes only what moved and deletes what went
    # (rules and categories pruned, suppressions ended), which must leave what a full
    # rewrite would
    named = {kind: {k[2:] for k in stored if k.startswith(f"{kind}|")} for kind in "rcx"}
    assert named["r"] == set(state["rules"])
    assert named["x"] == set(state["x"])

    def category(key: str) -> tuple[float, str]:  # "<half-life>|<category>"
        h, cat = key.split("|", 1)
        return float(h), cat

    assert {category(k) for k in named["c"]} == {category(k) for k in state["cats"]}
    plain = {"tier", "seq", "T"} | ({"reset"} if state["reset"] is not None else set())
    assert {k for k in stored if "|" not in k} == plain
    assert _close(float(stored["T"]), state["T"] if state["T"] is not None else 0.0)
    assert client.zcard(keys[1]) == len(state["applied"]) <= CFG.applied_cap
    assert client.pttl(keys[0]) > 0


def test_a_decay_call_deletes_what_it_pruned_and_leaves_the_rest_as_written(
    client: Any,
) -> None:
    """A call with no new signal writes only the tier, seq and time, and deletes the
    components, rules, categories and suppressions that went; the rest stays as written,
    so the hash is what a full rewrite would leave. An old field it does not know goes,
    as a rewrite would drop it."""
    shopper = f"prune-{next(_ids)}"
    keys = [f"prop:{{{shopper}}}:{kind}" for kind in ("score", "applied", "last")]
    script = client.register_script(lua_source())
    brief = ScoreSignal(
        id="a", t=0.0, points=20.0, half_life=3600.0, rule="cart", category="apparel/tops",
        suppress="category:apparel/tops", until=7200.0,
    )  # fmt: skip
    lasting = ScoreSignal(id="b", t=0.0, points=10.0, half_life=259200.0, rule="viewed")
    script(keys=keys, args=[script_args([brief, lasting], None, CFG)])
    client.hset(keys[0], "legacy", "1")
    before = {k.decode(): v.decode() for k, v in client.hgetall(keys[0]).items()}
    assert {"s|3600", "r|cart", "c|3600|apparel/tops", "x|category:apparel/tops"} <= set(before)
    result = parse_result(script(keys=keys, args=[script_args([], 86400.0, CFG)]))
    after = {k.decode(): v.decode() for k, v in client.hgetall(keys[0]).items()}
    # a day on: the 1-hour class, its rule and category, and the suppression are gone
    state = reference.new_state()
    reference.apply(state, [brief, lasting], None, CFG)
    ref = reference.apply(state, [], 86400.0, CFG)
    _same(result, ref)
    assert set(after) == {"tier", "seq", "T", "s|259200", "r|viewed"}
    assert (after["s|259200"], after["r|viewed"]) == (before["s|259200"], before["r|viewed"])
    assert (after["tier"], int(after["seq"])) == (state["tier"], state["seq"])
    assert float(after["T"]) == 86400.0


def test_a_decay_call_run_again_hands_back_its_transitions_in_redis(client: Any) -> None:
    shopper = f"decay-{next(_ids)}"
    keys = [f"prop:{{{shopper}}}:{kind}" for kind in ("score", "applied", "last")]
    script = client.register_script(lua_source())

    def call(signals: list[ScoreSignal], now: float | None) -> Result:
        return parse_result(script(keys=keys, args=[script_args(signals, now, CFG)]))

    first_signal = ScoreSignal(id="s0", t=0.0, points=20.0, half_life=86400.0, rule="r")
    assert call([first_signal], None).to_tier == "mid"
    state = reference.new_state()
    reference.apply(state, [first_signal], None, CFG)
    due = reference.next_deadline(state, CFG)
    assert due is not None
    first = call([], due)
    assert [(c.from_tier, c.to_tier, c.seq) for c in first.changes] == [("mid", "low", 2)]
    again = call([], due)
    assert [(c.from_tier, c.to_tier, c.seq) for c in again.changes] == [("mid", "low", 2)]
    assert call([], due + 60).changes == []


def test_a_last_result_stored_by_the_previous_version_is_still_handed_back(
    client: Any,
) -> None:
    """Keys written before the call's time was stored ("<seq>\\n<JSON>") still work."""
    shopper = f"old-{next(_ids)}"
    keys = [f"prop:{{{shopper}}}:{kind}" for kind in ("score", "applied", "last")]
    script = client.register_script(lua_source())
    signal = ScoreSignal(id="s0", t=0.0, points=20.0, half_life=86400.0, rule="r")
    first = parse_result(script(keys=keys, args=[script_args([signal], None, CFG)]))
    seq, _now, body = client.get(keys[2]).split(b"\n", 2)
    client.set(keys[2], seq + b"\n" + body)
    again = parse_result(script(keys=keys, args=[script_args([signal], None, CFG)]))
    assert [c.seq for c in again.changes] == [c.seq for c in first.changes] == [1]
    assert again.new_ids == ["s0"]
