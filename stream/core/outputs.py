"""From a score result to what is emitted: tier changes and actions. Pure.

Every output has a deterministic id built from the change or signal that caused it, so
a consumer can drop duplicates, and a replay produces nothing new (scoring reports only
signals not applied before, and detection drops events it has seen).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final, NamedTuple

from schemas.outputs import (
    AudienceChange,
    CartRecovery,
    Contribution,
    Nurture,
    OutputTopic,
    SuppressionRecord,
    TierChange,
    _Out,
)
from schemas.signals import Signal
from schemas.trusted import construct
from stream.core.detectors.engine import ADVANCED
from stream.core.scoring import Change, Result, ScoreSignal

POINT_TIERS: Final = ("low", "mid", "high")
DEPTH_AUDIENCES: Final = ("viewed_product", "added_to_cart", "started_checkout")
INACTIVE: Final = "inactive"
AUDIENCE_PREFIX: Final = "audience:"
CART_RECOVERY: Final = "cart_recovery"
RETARGETING: Final = "retargeting"
RESET: Final = "reset_score"
NOT_CONTENT: Final = frozenset({CART_RECOVERY, RETARGETING, RESET, "conversion"})


class Output(NamedTuple):
    topic: OutputTopic
    key: str
    value: _Out


def to_score_signal(signal: Signal, group: int = 0) -> ScoreSignal:
    """What scoring takes of a signal; `group`: its place in the scoring order
    (`Outcome.groups`; `engine.ADVANCED` for what `Engine.advance` fired)."""
    sup = signal.suppression
    key = None
    if sup is not None:
        key = "all" if sup.scope == "all" else f"{sup.scope}:{sup.value}"
    return ScoreSignal(
        id=signal.signal_id,
        t=signal.at.timestamp(),
        points=signal.points,
        half_life=signal.half_life_seconds,
        rule=signal.rule_id,
        category=signal.category,
        reset=RESET in signal.actions,
        suppress=key,
        until=sup.until.timestamp() if sup is not None else 0.0,
        group=group,
    )


def score_signals(signals: list[Signal], groups: Mapping[str, int]) -> list[ScoreSignal]:
    """The signals as scoring takes them, each in its group (`Outcome.groups`;
    one not in `groups`, fired by `Engine.advance`, is `ADVANCED`)."""
    return [to_score_signal(s, groups.get(s.signal_id, ADVANCED)) for s in signals]


def _at(t: float) -> datetime:
    return datetime.fromtimestamp(t, tz=UTC)


def outputs_for(shopper: str, result: Result, signals: list[Signal]) -> list[Output]:
    new = set(result.new_ids)
    fresh = sorted((s for s in signals if s.signal_id in new), key=lambda s: (s.at, s.signal_id))
    by_id = {s.signal_id: s for s in fresh}
    out: list[Output] = []
    for change in result.changes:
        out += _tier_change(shopper, change, by_id.get(change.cause or ""))
    periods = Periods(result, fresh)
    out += _suppression(shopper, result, periods)
    for signal in fresh:
        t = signal.at.timestamp()
        tier = _tier_at(result, signal.signal_id, t)
        if tier != "suppressed":
            out += _signal_actions(shopper, result, signal, tier, _held(result, signal, t, periods))
    return out


class Periods:
    """When each suppression of a score call was in force: for the suppression records,
    and for the actions of a result kept from before `Result.held` existed (`_held`).
    A signal's actions are suppressed by what was in force at its time, not by what is
    at the end of the call:
    a replay's one call per shopper runs to the end of the file, so a month's suppression
    set and ended in it suppressed nothing; in the worker, a purchase suppressed the
    views before it in the same batch. Built from the result alone: the periods this
    call set (each from the signal that set it, to its `until`), and those in force
    before it (`was`): throughout the call if still in force at its end; one that ended
    in it ended at a time the result does not give (the call's time stands in for the
    record), and is taken as over for the call's signals, as before."""

    def __init__(self, result: Result, fresh: list[Signal]) -> None:
        scored = [(to_score_signal(s), s) for s in fresh if s.suppression is not None]
        started = {
            period(score.suppress, score.until): s
            for score, s in scored
            if score.suppress is not None
        }
        self.causes: dict[str, Signal] = {}  # period -> the signal that set it
        self.runs: dict[str, list[list[float]]] = {}  # key -> [start, until] periods
        for key, until in result.suppressed:
            cause = started.get(period(key, until))
            if cause is not None:
                self.causes[period(key, until)] = cause
            start = cause.at.timestamp() if cause is not None else result.at
            runs = self.runs.setdefault(key, [])
            if runs and start <= runs[-1][1]:
                runs[-1][1] = max(runs[-1][1], until)  # extended while in force
            else:
                runs.append([start, until])
        # in force before the call and still at its end: throughout
        self.earlier = {k for k in result.was if k in result.active}
        ends: dict[str, list[float]] = {
            k: [u for _, u in r if u <= result.at] for k, r in self.runs.items()
        }
        for key in result.was:
            if key not in result.active:  # ended in the call, first: its time is not known
                ends[key] = [result.at, *ends.get(key, [])]
        self.ended: list[tuple[str, float]] = []  # each end in the call, with its time
        for key in result.unsuppressed:
            times = ends.get(key)
            self.ended.append((key, times.pop(0) if times else result.at))

    def active(self, t: float) -> set[str]:
        """The suppression keys in force at `t`."""
        keys = set(self.earlier)
        keys.update(k for k, runs in self.runs.items() if any(a <= t < b for a, b in runs))
        return keys


