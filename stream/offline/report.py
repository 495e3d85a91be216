"""The backtest report: do the tiers predict purchases? Computed from the event file
(who bought, when) and the tier changes the rules produced on it.

Definitions (also in the Markdown output):
- a shopper *reached* a tier when their tier first became that tier **or higher**;
- *bought after*: a purchase strictly later than that moment;
- conversion = bought after / reached; lift = conversion / base rate, where the base rate
  is buyers / all shoppers in the file;
- *share of buyers*: buyers who reached the tier before their first purchase, over all
  buyers; *lead time*: from reaching the tier to that first purchase (median).

Beside each tier, the same figures for the naive rule (`naive.py`: a cart add puts a
shopper in high, their third product view in mid, any first event in low), computed from
the events alone; and precision and recall by score threshold (`thresholds.py`), to see
where the tiers could go.
"""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from schemas.outputs import CartRecovery
from schemas.rules import RuleSet
from stream.errors import MissingExtra
from stream.offline import naive
from stream.offline.result import ReplayResult
from stream.offline.thresholds import HORIZON_SECONDS, Curve, table
from stream.rulesfile import digest

TIERS: Final = ("low", "mid", "high")
RANK: Final = {"none": 0, "low": 1, "mid": 2, "high": 3, "suppressed": -1}
MIN_SUPPORT: Final = 10  # shoppers a signal needs before its lift is listed
TOP_SIGNALS: Final = 10
ORDER_TEXT: Final = {  # `intent replay --order`
    "time": "Each shopper's events in event-time order",
    "file": "Each shopper's events in the file's order, as a worker reads them",
}


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


class Reach:
    """Per tier: shoppers who reached it (or a higher one), who bought after, who reached
    it before their first purchase, and how long before it."""

    def __init__(self) -> None:
        self.reached = {tier: 0 for tier in TIERS}
        self.bought_after = {tier: 0 for tier in TIERS}
        self.before_first = {tier: 0 for tier in TIERS}
        self.leads: dict[str, list[float]] = {tier: [] for tier in TIERS}

    def add(self, reached: dict[str, dict[str, float]], purchases: dict[str, list[float]]) -> None:
        """`reached`: tier -> shopper -> when they first reached it or a higher one."""
        for tier in TIERS:
            who = reached[tier]
            self.reached[tier] += len(who)
            for shopper, t in who.items():
                times = purchases.get(shopper, ())
                if any(p > t for p in times):
                    self.bought_after[tier] += 1
                if times and t < min(times):
                    self.before_first[tier] += 1
                    self.leads[tier].append(min(times) - t)

    def merge(self, other: Reach) -> None:
        for tier in TIERS:
            self.reached[tier] += other.reached[tier]
            self.bought_after[tier] += other.bought_after[tier]
            self.before_first[tier] += other.before_first[tier]
            self.leads[tier] += other.leads[tier]

    def rows(self, buyers: int, base: float | None) -> list[dict[str, Any]]:
        rows = []
        for tier in TIERS:
            leads = self.leads[tier]
            conversion = _ratio(self.bought_after[tier], self.reached[tier])
            rows.append({
                "tier": tier,
                "reached": self.reached[tier],
                "bought_after": self.bought_after[tier],
                "conversion": conversion,
                "lift": _ratio(conversion, base) if conversion is not None and base else None,
                "share_of_buyers": _ratio(self.before_first[tier], buyers),
                "median_lead_time_seconds": statistics.median(leads) if leads else None,
            })  # fmt: skip
        return rows


