"""Where a set of tiers stands on a history: lift per tier and capture, for the rules'
tiers or the naive rule's (`naive.py`). The backtest report's definitions
(`report.py`): a shopper *reached* a tier when their tier first became that tier or
higher; lift = the share of those who bought after reaching it, over the history's share
of buyers; *capture* = the share of buyers who reached mid or high before their first
purchase."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from schemas.events import Event
from stream.offline import naive
from stream.offline.result import ReplayResult

TIERS: Final = ("low", "mid", "high")
RANK: Final = {"none": 0, "low": 1, "mid": 2, "high": 3, "suppressed": -1}


@dataclass(frozen=True)
class Standing:
    """Lift per tier (None where no shopper reached it) and capture, on one part."""

    lift: dict[str, float | None]
    reached: dict[str, int]
    capture: float  # buyers who reached mid or high before their first purchase
    capture_high: float

    def beats(self, other: Standing) -> bool:
        mine, theirs = self.lift["high"] or 0.0, other.lift["high"] or 0.0
        return (mine >= theirs and self.capture >= other.capture) and (
            mine > theirs or self.capture > other.capture
        )


def standing(
    reached: dict[str, dict[str, float]], purchases: dict[str, list[float]], shoppers: int
) -> Standing:
    """`reached`: shopper -> tier -> when they first reached it or higher."""
    buyers = len(purchases)
    base = buyers / shoppers if shoppers else 0.0
    lift: dict[str, float | None] = {}
    counts: dict[str, int] = {}
    before_first = {tier: 0 for tier in TIERS}
    for tier in TIERS:
        got = after = 0
        for shopper, tiers in reached.items():
            at = tiers.get(tier)
            if at is None:
                continue
            got += 1
            buys = purchases.get(shopper)
            if buys and max(buys) > at:
                after += 1
            if buys and min(buys) > at:
                before_first[tier] += 1
        counts[tier] = got
        lift[tier] = (after / got) / base if got and base else None
    return Standing(
        lift,
        counts,
        before_first["mid"] / buyers if buyers else 0.0,
        before_first["high"] / buyers if buyers else 0.0,
    )


def rules_reached(result: ReplayResult) -> dict[str, dict[str, float]]:
    """Shopper -> tier -> when the rules' tier first became it or higher."""
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for change in result.changes:
        rank = RANK[change.to_tier]
        at = change.at.timestamp()
        for tier in TIERS[:rank] if rank > 0 else ():
            out[change.shopper_id].setdefault(tier, at)
    return dict(out)


def naive_reached(events: Iterable[Event]) -> dict[str, dict[str, float]]:
    by_shopper: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        by_shopper[event.shopper_id].append(event)
    return {shopper: naive.reached(evs) for shopper, evs in by_shopper.items()}


def purchases_of(events: Iterable[Event]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = defaultdict(list)
    for event in events:
        if event.type == "purchase":
            out[event.shopper_id].append(event.ts.timestamp())
    return dict(out)