def period(key: str, until: float) -> str:
    """A suppression period: its scope key and its end, to the millisecond."""
    return f"{key}:{until:.3f}"


def _tier_at(result: Result, signal_id: str, t: float) -> str:
    """The tier just after the signal was scored: a signal's actions carry the tier of
    their moment, not that of the end of the call (which, in a replay, is after every
    decay up to the file's end, and in the worker depends on what else the batch held).
    A result kept from before `after` existed (a batch run again across an upgrade)
    gives the tier by the signal's time `t`."""
    seq = result.after.get(signal_id)
    tier = result.from_tier
    for change in result.changes:  # in the order they happened
        if (change.seq > seq) if seq is not None else (change.at > t):
            break
        tier = change.to_tier
    return tier


def _held(result: Result, signal: Signal, t: float, periods: Periods) -> set[str]:
    """The suppressions a signal's actions obey: those in force just after it was
    scored, in the order signals are scored (a purchase scored before a view of a
    minute earlier, out of order, suppresses it, as it would in a later batch). A
    result kept from before `after` existed gives them by the signal's time."""
    if signal.signal_id in result.after:
        return set(result.held.get(signal.signal_id, ()))
    return periods.active(t)


def change_id(
    shopper: str, cause: str | None, at: datetime, from_tier: str, to_tier: str, reason: str
) -> str:
    """`<shopper>:<digest>`: a digest of what the change is (the signal that caused it,
    or none for a decay; when; from, to and why), from the fields of its record, not a
    counter. The same input gives the same id, and a shopper whose state expired (or
    was lost) and who comes back gets new ids: a counter would start again at 1, and a
    consumer that drops duplicates by id would drop real changes."""
    what = f"{cause or ''}|{at.isoformat()}|{from_tier}|{to_tier}|{reason}"
    return f"{shopper}:{hashlib.blake2b(what.encode(), digest_size=10).hexdigest()}"


def _tier_change(shopper: str, change: Change, cause: Signal | None) -> list[Output]:
    event_anchor = None
    if cause is not None:
        anchors = [a for a in cause.anchors if ":" not in a]  # event ids, not session:x
        event_anchor = anchors[-1] if anchors else None
    at = _at(change.at)
    ident = change_id(
        shopper, change.cause or None, at, change.from_tier, change.to_tier, change.reason
    )
    # The two high-volume outputs are built from values the scoring maths produced, so
    # they skip pydantic's validation (schemas.trusted; a test compares with validation).
    record = construct(
        TierChange,
        {
            "change_id": ident,
            "shopper_id": shopper,
            "from_tier": change.from_tier,
            "to_tier": change.to_tier,
            "score": round(change.score, 6),
            "at": at,
            "reason": change.reason,
            "signals": [
                construct(Contribution, {"name": r, "points": round(p, 6)}) for r, p in change.top
            ],
            "scope": "shopper",
            "cause_event_id": event_anchor,
            "cause_signal_id": cause.signal_id if cause else None,
            "merged_with": None,
        },
    )
    out = [Output(OutputTopic.TIER_CHANGES, shopper, record)]
    ops: list[tuple[str, str]] = []
    if change.from_tier in POINT_TIERS:
        ops.append(("remove", f"tier:{change.from_tier}"))
    if change.to_tier in POINT_TIERS:
        ops.append(("add", f"tier:{change.to_tier}"))
        if change.from_tier == "none":
            ops.append(("remove", INACTIVE))
    inactive = change.to_tier == "none" and change.reason == "decay"
    if change.to_tier == "suppressed" or inactive or change.reason == "purchase":
        ops += [("remove", name) for name in DEPTH_AUDIENCES]
    if inactive:
        ops.append(("add", INACTIVE))
    for op, audience in ops:
        out.append(_audience(shopper, ident, op, audience, change.to_tier, at, change.reason))
    return out


