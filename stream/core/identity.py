"""Identity stitching: an anonymous shopper merged into a known one. Pure.

An `identify` (or `alias`) event, or any event that carries an `anonymous_id` beside a
known `shopper_id`, links the anonymous id A to the known id K. From then on A's state
lives in K's profile: its score components, partial sequences, counts, cart and
suppressions, and its audience memberships.

The worker moves the state through intent.events, so that one owner holds each profile
at any time (`stream.worker.identity`); replay merges in memory at the link's event
time. Both use what is here:

- `merge_id`: one id per link (A, K, and the link's event time), from which every
  output of the merge takes its id, so a merge applied again changes nothing and sends
  the same ids, and a link made again after A's redirect expired is a new merge;
- `merge_patterns`: detection state of A into K's;
- `stream.core.scoring.merge`: score state of A into K's, with a tier change of reason
  `merge`;
- `identity_outputs`: A's tier and audiences leaving, K's audiences arriving.

A profile's record carries its identity (`Record.identity`, None for most shoppers):

    {"known": true,                      K: a known id (never merged into another one,
                                         except by an alias)
     "ids": {A: [merge id, at], ...},    the anonymous ids merged into K
     "into": [K, at, merge id],          A: its state moved to K; A's later events go
                                         there
     "refused": [K, ...]}                A: profiles that refused it (full)
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any, Final

from schemas.events import Event
from schemas.outputs import OutputTopic, TierChange
from schemas.trusted import construct
from stream.core.detectors.absence import AbsenceDetector
from stream.core.detectors.base import BUFFER_CAP
from stream.core.detectors.engine import SEEN_CAP, Engine, State
from stream.core.detectors.repeat import MAX_KEYS
from stream.core.detectors.session import CLOSED_CAP
from stream.core.outputs import (
    DEPTH_AUDIENCES,
    INACTIVE,
    POINT_TIERS,
    Output,
    _audience,
    change_id,
    outputs_for,
)
from stream.core.scoring import Result

MERGE: Final = "merge"  # the reason of a merge's tier changes and audience moves
KINDS: Final = ("identify", "alias", "implicit")  # how a link was made
MAX_HOPS: Final = 4  # a hand-over re-sent along aliases at most this often


def merge_id(anonymous: str, known: str, at: float) -> str:
    """The id of the merge of `anonymous` into `known` by the link of event time `at`."""
    what = f"{anonymous}\x1f{known}\x1f{at:.6f}"
    return f"m:{hashlib.blake2b(what.encode(), digest_size=10).hexdigest()}"


def link_of(event: Event) -> tuple[str, str, str] | None:
    """(anonymous id, known id, kind) when the event links two ids, else None."""
    anonymous = event.anonymous_id
    if anonymous is None or anonymous == event.shopper_id:
        return None
    kind = event.type if event.type in ("identify", "alias") else "implicit"
    return anonymous, event.shopper_id, kind


def refusal(
    identity: dict[str, Any] | None, known: str, kind: str, forgotten: float | None, at: float
) -> str | None:
    """Why the shopper with this identity cannot merge into `known` now (an outcome of
    `intent_identity_merges_total`), or None if it can."""
    identity = identity or {}
    into = identity.get("into")
    if into is not None:
        return "duplicate" if into[0] == known else "conflict"
    if forgotten is not None and forgotten >= at:
        return "forgotten"
    if known in identity.get("refused", ()):
        return "capped"
    if known in identity.get("ids", {}):
        return "loop"  # `known` was merged into this profile: it would go round
    if kind != "alias" and (identity.get("known") or identity.get("ids")):
        return "known"  # two known ids merge only by an explicit alias
    return None


# --- detection state ---------------------------------------------------------------------
def merge_patterns(
    engine: Engine,
    state: State,
    other: State,
    resets: tuple[float | None, float | None] = (None, None),
) -> None:
    """Merge `other` (A's detection state) into `state` (K's), in place: recent event
    ids, the visit, every rule's partial matches and cooldowns, and the cart. A chain
    that A started can end with K's events; A's pending checkout is cancelled by a
    purchase either side made, and otherwise fires on K with the merged cart.
    `resets`: the time of each side's last purchase (their score states'), K's first."""
    _merge_cart(state, other, resets)
    marks = [w for w in (state.get("wm"), other.get("wm")) if w is not None]
    state["wm"] = max(marks) if marks else None
    seen = {eid: ts for ts, eid in other.get("seen", [])}
    seen.update({eid: ts for ts, eid in state.get("seen", [])})
    state["seen"] = sorted([ts, eid] for eid, ts in seen.items())[-SEEN_CAP:]
    _merge_visits(state.setdefault("ses", {}), other.get("ses", {}))
    rules = state.setdefault("r", {})
    for rule_id, theirs in other.get("r", {}).items():
        detector = engine.by_id.get(rule_id)
        if detector is None:
            continue  # a rule removed since A's state was saved
        mine = rules.setdefault(rule_id, {})
        _merge_rule(mine, theirs)
        if isinstance(detector, AbsenceDetector):
            _cancel_pending(mine, detector.rule_.within)


