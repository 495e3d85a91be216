"""The scoring maths: the one implementation, run by the partition's owner in memory
(the worker) and by replay.

score(T) = sum_i points_i * 2^(-(T - t_i) / h_i)

kept as one component per half-life class h: (v, r) means "v points at time r", so an
update is O(1) and order does not matter: a signal at t <= r adds p * 2^(-(r - t)/h),
one at t > r moves the component to t first. Rules and categories keep components the
same way (for the top contributors and per-category scores).

One call, `apply`, takes every new signal of one shopper (possibly none: a sweep) and
returns the tier transitions. The state is a plain dict, stored in the shopper's record
(`stream.state.records`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

TIERS: Final = ("none", "low", "mid", "high")
SUPPRESSED: Final = "suppressed"
ALL: Final = "all"  # the suppression scope key that suppresses the shopper
EPSILON: Final = 0.01  # points below this are negligible: pruned, and the TTL ends there
BISECT_STEPS: Final = 60  # demotion time to (64 half-lives) / 2^60: far below a microsecond
NEWTON_STEPS: Final = 100  # at most; a crossing takes a handful
RESOLUTION: Final = 1e-6  # seconds: the smallest Newton step (a few ulps of an epoch time)
LN2: Final = 0.6931471805599453
MIN_TTL: Final = 3600.0  # keep even an empty score an hour (a burst of late signals)
TOP: Final = 5  # contributors listed on a tier change


class ScoreSignal(NamedTuple):
    id: str
    t: float  # epoch seconds (event time)
    points: float
    half_life: float
    rule: str
    category: str | None = None
    reset: bool = False  # a purchase: earlier points no longer count
    suppress: str | None = None  # scope key: "all", "channel:email", "category:x"
    until: float = 0.0  # with `suppress`: epoch seconds
    # The order signals are scored in: by group, then time. A group is what one event
    # fired (`Outcome.groups`, in the order the events came), so a call scores them as
    # calls event by event would, and the changes do not depend on the batching: two
    # events of one instant are two evaluations, and an absence fired late (after the
    # allowed lateness) counts after the events scored before it fired. Signals of one
    # group and time are applied together, then the tier is taken (a purchase restarts
    # the score before its event's tier is taken).
    group: int = 0


@dataclass(frozen=True, slots=True)
class ScoreConfig:
    low: float
    mid: float
    high: float
    hysteresis: float
    applied_cap: int = 1000  # signal ids remembered per shopper (dedupe)

    def threshold(self, tier: str) -> float:
        return {"low": self.low, "mid": self.mid, "high": self.high}[tier]


class Change(NamedTuple):
    """One tier transition, at the event time it happened."""

    from_tier: str
    to_tier: str
    score: float
    at: float
    seq: int
    reason: str
    top: list[tuple[str, float]]
    cause: str | None = None  # the last signal applied at that time (None: decay)


@dataclass
class Result:
    from_tier: str
    to_tier: str
    score: float
    at: float
    seq: int
    deadline: float | None
    ttl: float
    applied: int
    changes: list[Change] = field(default_factory=list)
    top: list[tuple[str, float]] = field(default_factory=list)
    suppressed: list[tuple[str, float]] = field(default_factory=list)  # (scope key, until)
    unsuppressed: list[str] = field(default_factory=list)
    new_ids: list[str] = field(default_factory=list)  # signals applied now (not duplicates)
    reset: float | None = None  # time of the last purchase
    active: list[str] = field(default_factory=list)  # suppression scope keys in force
    was: list[str] = field(default_factory=list)  # ... and those in force before the call
    # each new signal -> `seq` just after it was scored (the tier its actions carry)
    after: dict[str, int] = field(default_factory=dict)
    # each new signal -> the suppression scope keys in force just after it was scored
    # (those its actions obey), when there are any
    held: dict[str, list[str]] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def decay(v: float, r: float, h: float, t: float) -> float:
    return float(v * 2.0 ** (-(t - r) / h))


def _add(comp: list[float] | None, p: float, t: float, h: float) -> list[float]:
    if comp is None:
        return [p, t]
    v, r = comp
    if t <= r:
        return [v + p * 2.0 ** (-(r - t) / h), r]
    return [v * 2.0 ** (-(t - r) / h) + p, t]


def new_state() -> dict[str, Any]:
    return {
        "tier": "none",
        "seq": 0,
        "reset": None,
        "T": None,
        "s": {},
        "rules": {},
        "cats": {},
        "x": {},
        "applied": {},
        # (seq after it, Result, now) of the last call that applied signals, or of the
        # last decay call that changed something: handed back when that call comes again
        "last": None,
    }


def score_at(state: dict[str, Any], t: float) -> float:
    return _score_with(state, sorted(state["s"]), t)


def _score_with(state: dict[str, Any], hs: list[float], t: float) -> float:
    """The score at t, summed over the half-lives `hs` in order (as the script does)."""
    total = 0.0
    components = state["s"]
    for h in hs:
        v, r = components[h]
        total += v * 2.0 ** (-(t - r) / h)
    return float(total)


def tier_for(score: float, previous: str, cfg: ScoreConfig) -> str:
    """Enter a tier at its threshold; leave it only `hysteresis` (a fraction) below."""
    up = "none"
    for tier in TIERS[1:]:
        if score >= cfg.threshold(tier):
            up = tier
    rank = TIERS.index(previous) if previous in TIERS else 0
    if TIERS.index(up) >= rank:
        return up
    for tier in reversed(TIERS[1 : rank + 1]):
        if score >= cfg.threshold(tier) * (1.0 - cfg.hysteresis):
            return tier
    return "none"


def demotion_time(state: dict[str, Any], tier: str, at: float, cfg: ScoreConfig) -> float | None:
    """When the score, decaying from `at`, falls below the tier's lower bound: the first
    time (to within `RESOLUTION`) at which it is strictly below."""
    if tier not in TIERS[1:] or not state["s"]:
        return None
    floor = cfg.threshold(tier) * (1.0 - cfg.hysteresis)
    hs = sorted(state["s"])  # the summation order, as the script sums
    components = state["s"]
    if any(components[h][0] < 0 for h in hs):
        return _bisect(state, hs, at, floor)
    # With every component positive the score is a convex, decreasing sum of exponentials:
    # Newton's method started left of the crossing climbs to it without overshooting.
    # Each component alone crosses `floor` at r + h * log2(v / floor); the sum is still
    # above it at the latest of those, so that is a start left of the crossing (and the
    # crossing itself when one component holds all the points).
    t = at
    for h in hs:
        v, r = components[h]
        if v > floor:
            t = max(t, r + h * (math.log(v / floor) / LN2))
    for _ in range(NEWTON_STEPS):
        total = 0.0
        slope = 0.0
        for h in hs:
            v, r = components[h]
            term = v * 2.0 ** (-(t - r) / h)
            total += term
            slope += term / h
        if total < floor:
            return float(t)
        t += max((total - floor) / (slope * LN2), RESOLUTION)
    return _bisect(state, hs, at, floor)  # not reached in practice: a guarantee


def _bisect(state: dict[str, Any], hs: list[float], at: float, floor: float) -> float | None:
    """The crossing by bisection: for scores with negative components (not convex)."""
    lo = at
    hi = at + 64.0 * hs[-1]
    if _score_with(state, hs, hi) >= floor:
        return None  # negative points hold it up; it will not decay out of the tier
    for _ in range(BISECT_STEPS):
        mid = lo + (hi - lo) / 2.0
        if _score_with(state, hs, mid) < floor:
            hi = mid
        else:
            lo = mid
    return float(hi)


def next_deadline(state: dict[str, Any], cfg: ScoreConfig) -> float | None:
    """The next time the tier changes with no new signal: a demotion or a suppression end."""
    deadline = demotion_time(state, state["tier"], state["T"], cfg)
    for until in state["x"].values():
        deadline = until if deadline is None else min(deadline, until)
    return deadline


MAX_STEPS: Final = 16  # decay transitions evaluated in one call (none < low < mid < high)


def apply(
    state: dict[str, Any],
    signals: list[ScoreSignal],
    now: float | None,
    cfg: ScoreConfig,
    *,
    trace: list[tuple[float, float]] | None = None,
) -> Result:
    """Apply new signals (deduplicated by id) by group, then event time, evaluating the
    tier after each group and time, and at every decay crossing in between, then up to
    `now`. The transitions never depend on how signals were batched. `trace`, if given,
    gets (time, score) of each evaluation after a group: the score the tier was taken
    from (the backtest report's thresholds)."""
    previous = state["tier"]
    seq_before = state["seq"]
    was = sorted(state["x"])
    duplicates: list[str] = []  # applied by an earlier call
    new_ids: list[str] = []
    suppressed: list[tuple[str, float]] = []
    unsuppressed: list[str] = []
    changes: list[Change] = []
    fresh: list[ScoreSignal] = []
    for sig in sorted(signals, key=lambda s: (s.group, s.t, s.id)):
        if sig.id not in state["applied"]:
            state["applied"][sig.id] = sig.t
            new_ids.append(sig.id)
            fresh.append(sig)
        elif sig.id not in new_ids:
            duplicates.append(sig.id)
    after: dict[str, int] = {}
    held: dict[str, list[str]] = {}
    i = 0
    while i < len(fresh):
        t, g = fresh[i].t, fresh[i].group
        if state["T"] is not None and t > state["T"]:
            _advance(state, t, cfg, changes, unsuppressed)
        group = []
        while i < len(fresh) and fresh[i].group == g and fresh[i].t == t:
            group.append(fresh[i])
            i += 1
        reset_seen = False
        for sig in group:
            if sig.suppress is not None and state["x"].get(sig.suppress, float("-inf")) < sig.until:
                state["x"][sig.suppress] = sig.until
                suppressed.append((sig.suppress, sig.until))
            if sig.reset:
                if state["reset"] is None or sig.t > state["reset"]:
                    state["reset"] = sig.t
                    state["s"], state["rules"], state["cats"] = {}, {}, {}
                    reset_seen = True
                continue
            if state["reset"] is not None and sig.t < state["reset"]:
                continue  # earlier than the purchase that reset the score
            if sig.points == 0:
                continue
            h = sig.half_life
            state["s"][h] = _add(state["s"].get(h), sig.points, sig.t, h)
            rule = state["rules"].get(sig.rule)
            state["rules"][sig.rule] = [*_add(rule[:2] if rule else None, sig.points, sig.t, h), h]
            if sig.category:
                key = f"{h}|{sig.category}"
                state["cats"][key] = _add(state["cats"].get(key), sig.points, sig.t, h)
        if state["T"] is None or t > state["T"]:
            state["T"] = t
        score = _evaluate(
            state, cfg, changes, unsuppressed, "purchase" if reset_seen else "signal", group[-1].id
        )
        if trace is not None:
            trace.append((state["T"], score))
        keys = sorted(state["x"])
        for sig in group:
            after[sig.id] = state["seq"]
            if keys:
                held[sig.id] = keys
    if now is not None:
        if state["T"] is None:
            state["T"] = now
        elif now > state["T"]:
            _advance(state, now, cfg, changes, unsuppressed)
            state["T"] = now
            _evaluate(state, cfg, changes, unsuppressed, "decay", None)
    result = _result(state, cfg, previous, was, changes, suppressed, unsuppressed, new_ids)
    result.after, result.held = after, held
    last = state["last"]
    decay = not signals and now is not None
    if last is not None and last[0] == seq_before:
        if duplicates and set(duplicates) <= set(last[1].new_ids):
            result = _merged(last[1], result)
        elif decay and not changes and not unsuppressed and last[2] == now:
            # The same decay call again: the sweep's index entry was not moved on (a
            # crash before its output was sent), so it comes back, with the same ids.
            result = _merged(last[1], result)
    if result.new_ids or (decay and (result.changes or result.unsuppressed)):
        state["last"] = (state["seq"], result, now)
    return result


def _result(
    state: dict[str, Any],
    cfg: ScoreConfig,
    previous: str,
    was: list[str],
    changes: list[Change],
    suppressed: list[tuple[str, float]],
    unsuppressed: list[str],
    new_ids: list[str],
) -> Result:
    """The result of a call that left `state` at its time `T`; prunes the state."""
    if state["T"] is None:
        state["T"] = 0.0
    T = state["T"]
    score = score_at(state, T)  # before pruning, as the script does
    deadline = next_deadline(state, cfg)
    top = _top(state, T)
    ttl = _prune(state, T, cfg)
    return Result(
        previous,
        state["tier"],
        score,
        T,
        state["seq"],
        deadline,
        ttl,
        len(new_ids),
        changes,
        top,
        suppressed,
        unsuppressed,
        new_ids,
        state["reset"],
        sorted(state["x"]),
        was,
    )


def merge(
    state: dict[str, Any], other: dict[str, Any], at: float, cfg: ScoreConfig, cause: str
) -> Result:
    """Merge `other` (an anonymous shopper's score state) into `state` (the known one's)
    at event time `at`, and take the tier again with reason `merge` (`cause`: the merge's
    id, which the change's id is built from).

    Both are brought to one time T, the latest of `at` and their own; their components
    add exactly (each is v points at r; the sum of two is taken at the later r). A
    purchase restarts the score: the later reset wins, and a side all of whose points are
    older than the other's last purchase brings none. Suppressions are united and each
    scope keeps its latest end, so the most restrictive holds: an opt-out on either side
    suppresses the profile. Changes of `state` due by decay before T come first, with
    their own reason."""
    previous = state["tier"]
    was = sorted(state["x"])
    changes: list[Change] = []
    unsuppressed: list[str] = []
    T = max(t for t in (state["T"], other["T"], at) if t is not None)
    if state["T"] is not None and state["T"] < T:
        _advance(state, T, cfg, changes, unsuppressed)
    state["T"] = T
    reset, other_reset = state["reset"], other["reset"]
    if other_reset is not None and (reset is None or other_reset > reset):
        state["reset"] = other_reset
        if all(r < other_reset for _, r in state["s"].values()):
            state["s"], state["rules"], state["cats"] = {}, {}, {}
    if not (reset is not None and all(r < reset for _, r in other["s"].values())):
        for h, comp in other["s"].items():
            state["s"][h] = _sum(state["s"].get(h), comp, h)
        for rule, (v, r, h) in other["rules"].items():
            mine = state["rules"].get(rule)
            state["rules"][rule] = [*_sum(mine[:2] if mine else None, [v, r], h), h]
        for key, comp in other["cats"].items():
            h = float(key.split("|", 1)[0])
            state["cats"][key] = _sum(state["cats"].get(key), comp, h)
    suppressed: list[tuple[str, float]] = []
    for key, until in sorted(other["x"].items()):
        if until > T and state["x"].get(key, float("-inf")) < until:
            state["x"][key] = until
            suppressed.append((key, until))
    for signal_id, t in other["applied"].items():
        state["applied"].setdefault(signal_id, t)
    _evaluate(state, cfg, changes, unsuppressed, "merge", cause)
    state["last"] = None
    return _result(state, cfg, previous, was, changes, suppressed, unsuppressed, [])


def _sum(comp: list[float] | None, other: list[float], h: float) -> list[float]:
    """Two components (v points at r) as one, at the later of their times."""
    if comp is None:
        return [other[0], other[1]]
    (v1, r1), (v2, r2) = comp, other
    r = max(r1, r2)
    return [v1 * 2.0 ** (-(r - r1) / h) + v2 * 2.0 ** (-(r - r2) / h), r]


def _merged(last: Result, current: Result) -> Result:
    """A batch processed again after a crash (its first run applied its signals, then
    died before its output was sent): the output of that first run comes back, ahead of
    whatever this run adds, so it is sent after all, with the same ids. Only while no
    transition has happened since (the caller checks); older duplicates count nothing."""
    merged = copy.deepcopy(current)
    merged.from_tier = last.from_tier
    merged.changes = [*copy.deepcopy(last.changes), *current.changes]
    merged.suppressed = [*last.suppressed, *current.suppressed]
    merged.unsuppressed = [*last.unsuppressed, *current.unsuppressed]
    merged.new_ids = [*last.new_ids, *current.new_ids]
    merged.was = last.was
    merged.after = {**last.after, **current.after}
    merged.held = {**last.held, **current.held}
    merged.applied = len(merged.new_ids)
    return merged


def _advance(
    state: dict[str, Any],
    until: float,
    cfg: ScoreConfig,
    changes: list[Change],
    unsuppressed: list[str],
) -> None:
    """Evaluate every decay crossing and suppression end up to `until`."""
    for _ in range(MAX_STEPS):
        if not _due_by(state, until, cfg):
            return  # one score check instead of a bisection: the common case
        due = next_deadline(state, cfg)
        if due is None or due > until:
            return
        state["T"] = due
        _evaluate(state, cfg, changes, unsuppressed, "decay", None)


def _due_by(state: dict[str, Any], until: float, cfg: ScoreConfig) -> bool:
    """Whether a suppression ends or the score leaves its tier by `until` (points decay
    monotonically, so the score at `until` tells)."""
    if any(u <= until for u in state["x"].values()):
        return True
    tier = state["tier"]
    if tier not in TIERS[1:] or not state["s"]:
        return False
    return score_at(state, until) < cfg.threshold(tier) * (1.0 - cfg.hysteresis)


def _evaluate(
    state: dict[str, Any],
    cfg: ScoreConfig,
    changes: list[Change],
    unsuppressed: list[str],
    reason: str,
    cause: str | None,
) -> float:
    """Take the tier at `state["T"]`; returns the score it was taken from."""
    T = state["T"]
    for key in sorted(k for k, until in state["x"].items() if until <= T):
        del state["x"][key]
        unsuppressed.append(key)
    previous = state["tier"]
    score = score_at(state, T)
    was = "none" if previous == SUPPRESSED else previous
    tier = SUPPRESSED if ALL in state["x"] else tier_for(score, was, cfg)
    if tier == previous:
        return score
    if (previous == SUPPRESSED) != (tier == SUPPRESSED):
        reason = "suppression"
    state["seq"] += 1
    state["tier"] = tier
    changes.append(Change(previous, tier, score, T, state["seq"], reason, _top(state, T), cause))
    return score


def _top(state: dict[str, Any], T: float) -> list[tuple[str, float]]:
    values = [(rule, decay(v, r, h, T)) for rule, (v, r, h) in state["rules"].items()]
    values = [(rule, p) for rule, p in values if abs(p) >= EPSILON]
    values.sort(key=lambda x: (-abs(x[1]), x[0]))
    return values[:TOP]


def lifetime(state: dict[str, Any]) -> float:
    """How long (seconds past its last evaluation) the state still matters: until every
    component has decayed below EPSILON and every suppression has ended."""
    T = state["T"] or 0.0
    ttl = MIN_TTL
    for h, (v, r) in state["s"].items():
        now_v = abs(decay(v, r, h, T))
        if now_v >= EPSILON:
            ttl = max(ttl, h * _log2(now_v / EPSILON))
    for until in state["x"].values():
        ttl = max(ttl, until - T)
    return ttl


def _prune(state: dict[str, Any], T: float, cfg: ScoreConfig) -> float:
    """Drop negligible components and old signal ids; return the state's TTL (seconds)."""
    for h in sorted(state["s"]):
        v, r = state["s"][h]
        if abs(decay(v, r, h, T)) < EPSILON:
            del state["s"][h]
    for rule in sorted(state["rules"]):
        v, r, h = state["rules"][rule]
        if abs(decay(v, r, h, T)) < EPSILON:
            del state["rules"][rule]
    for key in sorted(state["cats"]):
        v, r = state["cats"][key]
        h = float(key.split("|", 1)[0])
        if abs(decay(v, r, h, T)) < EPSILON:
            del state["cats"][key]
    applied = state["applied"]
    if len(applied) > cfg.applied_cap:
        keep = sorted(applied.items(), key=lambda kv: (kv[1], kv[0]))[-cfg.applied_cap :]
        state["applied"] = dict(keep)
    return lifetime(state)


def _log2(x: float) -> float:
    return math.log(x, 2) if x > 1 else 0.0