class Tally:
    """The report's counts, taken in shard by shard: a shopper's events, changes, signals
    and actions are all in the same shard, and everything below is counted per shopper.
    `horizon`: seconds after reaching a score threshold within which a purchase counts."""

    def __init__(self, horizon: float = HORIZON_SECONDS) -> None:
        self.events = 0
        self.late = 0  # events not scored: older than the lateness behind their shopper's
        self.shoppers = 0
        self.buyers = 0
        self.start = math.inf
        self.end = 0.0
        self.tiers = Reach()
        self.naive = Reach()
        self.curve = Curve(horizon)
        self.triggers = 0
        self.recovered = 0
        self.rule_shoppers: dict[str, int] = defaultdict(int)
        self.rule_bought_after: dict[str, int] = defaultdict(int)

    def add(self, part: ReplayResult) -> None:
        purchases = part.purchases
        self.events += part.events
        self.late += part.late
        self.shoppers += part.shoppers
        self.buyers += len(purchases)
        self.start = min(self.start, min(part.first_seen.values(), default=math.inf))
        self.end = max(self.end, part.end)

        reached: dict[str, dict[str, float]] = {tier: {} for tier in TIERS}
        for change in part.changes:
            at = change.at.timestamp()
            for tier in TIERS:
                if RANK[change.to_tier] >= RANK[tier]:
                    reached[tier].setdefault(change.shopper_id, at)
        self.tiers.add(reached, purchases)
        by_naive: dict[str, dict[str, float]] = {tier: {} for tier in TIERS}
        for shopper, times in part.naive.items():
            for tier, at in times.items():
                by_naive[tier][shopper] = at
        self.naive.add(by_naive, purchases)
        for shopper, highs in part.highs.items():
            self.curve.add(highs, purchases.get(shopper, ()))

        for action in part.actions:
            trigger = action.value
            if isinstance(trigger, CartRecovery):
                self.triggers += 1
                at = trigger.at.timestamp()
                if any(p > at for p in purchases.get(trigger.shopper_id, ())):
                    self.recovered += 1

        first_signal: dict[str, dict[str, float]] = {}
        for signal in part.signals:
            if signal.points <= 0:
                continue  # suppression and markers: not intent
            seen = first_signal.setdefault(signal.rule_id, {})
            at = signal.at.timestamp()
            if signal.shopper_id not in seen or at < seen[signal.shopper_id]:
                seen[signal.shopper_id] = at
        for rule, who in first_signal.items():
            self.rule_shoppers[rule] += len(who)
            self.rule_bought_after[rule] += sum(
                1 for s, t in who.items() if any(p > t for p in purchases.get(s, ()))
            )

    def merge(self, other: Tally) -> None:
        """Take in the counts of another set of shoppers (a shard replayed elsewhere)."""
        self.events += other.events
        self.late += other.late
        self.shoppers += other.shoppers
        self.buyers += other.buyers
        self.start = min(self.start, other.start)
        self.end = max(self.end, other.end)
        self.tiers.merge(other.tiers)
        self.naive.merge(other.naive)
        self.curve.merge(other.curve)
        self.triggers += other.triggers
        self.recovered += other.recovered
        for rule, n in other.rule_shoppers.items():
            self.rule_shoppers[rule] += n
        for rule, n in other.rule_bought_after.items():
            self.rule_bought_after[rule] += n

    def report(
        self, min_support: int = MIN_SUPPORT, marks: tuple[float, ...] = ()
    ) -> dict[str, Any]:
        """The figures; a signal's lift is listed once `min_support` shoppers had it, and
        score thresholds up to the highest `min_support` shoppers reached and the tier
        thresholds `marks`."""
        base = _ratio(self.buyers, self.shoppers)
        signals: list[dict[str, Any]] = []
        for rule, shoppers in self.rule_shoppers.items():
            bought = self.rule_bought_after[rule]
            conversion = _ratio(bought, shoppers)
            signals.append({
                "rule": rule, "shoppers": shoppers, "bought_after": bought,
                "conversion": conversion,
                "lift": _ratio(conversion, base) if conversion is not None and base else None,
            })  # fmt: skip
        listed = [s for s in signals if s["shoppers"] >= min_support and s["lift"] is not None]
        listed.sort(key=lambda s: (-s["lift"], s["rule"]))
        curve = self.curve
        return {
            "events": self.events,
            "late_events": self.late,
            "shoppers": self.shoppers,
            "buyers": self.buyers,
            "base_rate": base,
            "window": [_iso(self.start if self.start < math.inf else 0.0), _iso(self.end)],
            "tiers": self.tiers.rows(self.buyers, base),
            "naive": {"rule": naive.RULE, "tiers": self.naive.rows(self.buyers, base)},
            "thresholds": {
                "horizon_seconds": curve.horizon,
                "highest_whole_score": curve.top,
                "rows": curve.at(curve.grid(min_support, marks), self.buyers),
            },
            "cart_recovery": {
                "triggers": self.triggers,
                "followed_by_purchase": self.recovered,
                "rate": _ratio(self.recovered, self.triggers),
            },
            "top_signals": listed[:TOP_SIGNALS],
            "min_support": min_support,
        }