def _merge_visits(mine: dict[str, Any], theirs: dict[str, Any]) -> None:
    """The same visit on both sides (the same session id) is one; of two different ones
    (visits without a session id have a key of their own start time, so they are never
    the same) the later stays open, and the other counts as ended, without firing."""
    done = [*theirs.get("done", []), *mine.get("done", [])]
    cur, other = mine.get("cur"), theirs.get("cur")
    if other is not None:
        if cur is None:
            mine["cur"] = cur = _copy(other)
        elif cur["k"] == other["k"]:
            cur["s"], cur["l"] = min(cur["s"], other["s"]), max(cur["l"], other["l"])
            cur["n"] += other["n"]
            for rule_id, flags in other["r"].items():
                mine_flags = cur["r"].setdefault(rule_id, [True, True])
                cur["r"][rule_id] = [mine_flags[0] and flags[0], mine_flags[1] and flags[1]]
        else:
            ended = other if other["l"] <= cur["l"] else cur
            if ended is cur:
                mine["cur"] = _copy(other)
            if not str(ended["k"]).startswith("gap-"):
                done.append(str(ended["k"]))
    if done:
        mine["done"] = list(dict.fromkeys(done))[-CLOSED_CAP:]


def _merge_rule(mine: dict[str, Any], theirs: dict[str, Any]) -> None:
    """One rule's state: buffers united by event id in time order, firings and
    pending deadlines united, cooldowns at their latest."""
    for name, value in theirs.items():
        held = mine.get(name)
        if held is None:
            mine[name] = _copy(value)
        elif name == "cd":
            for key, until in value.items():
                held[key] = max(held.get(key, until), until)
        elif name == "keys":  # repeat: value -> [[session, ts], ...]
            for key, sessions in value.items():
                known = {s for s, _ in held.get(key, [])}
                held[key] = [*held.get(key, []), *(s for s in sessions if s[0] not in known)]
            while len(held) > MAX_KEYS:
                del held[next(iter(held))]
        elif isinstance(held, dict):  # sequence `fired`: event id -> ts
            for key, item in value.items():
                held.setdefault(key, item)
        elif name == "fired":  # count: event ids
            held.extend(eid for eid in value if eid not in held)
        elif name == "seen":  # absence: [ts, key] of `unless` events
            mine[name] = sorted([*held, *value])[-64:]
        else:  # buf, pending, hits: [ts, id, ...] items
            ids = {item[1] for item in held}
            items = sorted([*held, *(i for i in value if i[1] not in ids)], key=_by_time)
            mine[name] = items[-BUFFER_CAP:] if name == "buf" else items


