"""Score thresholds against purchases: where the tiers could go.

For a whole number of points θ, from each shopper's score as the tiers see it (the score
right after each event's signals, or a fired absence or visit end, were scored:
`scoring.apply`'s trace):

- a shopper *reached* θ at the first moment their score was θ or more;
- precision(θ): of the shoppers who reached θ, the share who bought within the horizon
  after that moment (a purchase at p with t < p <= t + horizon);
- recall(θ): of all buyers, the share who reached θ before their first purchase p1, and
  at most the horizon before it (t < p1 <= t + horizon).

Counted shard by shard like the rest of the report: each shopper adds one to the
thresholds from one past the highest whole score they had reached to the whole part of a
new high, so the counts are difference maps over whole points, merged by adding them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any, Final

HORIZON_SECONDS: Final = 7 * 86400.0  # a purchase within a week of the threshold counts
MAX_POINTS: Final = 100  # thresholds listed at most; past that, a coarser whole step
TABLE_ROWS: Final = 8  # evenly spaced thresholds in the Markdown table (the tiers' added)
NICE: Final = (1, 2, 5)  # steps are these times a power of ten


def add_highs(highs: list[tuple[float, float]], trace: Iterable[tuple[float, float]]) -> None:
    """Append to `highs` each (time, score) of `trace` above the highest so far (and 0)."""
    top = highs[-1][1] if highs else 0.0
    for t, score in trace:
        if score > top:
            highs.append((t, score))
            top = score


def nice_step(span: float, count: int) -> int:
    """The smallest whole step of 1, 2 or 5 times a power of ten that covers `span` in at
    most `count` steps."""
    power = 1
    while True:
        for n in NICE:
            if span <= n * power * count:
                return n * power
        power *= 10


class Curve:
    """Precision and recall by whole-point threshold, counted shopper by shopper."""

    def __init__(self, horizon: float = HORIZON_SECONDS) -> None:
        self.horizon = horizon
        # threshold -> change of the count from the threshold below (difference maps)
        self.reached: dict[int, int] = defaultdict(int)
        self.bought: dict[int, int] = defaultdict(int)  # within the horizon after reaching
        self.before: dict[int, int] = defaultdict(int)  # buyers: reached within it before
        self.top = 0  # the highest whole score any shopper reached

    def add(self, highs: list[tuple[float, float]], purchases: Sequence[float]) -> None:
        """One shopper: the new highs of their score, and their purchase times."""
        first = min(purchases, default=None)
        below = 0  # thresholds up to this one were reached earlier
        for t, score in highs:
            whole = math.floor(score)
            if whole <= below:
                continue
            # thresholds below + 1 .. whole were first reached at t
            span = (below + 1, whole + 1)
            self._count(self.reached, span)
            if any(t < p <= t + self.horizon for p in purchases):
                self._count(self.bought, span)
            if first is not None and t < first <= t + self.horizon:
                self._count(self.before, span)
            below = whole
        self.top = max(self.top, below)

    @staticmethod
    def _count(diff: dict[int, int], span: tuple[int, int]) -> None:
        diff[span[0]] += 1
        diff[span[1]] -= 1

    def merge(self, other: Curve) -> None:
        for mine, theirs in (
            (self.reached, other.reached), (self.bought, other.bought),
            (self.before, other.before),
        ):  # fmt: skip
            for k, n in theirs.items():
                mine[k] += n
        self.top = max(self.top, other.top)

    def at(self, thresholds: Iterable[int], buyers: int) -> list[dict[str, Any]]:
        """The figures at each whole threshold (ascending)."""
        rows = []
        counts = [_running(diff, sorted(thresholds)) for diff in (
            self.reached, self.bought, self.before)]  # fmt: skip
        for (t, reached), (_, bought), (_, before) in zip(*counts, strict=True):
            rows.append({
                "threshold": t, "reached": reached, "bought_within": bought,
                "precision": bought / reached if reached else None,
                "buyers_reached_before": before,
                "recall": before / buyers if buyers else None,
            })  # fmt: skip
        return rows

    def grid(self, support: int, marks: Iterable[float] = ()) -> list[int]:
        """The thresholds to show: every whole point (or a step of 1, 2 or 5 times a power
        of ten, to keep to about MAX_POINTS) from 1 up to the highest that `support`
        shoppers reached, and on to the tier thresholds `marks` (each rounded up), with
        those of the Markdown table (`table`)."""
        marked = [math.ceil(m) for m in marks if m > 0]
        reached = _running(self.reached, range(1, self.top + 1))
        end = max([t for t, n in reached if n >= support] + marked, default=0)
        if not end:
            return []
        step = nice_step(end, MAX_POINTS)
        return sorted({1, *marked, *range(step, end + 1, step), *table(end, marked)})


def table(end: int, marks: Iterable[float] = ()) -> set[int]:
    """The thresholds of the Markdown table: 1, about TABLE_ROWS evenly spaced up to
    `end`, and the tier thresholds `marks` (rounded up)."""
    step = nice_step(end, TABLE_ROWS)
    return {1, *(math.ceil(m) for m in marks if m > 0), *range(step, end + 1, step)}


def _running(diff: dict[int, int], thresholds: Iterable[int]) -> list[tuple[int, int]]:
    """The counts at each of `thresholds` (ascending) from a difference map."""
    keys = sorted(k for k, n in diff.items() if n)
    out = []
    total = i = 0
    for t in thresholds:
        while i < len(keys) and keys[i] <= t:
            total += diff[keys[i]]
            i += 1
        out.append((t, total))
    return out