def compute(
    result: ReplayResult, min_support: int = MIN_SUPPORT, horizon: float = HORIZON_SECONDS,
    marks: tuple[float, ...] = (),
) -> dict[str, Any]:  # fmt: skip
    tally = Tally(horizon)
    tally.add(result)
    return tally.report(min_support, marks)


def tier_marks(rules: RuleSet) -> tuple[float, float, float]:
    """The tier thresholds, to mark among the score thresholds."""
    return rules.tiers.low, rules.tiers.mid, rules.tiers.high


def with_rules(report: dict[str, Any], rules: RuleSet, source: str) -> dict[str, Any]:
    """The report with the rules that made it: where they came from, their digest (two
    reports with one digest ran the same rules) and thresholds, and each listed
    signal's points, to set against its lift when tuning."""
    points = {rule.id: rule.points for rule in rules.rules}
    tiers = rules.tiers
    return report | {
        "rules": {
            "source": source,
            "digest": digest(rules),
            "count": len(rules.rules),
            "tiers": {"low": tiers.low, "mid": tiers.mid, "high": tiers.high,
                      "hysteresis": tiers.hysteresis},
            "half_life_seconds": rules.defaults.half_life,
        },
        "top_signals": [s | {"points": points.get(s["rule"])} for s in report["top_signals"]],
    }  # fmt: skip


