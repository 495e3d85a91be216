"""`intent calibrate`: each rule's points and the tier thresholds fitted on the older part
of a history, and checked on the newer part against the rules they came from and the
naive rule.

1. The file's events are split by event time: the older `split` of them (0.6) to fit, the
   rest to check. Each part is replayed on its own, so nothing of the newer part reaches
   the fit, not even a purchase that would label an older moment.
2. **Evidence.** Each rule's support (the shoppers it fired for in the older part) and
   lift; and a logistic regression (scikit-learn, L2) of a purchase within `horizon` on
   each rule's decayed share of the score at each signal, with no weight below zero
   (every scored rule is a sign of intent), scaled to the size of the given points.
3. **Points and thresholds.** `search.py` chooses them on the older part, starting from
   the given points and the regression's: lift rising low < mid < high, the high tier's
   lift at least the naive rule's, as large a capture as the naive rule's, with the
   largest margin. Only rules that fired for enough shoppers are chosen; the rest keep
   their points. Mid's threshold stays: it sets the scale.
4. **Check.** The newer part is replayed with the rules given and with the calibrated
   ones, and the naive rule is applied to it: lift per tier and capture for the three.
   The calibrated rules are kept only when they are at least as good on both the high
   tier's lift and the capture, and better on one; otherwise the rules given are written
   out unchanged, and the command says why.

Definitions are the backtest report's (`stream/offline/report.py`): a shopper *reached* a
tier when their tier first became that tier or higher; lift = the share of those who
bought after reaching it, over the file's share of buyers; *capture* = the share of
buyers who reached mid or high before their first purchase.
"""

from __future__ import annotations

import importlib.util
import math
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from schemas.events import Event
from schemas.rules import RuleSet, SuppressionRule, TierThresholds
from stream.errors import ConfigError, MissingExtra
from stream.offline import search
from stream.offline.files import LineError, read_events
from stream.offline.replay import REPLAY_UNITS, replay
from stream.offline.result import ReplayResult
from stream.offline.search import MIN_SUPPORT, moments, scored_rules
from stream.offline.standing import (
    TIERS,
    Standing,
    naive_reached,
    purchases_of,
    rules_reached,
    standing,
)
from stream.rulesfile import check_text

DEFAULT_SPLIT: Final = 0.6  # the older 60 % of the events fit, the newer 40 % check
DEFAULT_HORIZON_SECONDS: Final = 7 * 86400  # a purchase within 7 days labels a moment
MIN_PART_EVENTS: Final = 100  # each part needs at least this many events
MAX_ROWS: Final = 400_000  # moments given to the regression (every n-th beyond that)
REGULARISATION: Final = 1.0  # scikit-learn's C: the default, L2


def require_sklearn() -> None:
    """Raises a one-line `MissingExtra` if the fit cannot run here."""
    if importlib.util.find_spec("sklearn") is None:
        raise MissingExtra(
            "intent calibrate fits with scikit-learn, which is not installed: "
            "pip install 'intent-processor[calibrate]'"
        )


def _logistic() -> Any:
    require_sklearn()
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression


# --- the history, split by time ----------------------------------------------------------
@dataclass
class History:
    older: list[Event]
    newer: list[Event]
    split_at: float  # epoch seconds: the first event of the newer part
    line_errors: int = 0


def read_history(
    path: Path, fmt: str, split: float, progress: Callable[[int], None] | None = None
) -> History:
    """The file's events in event-time order, split so the older part holds `split` of
    them (events of one instant stay together)."""
    if not 0 < split < 1:
        raise ConfigError(f"--split must be between 0 and 1, not {split}")
    events: list[Event] = []
    bad = 0
    for item in read_events(path, fmt, progress):
        if isinstance(item, LineError):
            bad += 1
        else:
            events.append(item)
    events.sort(key=lambda e: e.ts)
    cut = int(len(events) * split)
    while 0 < cut < len(events) and events[cut].ts == events[cut - 1].ts:
        cut += 1
    older, newer = events[:cut], events[cut:]
    if len(older) < MIN_PART_EVENTS or len(newer) < MIN_PART_EVENTS:
        raise ConfigError(
            f"{path.name} has {len(events):,} readable events ({bad:,} bad lines): too few to "
            f"fit on one part and check on the other (each needs {MIN_PART_EVENTS})"
        )
    return History(older, newer, newer[0].ts.timestamp(), bad)


def replay_events(
    events: Sequence[Event],
    rules: RuleSet,
    work: Path,
    on_replayed: Callable[[int], None] | None = None,
) -> ReplayResult:
    """`events` replayed with `rules`, as `intent replay` would replay a file of them;
    `on_replayed(units)` follows it (REPLAY_UNITS per event in all)."""
    path = work / "part.jsonl"
    with open(path, "wb") as out:
        for event in events:
            out.write(event.model_dump_json(exclude_none=True).encode())
            out.write(b"\n")
    try:
        return replay(path, "canonical", rules, on_replayed=on_replayed)
    finally:
        path.unlink()


