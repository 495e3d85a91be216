"""The scoring maths in pure Python: the reference the Lua script must agree with.

score(T) = sum_i points_i * 2^(-(T - t_i) / h_i)

kept as one component per half-life class h: (v, r) means "v points at time r", so an
update is O(1) and order does not matter: a signal at t <= r adds p * 2^(-(r - t)/h),
one at t > r moves the component to t first. Rules and categories keep components the
same way (for the top contributors and per-category scores).

One call, `apply`, takes every new signal of one shopper (possibly none: a sweep) and
returns the tier transition, exactly as `lua/apply.lua` does in Redis. The state dict
mirrors the Redis hash field for field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

TIERS: Final = ("none", "low", "mid", "high")
SUPPRESSED: Final = "suppressed"
ALL: Final = "all"  # the suppression scope key that suppresses the shopper
EPSILON: Final = 0.01  # points below this are negligible: pruned, and the TTL ends there
BISECT_STEPS: Final = 60  # demotion time to (64 half-lives) / 2^60: far below a microsecond
MIN_TTL: Final = 3600.0  # keep even an empty score an hour (a burst of late signals)
TOP: Final = 5  # contributors listed on a tier change


@dataclass(frozen=True, slots=True)
class ScoreSignal:
    id: str
    t: float  # epoch seconds (event time)
    points: float
    half_life: float
    rule: str
    category: str | None = None
    reset: bool = False  # a purchase: earlier points no longer count
    suppress: str | None = None  # scope key: "all", "channel:email", "category:x"
    until: float = 0.0  # with `suppress`: epoch seconds


@dataclass(frozen=True, slots=True)
class ScoreConfig:
    low: float
    mid: float
    high: float
    hysteresis: float
    applied_cap: int = 1000  # signal ids remembered per shopper (dedupe)

    def threshold(self, tier: str) -> float:
        return {"low": self.low, "mid": self.mid, "high": self.high}[tier]


@dataclass
class Result:
    from_tier: str
    to_tier: str
    score: float
    at: float
    seq: int
    reason: str
    deadline: float | None
    ttl: float
    applied: int
    top: list[tuple[str, float]] = field(default_factory=list)
    suppressed: list[tuple[str, float]] = field(default_factory=list)  # (scope key, until)
    unsuppressed: list[str] = field(default_factory=list)
    new_ids: list[str] = field(default_factory=list)  # signals applied now (not duplicates)
    reset: float | None = None  # time of the last purchase
    active: list[str] = field(default_factory=list)  # suppression scope keys in force

    @property
    def changed(self) -> bool:
        return self.from_tier != self.to_tier


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
    return {"tier": "none", "seq": 0, "reset": None, "T": None,
            "s": {}, "rules": {}, "cats": {}, "x": {}, "applied": {}}  # fmt: skip


def score_at(state: dict[str, Any], t: float) -> float:
    total = 0.0
    for h in sorted(state["s"]):
        v, r = state["s"][h]
        total += decay(v, r, h, t)
    return total


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
    """When the score, decaying from `at`, falls below the tier's lower bound."""
    if tier not in TIERS[1:] or not state["s"]:
        return None
    floor = cfg.threshold(tier) * (1.0 - cfg.hysteresis)
    lo = at
    hi = at + 64.0 * max(state["s"])
    if score_at(state, hi) >= floor:
        return None  # negative points hold it up; it will not decay out of the tier
    for _ in range(BISECT_STEPS):
        mid = lo + (hi - lo) / 2.0
        if score_at(state, mid) < floor:
            hi = mid
        else:
            lo = mid
    return float(hi)


def apply(
    state: dict[str, Any], signals: list[ScoreSignal], now: float | None, cfg: ScoreConfig
) -> Result:
    """Apply new signals (deduplicated by id) and evaluate at max(last time, signals, now)."""
    previous = state["tier"]
    applied = 0
    new_ids: list[str] = []
    reset_seen = False
    suppressed: list[tuple[str, float]] = []
    T = state["T"]
    for sig in sorted(signals, key=lambda s: (s.t, s.id)):
        if sig.id in state["applied"]:
            continue
        state["applied"][sig.id] = sig.t
        applied += 1
        new_ids.append(sig.id)
        T = sig.t if T is None else max(T, sig.t)
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
    if now is not None:
        T = now if T is None else max(T, now)
    if T is None:
        T = 0.0
    state["T"] = T
    # Suppressions that have run out.
    unsuppressed = sorted(k for k, until in state["x"].items() if until <= T)
    for key in unsuppressed:
        del state["x"][key]
    score = score_at(state, T)
    was = "none" if previous == SUPPRESSED else previous
    tier = SUPPRESSED if ALL in state["x"] else tier_for(score, was, cfg)
    reason = "signal"
    if (previous == SUPPRESSED) != (tier == SUPPRESSED):
        reason = "suppression"
    elif reset_seen:
        reason = "purchase"
    elif applied == 0:
        reason = "decay"
    if tier != previous:
        state["seq"] += 1
    state["tier"] = tier
    deadline = demotion_time(state, tier, T, cfg)
    for until in state["x"].values():
        deadline = until if deadline is None else min(deadline, until)
    top = _top(state, T)
    ttl = _prune(state, T, cfg)
    return Result(
        previous,
        tier,
        score,
        T,
        state["seq"],
        reason,
        deadline,
        ttl,
        applied,
        top,
        suppressed,
        unsuppressed,
        new_ids,
        state["reset"],
        sorted(state["x"]),
    )


def _top(state: dict[str, Any], T: float) -> list[tuple[str, float]]:
    values = [(rule, decay(v, r, h, T)) for rule, (v, r, h) in state["rules"].items()]
    values = [(rule, p) for rule, p in values if abs(p) >= EPSILON]
    values.sort(key=lambda x: (-abs(x[1]), x[0]))
    return values[:TOP]


def _prune(state: dict[str, Any], T: float, cfg: ScoreConfig) -> float:
    """Drop negligible components and old signal ids; return the state's TTL (seconds)."""
    ttl = MIN_TTL
    for h in sorted(state["s"]):
        v, r = state["s"][h]
        now_v = abs(decay(v, r, h, T))
        if now_v < EPSILON:
            del state["s"][h]
        else:
            ttl = max(ttl, h * _log2(now_v / EPSILON))
    for rule in sorted(state["rules"]):
        v, r, h = state["rules"][rule]
        if abs(decay(v, r, h, T)) < EPSILON:
            del state["rules"][rule]
    for key in sorted(state["cats"]):
        v, r = state["cats"][key]
        h = float(key.split("|", 1)[0])
        if abs(decay(v, r, h, T)) < EPSILON:
            del state["cats"][key]
    for until in state["x"].values():
        ttl = max(ttl, until - T)
    applied = state["applied"]
    if len(applied) > cfg.applied_cap:
        keep = sorted(applied.items(), key=lambda kv: (kv[1], kv[0]))[-cfg.applied_cap :]
        state["applied"] = dict(keep)
    return ttl


def _log2(x: float) -> float:
    import math

    return math.log(x, 2) if x > 1 else 0.0