def _suppression(shopper: str, result: Result, periods: Periods) -> list[Output]:
    out: list[Output] = []
    for key, until in result.suppressed:
        scope, _, value = key.partition(":")
        cause = periods.causes.get(period(key, until))
        out.append(
            Output(
                OutputTopic.SUPPRESSION,
                shopper,
                SuppressionRecord(
                    record_id=f"{shopper}:suppress:{period(key, until)}",
                    shopper_id=shopper,
                    op="suppress",
                    scope=scope,
                    value=value or None,
                    until=_at(until),
                    at=cause.at if cause else _at(result.at),
                    rule_id=cause.rule_id if cause else None,
                    except_actions=cause.suppression.except_actions
                    if cause and cause.suppression
                    else [],
                ),
            )
        )
    for key, ended in periods.ended:
        scope, _, value = key.partition(":")
        out.append(
            Output(
                OutputTopic.SUPPRESSION,
                shopper,
                SuppressionRecord(
                    record_id=f"{shopper}:unsuppress:{period(key, ended)}",
                    shopper_id=shopper,
                    op="unsuppress",
                    scope=scope,
                    value=value or None,
                    at=_at(ended),
                ),
            )
        )
    return out


def _signal_actions(
    shopper: str, result: Result, signal: Signal, tier: str, active: set[str]
) -> list[Output]:
    if signal.category and f"category:{signal.category}" in active:
        return []  # outreach for this category is suppressed (a recent purchase)
    out: list[Output] = []
    for action in signal.actions:
        if action.startswith(AUDIENCE_PREFIX):
            name = action.removeprefix(AUDIENCE_PREFIX)
            out.append(
                _audience(shopper, signal.signal_id, "add", name, tier, signal.at, signal.rule_id)
            )
        elif action == RETARGETING:
            name = f"retarget:{signal.category}" if signal.category else "retarget"
            out.append(
                _audience(shopper, signal.signal_id, "add", name, tier, signal.at, signal.rule_id)
            )
        elif action == CART_RECOVERY:
            out += _cart_recovery(shopper, result, signal, tier, active)
        elif action not in NOT_CONTENT and tier in POINT_TIERS:
            out.append(
                Output(
                    OutputTopic.NURTURE,
                    shopper,
                    Nurture(
                        action_id=f"{signal.signal_id}:{action}",
                        shopper_id=shopper,
                        action=action,
                        tier=tier,
                        rule_id=signal.rule_id,
                        sku=signal.sku,
                        category=signal.category,
                        at=signal.at,
                    ),
                )
            )
    return out


def _audience(
    shopper: str, cause: str, op: str, name: str, tier: str, at: datetime, reason: str
) -> Output:
    """An audience change; its id is the cause (a change or signal id), the op and the name."""
    return Output(
        OutputTopic.RETARGETING,
        shopper,
        construct(
            AudienceChange,
            {
                "action_id": f"{cause}:{op}:{name}",
                "shopper_id": shopper,
                "audience": name,
                "op": op,
                "tier": tier,
                "at": at,
                "reason": reason,
            },
        ),
    )


def _cart_recovery(
    shopper: str, result: Result, signal: Signal, tier: str, active: set[str]
) -> list[Output]:
    anchor_at = signal.properties.get("anchor_at")
    checkout_at = datetime.fromisoformat(anchor_at) if anchor_at else None
    if (
        result.reset is not None
        and checkout_at is not None
        and checkout_at.timestamp() <= result.reset <= signal.at.timestamp()
    ):
        return []  # bought between starting this checkout and the trigger: never nag
    channels = sorted(k.split(":", 1)[1] for k in active if k.startswith("channel:"))
    return [
        Output(
            OutputTopic.CART_RECOVERY,
            shopper,
            CartRecovery(
                trigger_id=signal.signal_id,
                shopper_id=shopper,
                checkout_event_id=signal.anchors[0],
                checkout_at=checkout_at,
                cart=signal.properties.get("cart", {"items": [], "value": 0.0}),
                tier=tier,
                at=signal.at,
                suppressed_channels=channels,
            ),
        )
    ]