def _iso(t: float) -> str:
    from datetime import UTC

    return datetime.fromtimestamp(t, tz=UTC).isoformat()


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def _times(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _span(seconds: float) -> str:
    """A horizon: `7 d`, `36 h`, `90 min`, `45 s`."""
    for unit, name in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= unit:
            return f"{seconds / unit:.3g} {name}"
    return f"{seconds:.3g} s"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def markdown(report: dict[str, Any], source: str) -> str:
    lines = [
        f"# Backtest: {source}",
        "",
        f"{report['events']:,} events, {report['shoppers']:,} shoppers, {report['buyers']:,} "
        f"buyers (base rate {_pct(report['base_rate'])}), {report['window'][0]} to "
        f"{report['window'][1]}.",
        "",
    ]
    said = [ORDER_TEXT[report["order"]]] if "order" in report else []
    if report.get("late_events"):
        said.append(
            f"{report['late_events']:,} late events (older than the allowed lateness behind "
            "their shopper's newest) were not scored (a late purchase still counts as one)"
        )
    if said:
        lines += ["; ".join(said) + ".", ""]
    if "rules" in report:
        r = report["rules"]
        t = r["tiers"]
        lines += [
            f"Rules: {r['source']} ({r['count']} rules, digest `{r['digest']}`; tiers low "
            f"{t['low']:g}, mid {t['mid']:g}, high {t['high']:g}, hysteresis {t['hysteresis']:g}; "
            f"half-life {_duration(r['half_life_seconds'])}).",
            "",
        ]
    lines += [
        "| tier | reached | bought after | conversion | lift | share of buyers | median lead "
        "| naive: reached | lift | share of buyers |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t, n in zip(report["tiers"], report["naive"]["tiers"], strict=True):
        lines.append(
            f"| {t['tier']} | {t['reached']:,} | {t['bought_after']:,} | {_pct(t['conversion'])} "
            f"| {_times(t['lift'])} | {_pct(t['share_of_buyers'])} "
            f"| {_duration(t['median_lead_time_seconds'])} "
            f"| {n['reached']:,} | {_times(n['lift'])} | {_pct(n['share_of_buyers'])} |"
        )
    lines += [
        "",
        f"Naive rule, from the events alone: {report['naive']['rule']} (same definitions).",
    ]
    lines += _threshold_table(report)
    cart = report["cart_recovery"]
    lines += [
        "",
        f"Cart recovery: {cart['triggers']:,} triggers, {cart['followed_by_purchase']:,} "
        f"followed by a purchase ({_pct(cart['rate'])}).",
        "",
        f"Top signals by lift (at least {report['min_support']} shoppers):",
        "",
        "| rule | points | shoppers | bought after | conversion | lift |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for s in report["top_signals"]:
        points = "-" if s.get("points") is None else f"{s['points']:g}"
        lines.append(
            f"| {s['rule']} | {points} | {s['shoppers']:,} | {s['bought_after']:,} | "
            f"{_pct(s['conversion'])} | {_times(s['lift'])} |"
        )
    lines += [
        "",
        "A shopper *reached* a tier when their tier first became that tier or higher; "
        "*bought after* means a purchase strictly later. Lift is conversion over the base "
        "rate. *Share of buyers*: buyers who reached the tier before their first purchase. "
        "Lead time: from reaching the tier to that first purchase.",
        "",
        "![conversion by tier](conversion_by_tier.png)",
        "",
    ]
    if report["thresholds"]["rows"]:
        lines += ["![score threshold against purchases](thresholds.png)", ""]
    return "\n".join(lines)


def _threshold_table(report: dict[str, Any]) -> list[str]:
    """A few rows of the score-threshold curve: 1, evenly spaced ones, the tiers'."""
    curve = report["thresholds"]
    rows = curve["rows"]
    if not rows:
        return []
    tiers = report.get("rules", {}).get("tiers", {})
    named = {math.ceil(tiers[t]): t for t in TIERS if t in tiers}
    shown = table(rows[-1]["threshold"], named)
    within = _span(curve["horizon_seconds"])
    lines = [
        "",
        f"Score thresholds against purchases within {within} (all of them in report.json; "
        "the chart: thresholds.png):",
        "",
        f"| score threshold | reached | bought within {within} | precision "
        f"| buyers who reached it before buying | recall |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        t = r["threshold"]
        if t not in shown:
            continue
        label = f"{t} ({named[t]})" if t in named else f"{t}"
        lines.append(
            f"| {label} | {r['reached']:,} | {r['bought_within']:,} | {_pct(r['precision'])} "
            f"| {r['buyers_reached_before']:,} | {_pct(r['recall'])} |"
        )
    lines += [
        "",
        f"*Precision*: of the shoppers whose score reached the threshold, the share who "
        f"bought within {within} after first reaching it. *Recall*: of all buyers, the share "
        f"whose score reached it before their first purchase, at most {within} before it.",
    ]
    return lines


def require_charts() -> None:
    """Raises a one-line `MissingExtra` if the charts cannot be drawn here."""
    if importlib.util.find_spec("matplotlib") is None:
        raise MissingExtra(
            "--report draws charts with matplotlib, which is not installed: "
            "pip install 'intent-processor[report]'"
        )


def charts(report: dict[str, Any], out: Path) -> list[Path]:
    require_charts()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    tiers = report["tiers"]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    values = [100 * (t["conversion"] or 0.0) for t in tiers]
    bars = ax.bar([t["tier"] for t in tiers], values, color=["#9ecae1", "#4292c6", "#08519c"])
    if report["base_rate"] is not None:
        ax.axhline(100 * report["base_rate"], color="#d62728", linestyle="--", label="base rate")
        ax.legend(loc="upper left")
    for bar, t in zip(bars, tiers, strict=True):
        label = f"{_times(t['lift'])}\nn={t['reached']:,}"
        ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)  # fmt: skip
    ax.set_ylabel("bought after reaching (%)")
    ax.set_title("Conversion by tier (lift over base rate)")
    ax.margins(y=0.25)
    fig.tight_layout()
    path = out / "conversion_by_tier.png"
    fig.savefig(path)
    plt.close(fig)
    paths.append(path)

    rows = report["thresholds"]["rows"]
    if rows:
        paths.append(_threshold_chart(plt, report, out))

    top = report["top_signals"]
    if top:
        fig, ax = plt.subplots(figsize=(6, 0.4 * len(top) + 1.2), dpi=120)
        ax.barh([s["rule"] for s in top][::-1], [s["lift"] for s in top][::-1], color="#4292c6")
        ax.axvline(1.0, color="#d62728", linestyle="--")
        ax.set_xlabel("lift over base rate")
        ax.set_title("Top signals by lift")
        fig.tight_layout()
        path = out / "top_signals.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def _threshold_chart(plt: Any, report: dict[str, Any], out: Path) -> Path:
    """Precision (top) and recall (bottom) by score threshold, the tier thresholds
    marked: two panels, as precision is often a few percent and recall up to 100."""
    curve = report["thresholds"]
    rows = curve["rows"]
    within = _span(curve["horizon_seconds"])
    x = [r["threshold"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(7, 5.4), dpi=120)
    for ax, key, color in ((top, "precision", "#08519c"), (bottom, "recall", "#ff7f0e")):
        y = [math.nan if r[key] is None else 100 * r[key] for r in rows]
        ax.plot(x, y, marker=".", markersize=3, color=color)
        ax.set_ylabel(f"{key} (%)")
        ax.set_ylim(bottom=0)
        ax.grid(axis="y", linewidth=0.3)
    if report["base_rate"] is not None:
        top.axhline(100 * report["base_rate"], color="#d62728", linestyle=":", linewidth=1,
                    label="base rate")  # fmt: skip
        top.legend(loc="upper left", fontsize=8)
    bottom.set_ylim(0, 105)
    tiers = report.get("rules", {}).get("tiers", {})
    for tier in TIERS:
        if tier in tiers:
            for ax in (top, bottom):
                ax.axvline(tiers[tier], color="#555555", linestyle="--", linewidth=1)
            bottom.annotate(f" {tier} {tiers[tier]:g}", (tiers[tier], 1.0),
                            xycoords=("data", "axes fraction"), ha="left", va="top",
                            fontsize=8, color="#555555")  # fmt: skip
    top.set_title(
        f"Shoppers who bought within {within} of reaching the threshold (precision),\n"
        f"buyers who reached it within {within} before buying (recall)",
        fontsize=10,
    )
    bottom.set_xlabel("score threshold (points)")
    fig.tight_layout()
    path = out / "thresholds.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def write(
    result: ReplayResult | Tally, out: Path, source: str,
    rules: tuple[RuleSet, str] | None = None, min_support: int = MIN_SUPPORT,
    order: str | None = None, horizon: float = HORIZON_SECONDS,
) -> dict[str, Any]:  # fmt: skip
    """Write report.json, report.md and the charts to `out`; `rules` (the rule set and
    where it came from) adds their identity and each listed signal's points, and marks
    their tier thresholds among the score thresholds; `order` the order each shopper's
    events were replayed in (`replay.ORDERS`); `horizon` (seconds) is that of the score
    thresholds' purchases for a `ReplayResult` (a `Tally` has its own)."""
    out.mkdir(parents=True, exist_ok=True)
    tiers = tier_marks(rules[0]) if rules is not None else ()
    report = (
        result.report(min_support, tiers)
        if isinstance(result, Tally)
        else compute(result, min_support, horizon, tiers)
    )
    if order is not None:
        report["order"] = order
    if rules is not None:
        report = with_rules(report, *rules)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(report, source))
    charts(report, out)
    return report