def _cancel_pending(st: dict[str, Any], within: float) -> None:
    """An absence's pending `when` events against the `unless` events of both sides,
    and of two pending for one key, the newer supersedes the older (as one shopper's
    stream would have it) unless the older was due before the newer came."""
    pending = st.get("pending")
    if not pending:
        return
    seen = st.get("seen", [])
    kept = [
        p for p in pending if not any(k == p[2] and p[0] <= ts <= p[0] + within for ts, k in seen)
    ]
    latest: dict[str, float] = {}
    for ts, _, key in kept:
        latest[key] = max(latest.get(key, ts), ts)
    st["pending"] = [p for p in kept if p[0] == latest[p[2]] or p[0] + within <= latest[p[2]]]


def _merge_cart(state: State, other: State, resets: tuple[float | None, float | None]) -> None:
    """Cart events in time order (a purchase on either side empties what came before
    it); the settled carts add up per SKU, except a side whose events are all older
    than the other's last purchase (called before the watermarks merge)."""
    mine, theirs = resets
    log = [*state.get("cartlog", []), *other.get("cartlog", [])]
    # Each side's last purchase empties what the other side put in the cart before it.
    log += [[t, "purchase"] for t in (mine, theirs) if t is not None and any(e[0] < t for e in log)]
    log.sort(key=lambda e: e[0])
    if log:
        state["cartlog"] = log
    if mine is not None and other.get("wm") is not None and mine > other["wm"]:
        return  # A's cart predates K's last purchase
    cart: dict[str, list[Any]] = state.get("cart", {})
    if theirs is not None and state.get("wm") is not None and theirs > state["wm"]:
        cart = {}  # K's cart predates A's last purchase
    for sku, item in other.get("cart", {}).items():
        if sku in cart:
            cart[sku][0] += item[0]
        else:
            cart[sku] = list(item)
    if cart:
        state["cart"] = cart
    else:
        state.pop("cart", None)


def _by_time(item: list[Any]) -> tuple[Any, Any]:
    return item[0], item[1]


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


# --- outputs --------------------------------------------------------------------------------
def leaving(
    anonymous: str, known: str, tier: str, audiences: list[str], mid: str, at: float
) -> list[Output]:
    """What A's merge sends for A: its tier left (a tier change to none, reason `merge`)
    and every audience it was in removed."""
    when = datetime.fromtimestamp(at, tz=UTC)
    out: list[Output] = []
    if tier != "none":
        record = construct(
            TierChange,
            {
                "change_id": change_id(anonymous, mid, when, tier, "none", MERGE),
                "shopper_id": anonymous,
                "from_tier": tier,
                "to_tier": "none",
                "score": 0.0,
                "at": when,
                "reason": MERGE,
                "signals": [],
                "scope": "shopper",
                "merged_with": known,
            },
        )
        out.append(Output(OutputTopic.TIER_CHANGES, anonymous, record))
    for name in audiences:
        out.append(_audience(anonymous, mid, "remove", name, "none", when, MERGE))
    return out


def merged(known: str, anonymous: str, result: Result, mid: str) -> list[Output]:
    """The outputs of a merge's score result for the profile: its tier changes (those the
    merge made name the anonymous id in `merged_with`) and the suppressions it took on."""
    made = {
        change_id(known, mid, datetime.fromtimestamp(c.at, tz=UTC), c.from_tier, c.to_tier,
                  c.reason)
        for c in result.changes
        if c.cause == mid
    }  # fmt: skip
    out = []
    for output in outputs_for(known, result, []):
        value = output.value
        if isinstance(value, TierChange) and value.change_id in made:
            output = output._replace(value=value.model_copy(update={"merged_with": anonymous}))
        out.append(output)
    return out


def arriving(known: str, tier: str, audiences: list[str], mid: str, at: float) -> list[Output]:
    """A's audiences (not its tier's: K's tier has its own) added to K; the depth
    audiences only if K is not suppressed, `inactive` only if K holds no tier."""
    when = datetime.fromtimestamp(at, tz=UTC)
    out: list[Output] = []
    for name in audiences:
        if name.startswith("tier:"):
            continue
        if name in DEPTH_AUDIENCES and tier == "suppressed":
            continue
        if name == INACTIVE and tier in (*POINT_TIERS, "suppressed"):
            continue
        out.append(_audience(known, mid, "add", name, tier, when, MERGE))
    return out