# --- step 2: points ----------------------------------------------------------------------
@dataclass
class Evidence:
    rule_id: str
    old_points: float
    support: int = 0  # shoppers the rule fired for in the older part
    bought_after: int = 0  # of them, those who bought after its first signal
    lift: float | None = None
    weight: float | None = None  # the regression's, per unit of decayed signal
    points: float = 0.0
    fitted: bool = False

    def comment(self) -> str:
        lift = f"{self.lift:.2f}x" if self.lift is not None else "n/a"
        seen = f"support {self.support:,} shoppers, lift {lift}"
        if not self.fitted:
            why = "too few shoppers to fit" if self.support else "never fired"
            return f"calibrated: {seen}; {why}, points kept at {_num(self.old_points)}"
        return f"calibrated: {seen}; points {_num(self.old_points)} -> {_num(self.points)}"


@dataclass
class Fit:
    evidence: dict[str, Evidence]
    scale: float  # points per unit of the regression's log-odds
    rows: int
    positives: int
    thresholds: TierThresholds | None = None
    notes: list[str] = field(default_factory=list)


def rule_evidence(result: ReplayResult, rules: RuleSet) -> dict[str, Evidence]:
    """Each scored rule's support and lift in one part: the shoppers it fired for, and
    the share of them who bought after its first signal, over the part's share of buyers."""
    evidence = {
        rule.id: Evidence(rule.id, rule.points)
        for rule in rules.rules
        if not isinstance(rule, SuppressionRule)
    }
    first: dict[tuple[str, str], float] = {}
    for signal in result.signals:
        key = (signal.rule_id, signal.shopper_id)
        t = signal.at.timestamp()
        if key not in first or t < first[key]:
            first[key] = t
    for (rule_id, shopper), t in first.items():
        if rule_id not in evidence:
            continue
        evidence[rule_id].support += 1
        buys = result.purchases.get(shopper)
        if buys and max(buys) > t:
            evidence[rule_id].bought_after += 1
    base = len(result.purchases) / result.shoppers if result.shoppers else 0.0
    for item in evidence.values():
        if item.support and base:
            item.lift = (item.bought_after / item.support) / base
    return evidence


def fit_points(result: ReplayResult, rules: RuleSet, horizon: float, end: float) -> Fit:
    """Step 2 of the module's docstring."""
    logistic = _logistic()
    evidence = rule_evidence(result, rules)
    names = scored_rules(rules)
    found = moments(result, rules, horizon, end)
    rows, labels = found.rows, found.labels
    fit = Fit(evidence, scale=0.0, rows=len(rows), positives=sum(labels))
    if not rows or fit.positives in (0, len(rows)):
        fit.notes.append(
            "no purchase follows any signal within the horizon in the older part"
            if not fit.positives
            else "every signal is followed by a purchase in the older part"
        )
        return fit
    if len(rows) > MAX_ROWS:  # every n-th moment: the regression's cost stays bounded
        step = math.ceil(len(rows) / MAX_ROWS)
        rows, labels = rows[::step], labels[::step]
    usable = [i for i, name in enumerate(names) if evidence[name].support >= MIN_SUPPORT]
    if not usable:
        fit.notes.append(f"no rule fired for {MIN_SUPPORT} shoppers in the older part")
        return fit
    by_column = _non_negative_fit(logistic, rows, labels, usable)
    weights = {names[i]: w for i, w in by_column.items()}
    # Keep the fitted rules' size: their points weigh, support for support, what the
    # given points weighed.
    given = sum(abs(evidence[n].old_points) * evidence[n].support for n in weights)
    size = sum(abs(w) * evidence[n].support for n, w in weights.items())
    fit.scale = given / size if size and given else 10.0
    for name, weight in weights.items():
        item = evidence[name]
        item.weight, item.fitted = weight, True
        item.points = float(round(weight * fit.scale))
    for item in evidence.values():
        if not item.fitted:
            item.points = item.old_points
    return fit


def _non_negative_fit(
    logistic: Any, rows: list[list[float]], labels: list[int], columns: list[int]
) -> dict[int, float]:
    """Column -> weight. Every scored rule is a sign of intent, so none may take points
    away: a rule whose weight comes out negative is given 0 and the rest fitted again,
    until none is negative (at most once per rule)."""
    columns = list(columns)
    zeroed: dict[int, float] = {}
    while columns:
        model = logistic(C=REGULARISATION, max_iter=2000)
        model.fit([[row[i] for i in columns] for row in rows], labels)
        weights = dict(zip(columns, (float(w) for w in model.coef_[0]), strict=True))
        negative = [i for i, w in weights.items() if w < 0]
        if not negative:
            return {**zeroed, **weights}
        worst = min(negative, key=lambda i: weights[i])
        zeroed[worst] = 0.0
        columns.remove(worst)
    return zeroed


# --- step 3: the search ------------------------------------------------------------------
def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


# --- the rules file, edited in place -----------------------------------------------------
_RULE_ID: Final = re.compile(r"^(\s*)-\s+id:\s*([a-z][a-z0-9_]*)\s*(#.*)?$")
_POINTS: Final = re.compile(r"^(\s*points:\s*)(-?[0-9.]+)(.*)$")
_TOP_KEY: Final = re.compile(r"^[A-Za-z_]")
_CALIBRATED: Final = re.compile(r"^\s*# calibrated: ")


