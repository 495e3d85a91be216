"""Points and tier thresholds chosen on real histories (`intent calibrate`, and the
built-in rules by `make evidence`).

Signals do not depend on points, so a history is replayed once, and the score any set of
points would give is computed from its signals (`calibrate.moments`: each rule's decayed
share of the score at each signal, restarted at a purchase). Tier thresholds: mid stays
(it sets the scale); low and high are chosen with the points.

A choice passes on a history when:
- lift rises strictly, low < mid < high;
- the high tier's lift is at least the naive rule's (`naive.py`);
- the share of buyers who reach mid or high before their first purchase (capture) is at
  least the naive rule's;
- and, so that high is worth having, it holds at least HIGH_SHARE of the shoppers the
  naive rule puts there.

The search takes the choice with the largest smallest relative margin over the histories
(negative: a condition fails), from GRID's values for each rule that fired for
MIN_SUPPORT shoppers: random draws (a fixed seed: the same input, the same choice), then
one value at a time until nothing improves.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from schemas.events import Event
from schemas.rules import RuleSet, SuppressionRule
from stream.offline.result import ReplayResult
from stream.offline.standing import Standing, naive_reached, purchases_of, standing

GRID: Final = (
    0.0,
    0.25,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    4.0,
    5.0,
    6.0,
    8.0,
    10.0,
    12.0,
    14.0,
    15.0,
    20.0,
    25.0,
    30.0,
)
# The scale is set by mid's threshold, which stays; low and high are searched with the
# points. A product view always reaches low: the playbook's browsing tier.
LOW: Final = (0.25, 0.5, 1.0, 2.0)
HIGH: Final = (25.0, 30.0, 35.0, 40.0, 45.0, 50.0, 60.0)
ENTRY: Final = "product_viewed"
HIGH_SHARE: Final = 0.1  # high holds at least a tenth as many shoppers as the naive high
MIN_SUPPORT: Final = 20  # shoppers over the training files before a rule's points are searched
MIN_TIER: Final = 3  # shoppers a tier needs on a file before its lift counts
SAMPLES: Final = 3000  # random points tried before the refinement
SEED: Final = 20261206
HORIZON: Final = 7 * 86400.0  # the labels are not used here; moments() asks for one
Floats = npt.NDArray[np.float64]


def scored_rules(rules: RuleSet) -> list[str]:
    return [rule.id for rule in rules.rules if not isinstance(rule, SuppressionRule)]


def _resets(rules: RuleSet) -> bool:
    return any("reset_score" in rule.actions for rule in rules.rules)


@dataclass
class Moments:
    """One row per signal of a scored rule, in shopper then time order: each rule's
    decayed share of the score just after it (`rows[i][j]`: rule `rules[j]`)."""

    rules: list[str]
    rows: list[list[float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)  # a purchase within the horizon after
    shoppers: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)


def moments(result: ReplayResult, rules: RuleSet, horizon: float, end: float) -> Moments:
    """The rows of `Moments`, labelled 1 when the shopper buys within `horizon` after the
    moment (and before `end`, the part's last moment). A purchase restarts every share
    when a rule resets the score on one, as scoring does."""
    names = scored_rules(rules)
    index = {rule_id: i for i, rule_id in enumerate(names)}
    resets = _resets(rules)
    out = Moments(names)
    by_shopper: dict[str, list[Any]] = defaultdict(list)
    for signal in result.signals:
        if signal.rule_id in index:
            by_shopper[signal.shopper_id].append(signal)
    for shopper in sorted(by_shopper):
        buys = sorted(result.purchases.get(shopper, ()))
        held: dict[int, tuple[float, float, float]] = {}  # rule -> (amount, at, half-life)
        next_buy = 0
        for signal in sorted(by_shopper[shopper], key=lambda s: s.at):
            t = signal.at.timestamp()
            while next_buy < len(buys) and buys[next_buy] < t:
                if resets:
                    held.clear()
                next_buy += 1
            i = index[signal.rule_id]
            amount = _decayed(held.get(i), t)
            held[i] = (amount + 1.0, t, signal.half_life_seconds)
            row = [0.0] * len(index)
            for j, entry in held.items():
                row[j] = _decayed(entry, t)
            out.rows.append(row)
            stop = min(t + horizon, end)
            out.labels.append(int(any(t < b <= stop for b in buys[next_buy:])))
            out.shoppers.append(shopper)
            out.times.append(t)
    return out


def _decayed(entry: tuple[float, float, float] | None, t: float) -> float:
    if entry is None:
        return 0.0
    amount, at, half_life = entry
    return amount * 0.5 ** ((t - at) / half_life) if half_life > 0 else amount


@dataclass
class Table:
    """One file's signals as the score's inputs, for any set of points."""

    name: str
    rules: list[str]
    x: Floats  # moments x rules: each rule's decayed share at each moment
    starts: npt.NDArray[np.intp]  # each shopper's first row (rows are by shopper)
    before_first: npt.NDArray[np.bool_]  # the moment is before the shopper's first purchase
    before_last: npt.NDArray[np.bool_]  # ... before their last purchase (none: False)
    buyer: npt.NDArray[np.bool_]  # per shopper with rows
    shoppers: int  # every shopper of the file, with rows or not
    buyers: int
    naive: Standing
    support: dict[str, int]


def table(name: str, result: ReplayResult, events: list[Event], rules: RuleSet) -> Table:
    """`result`: `events` replayed with `rules` (any points: signals do not depend on them)."""
    buys = purchases_of(events)
    found = moments(result, rules, HORIZON, result.end)
    shoppers = np.array(found.shoppers)
    times = np.array(found.times)
    starts = (
        np.flatnonzero(np.r_[True, shoppers[1:] != shoppers[:-1]])
        if len(shoppers)
        else np.array([], dtype=np.intp)
    )
    first = np.array([min(buys[s]) if s in buys else math.inf for s in found.shoppers])
    last = np.array([max(buys[s]) if s in buys else -math.inf for s in found.shoppers])
    support: dict[str, int] = {}
    for rule_id, _ in {(s.rule_id, s.shopper_id) for s in result.signals}:
        support[rule_id] = support.get(rule_id, 0) + 1
    return Table(
        name,
        found.rules,
        np.array(found.rows, dtype=np.float64).reshape(len(found.rows), len(found.rules)),
        starts,
        times < first,
        times < last,
        np.array([s in buys for s in shoppers[starts]], dtype=bool),
        result.shoppers,
        len(buys),
        standing(naive_reached(events), buys, result.shoppers),
        support,
    )


@dataclass(frozen=True)
class Measured:
    lift: tuple[float, float, float]  # low, mid, high (0 where too few shoppers)
    reached: tuple[int, int, int]
    capture: float


def measure(t: Table, points: Floats, tiers: tuple[float, float, float]) -> Measured:
    if not len(t.starts):
        return Measured((0.0, 0.0, 0.0), (0, 0, 0), 0.0)
    score = t.x @ points
    ever = np.maximum.reduceat(score, t.starts)
    before_last = np.maximum.reduceat(np.where(t.before_last, score, 0.0), t.starts)
    before_first = np.maximum.reduceat(np.where(t.before_first, score, 0.0), t.starts)
    base = t.buyers / t.shoppers
    lifts, reached = [], []
    for theta in tiers:
        got = int((ever >= theta).sum())
        after = int((before_last >= theta).sum())
        reached.append(got)
        lifts.append((after / got) / base if got >= MIN_TIER and base else 0.0)
    caught = int(((before_first >= tiers[1]) & t.buyer).sum())
    return Measured(
        (lifts[0], lifts[1], lifts[2]),
        (reached[0], reached[1], reached[2]),
        caught / t.buyers if t.buyers else 0.0,
    )


def margin(m: Measured, naive: Standing) -> float:
    """The smallest relative margin of the three conditions, and of a fourth that keeps
    the high tier worth having: at least HIGH_SHARE of the shoppers the naive rule puts
    there (negative: one fails)."""
    low, mid, high = m.lift
    terms = [
        (mid - low) / low if low else -1.0,
        (high - mid) / mid if mid else -1.0,
    ]
    if naive.reached["high"]:
        terms.append(m.reached[2] / (HIGH_SHARE * naive.reached["high"]) - 1)
    if naive.lift["high"]:
        terms.append(high / naive.lift["high"] - 1)
    if naive.capture:
        terms.append(m.capture / naive.capture - 1)
    return min(terms)


Choice = dict[str, float]  # rule id -> points, and "low" / "high" -> the thresholds


def search(
    tables: list[Table], rules: RuleSet, samples: int = SAMPLES, starts: Sequence[Choice] = ()
) -> tuple[Choice, list[str]]:
    """The points and the low and high thresholds with the largest smallest margin over
    `tables`, from the rules' own, `starts` and `samples` random draws, refined one value at
    a time; and the searched rules."""
    names = tables[0].rules
    given = {rule.id: float(rule.points) for rule in rules.rules}
    searched = [n for n in names if sum(t.support.get(n, 0) for t in tables) >= MIN_SUPPORT]
    rng = random.Random(SEED)
    grids: dict[str, tuple[float, ...]] = {n: GRID for n in searched}
    grids["low"], grids["high"] = LOW, HIGH

    def score(choice: Choice) -> tuple[float, float]:
        if ENTRY in choice and choice[ENTRY] < choice["low"]:
            return (-math.inf, -math.inf)
        points = np.array([choice.get(n, given[n]) for n in names], dtype=np.float64)
        tiers = (choice["low"], rules.tiers.mid, choice["high"])
        margins = [margin(measure(t, points, tiers), t.naive) for t in tables]
        return min(margins), sum(margins)

    best: Choice = {n: given[n] for n in searched}
    best["low"], best["high"] = rules.tiers.low, rules.tiers.high
    best_score = score(best)
    for start in starts:
        trial = {**best, **{n: v for n, v in start.items() if n in grids}}
        got = score(trial)
        if got > best_score:
            best, best_score = trial, got
    for _ in range(samples):
        trial = {n: rng.choice(grid) for n, grid in grids.items()}
        got = score(trial)
        if got > best_score:
            best, best_score = trial, got
    improved = True
    while improved:  # one value at a time, every value of its grid, until nothing helps
        improved = False
        for n, grid in grids.items():
            for value in grid:
                trial = {**best, n: value}
                got = score(trial)
                if got > best_score:
                    best, best_score, improved = trial, got, True
    return best, searched


def with_points(rules: RuleSet, choice: Choice) -> RuleSet:
    changed = [
        rule.model_copy(update={"points": choice[rule.id]}) if rule.id in choice else rule
        for rule in rules.rules
    ]
    tiers = rules.tiers.model_copy(update={"low": choice["low"], "high": choice["high"]})
    return rules.model_copy(update={"rules": changed, "tiers": tiers})


def passes(s: Standing, naive: Standing) -> bool:
    """The three conditions of the module's docstring, on one history."""
    low, mid, high = (s.lift[t] or 0.0 for t in ("low", "mid", "high"))
    return low < mid < high and high >= (naive.lift["high"] or 0.0) and s.capture >= naive.capture