def rewrite(text: str, fit: Fit, tiers: TierThresholds) -> str:
    """The rules file `text` with the new points and thresholds, its layout and comments
    kept, and a comment above each rule with its evidence (replacing an earlier one)."""
    lines = [line for line in text.splitlines() if not _CALIBRATED.match(line)]
    out: list[str] = []
    current: Evidence | None = None
    indent = ""
    section = ""
    for line in lines:
        if _TOP_KEY.match(line):
            section = line.split(":", 1)[0]
            current = None
        if section == "tiers":
            line = _tier_values(line, tiers)
        match = _RULE_ID.match(line)
        if match and section == "rules":
            indent, rule_id = match.group(1), match.group(2)
            current = fit.evidence.get(rule_id)
            if current is not None:
                out.append(f"{indent}# {current.comment()}")
            out.append(line)
            if current is not None and current.fitted and not _has_points(lines, line):
                out.append(f"{indent}  points: {_num(current.points)}")
            continue
        points = _POINTS.match(line)
        if points and current is not None and section == "rules":
            line = f"{points.group(1)}{_num(current.points)}{points.group(3)}"
        out.append(line)
    return "\n".join(out) + "\n"


def _has_points(lines: list[str], id_line: str) -> bool:
    """Whether the rule that starts at `id_line` has a `points:` line of its own."""
    start = lines.index(id_line)
    for line in lines[start + 1 :]:
        if _RULE_ID.match(line) or _TOP_KEY.match(line):
            return False
        if _POINTS.match(line):
            return True
    return False


def _tier_values(line: str, tiers: TierThresholds) -> str:
    for tier in TIERS:
        value = _num(getattr(tiers, tier))
        line = re.sub(rf"(\b{tier}:\s*)(-?[0-9.]+)", rf"\g<1>{value}", line)
    return line


# --- the whole command -------------------------------------------------------------------
@dataclass
class Calibration:
    history: History
    fit: Fit
    given: RuleSet
    calibrated: RuleSet
    before: Standing  # the given rules on the newer part
    after: Standing  # the calibrated rules on the newer part
    naive_newer: Standing
    kept: bool  # the calibrated rules beat the given ones out of sample
    text: str  # what --out gets


def calibrate(
    path: Path,
    fmt: str,
    rules: RuleSet,
    rules_text: str,
    *,
    horizon: float = DEFAULT_HORIZON_SECONDS,
    split: float = DEFAULT_SPLIT,
    progress: Callable[[str], None] | None = None,
    reading: Callable[[int], None] | None = None,
    replaying: Callable[[str, int], Callable[[int], None]] | None = None,
) -> Calibration:
    """Steps 1 to 4 of the module's docstring. `progress(stage)` names each stage as it
    starts; `reading(bytes_read)` follows the reading of the file; for each replay,
    `replaying(what, units)` returns the function that follows it, `units` in all."""
    say = progress or (lambda stage: None)

    def replayed(events: Sequence[Event], with_rules: RuleSet, what: str) -> ReplayResult:
        say(what)
        tick = replaying(what, REPLAY_UNITS * len(events)) if replaying else None
        return replay_events(events, with_rules, work, tick)

    require_sklearn()
    say("reading")
    history = read_history(path, fmt, split, reading)
    with tempfile.TemporaryDirectory(prefix="intent-calibrate-") as tmp:
        work = Path(tmp)
        older = replayed(history.older, rules, "replaying the older part")
        say("fitting the points")
        fit = fit_points(older, rules, horizon, history.split_at)
        say("choosing points and thresholds")
        table = search.table("older", older, history.older, rules)
        regression = {name: e.points for name, e in fit.evidence.items() if e.fitted}
        choice, searched = search.search([table], rules, starts=[regression])
        for name in searched:
            item = fit.evidence[name]
            item.points, item.fitted = choice[name], True
        tiers = rules.tiers.model_copy(update={"low": choice["low"], "high": choice["high"]})
        fit.thresholds = tiers
        calibrated = search.with_points(rules, choice)
        newer_buys = purchases_of(history.newer)
        given_newer = replayed(history.newer, rules, "checking the rules given on the newer part")
        calibrated_newer = replayed(history.newer, calibrated, "checking the new rules on it")
    shoppers = given_newer.shoppers
    before = standing(rules_reached(given_newer), newer_buys, shoppers)
    after = standing(rules_reached(calibrated_newer), newer_buys, shoppers)
    naive_newer = standing(naive_reached(history.newer), newer_buys, shoppers)
    kept = after.beats(before)
    text = rewrite(rules_text, fit, tiers) if kept else rules_text
    return Calibration(history, fit, rules, calibrated, before, after, naive_newer, kept, text)


def check_written(text: str) -> RuleSet:
    """The written rules file must load: a bug here must never leave a broken file."""
    rules, problems = check_text(text)
    if rules is None:
        raise ConfigError(
            "the calibrated rules file would not load: "
            + "; ".join(f"line {p.line}: {p.message}" for p in problems[:3])
        )
    return rules
