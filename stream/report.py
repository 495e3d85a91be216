"""The backtest report: do the tiers predict purchases? Computed from the event file
(who bought, when) and the tier changes the rules produced on it.

Definitions (also in the Markdown output):
- a shopper *reached* a tier when their tier first became that tier **or higher**;
- *bought after*: a purchase strictly later than that moment;
- conversion = bought after / reached; lift = conversion / base rate, where the base rate
  is buyers / all shoppers in the file;
- *share of buyers*: buyers who reached the tier before their first purchase, over all
  buyers; *lead time*: from reaching the tier to that first purchase (median).
"""

from __future__ import annotations

import json
import statistics
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from schemas.outputs import CartRecovery
from stream.replay import ReplayResult

TIERS: Final = ("low", "mid", "high")
RANK: Final = {"none": 0, "low": 1, "mid": 2, "high": 3, "suppressed": -1}
MIN_SUPPORT: Final = 10  # shoppers a signal needs before its lift is listed
TOP_SIGNALS: Final = 10


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def compute(result: ReplayResult) -> dict[str, Any]:
    purchases = result.purchases
    buyers = set(purchases)
    first_buy = {s: min(times) for s, times in purchases.items()}
    shoppers = result.shoppers
    base = _ratio(len(buyers), shoppers)

    reached: dict[str, dict[str, float]] = {tier: {} for tier in TIERS}
    for change in result.changes:
        at = change.at.timestamp()
        for tier in TIERS:
            if RANK[change.to_tier] >= RANK[tier]:
                reached[tier].setdefault(change.shopper_id, at)

    tiers = []
    for tier in TIERS:
        who = reached[tier]
        after = [s for s, t in who.items() if any(p > t for p in purchases.get(s, ()))]
        before_first = [s for s in buyers if s in who and who[s] < first_buy[s]]
        leads = [first_buy[s] - who[s] for s in before_first]
        conversion = _ratio(len(after), len(who))
        tiers.append({
            "tier": tier,
            "reached": len(who),
            "bought_after": len(after),
            "conversion": conversion,
            "lift": _ratio(conversion, base) if conversion is not None and base else None,
            "share_of_buyers": _ratio(len(before_first), len(buyers)),
            "median_lead_time_seconds": statistics.median(leads) if leads else None,
        })  # fmt: skip

    triggers = [a.value for a in result.actions if isinstance(a.value, CartRecovery)]
    recovered = [
        t for t in triggers
        if any(p > t.at.timestamp() for p in purchases.get(t.shopper_id, ()))
    ]  # fmt: skip

    first_signal: dict[str, dict[str, float]] = {}
    for signal in result.signals:
        if signal.points <= 0:
            continue  # suppression and markers: not intent
        seen = first_signal.setdefault(signal.rule_id, {})
        at = signal.at.timestamp()
        if signal.shopper_id not in seen or at < seen[signal.shopper_id]:
            seen[signal.shopper_id] = at
    signals: list[dict[str, Any]] = []
    for rule, who in first_signal.items():
        after = [s for s, t in who.items() if any(p > t for p in purchases.get(s, ()))]
        conversion = _ratio(len(after), len(who))
        signals.append({
            "rule": rule, "shoppers": len(who), "bought_after": len(after),
            "conversion": conversion,
            "lift": _ratio(conversion, base) if conversion is not None and base else None,
        })  # fmt: skip
    listed = [s for s in signals if s["shoppers"] >= MIN_SUPPORT and s["lift"] is not None]
    listed.sort(key=lambda s: (-s["lift"], s["rule"]))

    return {
        "events": result.events,
        "shoppers": shoppers,
        "buyers": len(buyers),
        "base_rate": base,
        "window": [_iso(min(result.first_seen.values(), default=0.0)), _iso(result.end)],
        "tiers": tiers,
        "cart_recovery": {
            "triggers": len(triggers),
            "followed_by_purchase": len(recovered),
            "rate": _ratio(len(recovered), len(triggers)),
        },
        "top_signals": listed[:TOP_SIGNALS],
        "min_support": MIN_SUPPORT,
    }


def _iso(t: float) -> str:
    from datetime import UTC

    return datetime.fromtimestamp(t, tz=UTC).isoformat()


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def _times(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


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
        "| tier | reached | bought after | conversion | lift | share of buyers | median lead |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for t in report["tiers"]:
        lines.append(
            f"| {t['tier']} | {t['reached']:,} | {t['bought_after']:,} | {_pct(t['conversion'])} "
            f"| {_times(t['lift'])} | {_pct(t['share_of_buyers'])} "
            f"| {_duration(t['median_lead_time_seconds'])} |"
        )
    cart = report["cart_recovery"]
    lines += [
        "",
        f"Cart recovery: {cart['triggers']:,} triggers, {cart['followed_by_purchase']:,} "
        f"followed by a purchase ({_pct(cart['rate'])}).",
        "",
        f"Top signals by lift (at least {report['min_support']} shoppers):",
        "",
        "| rule | shoppers | bought after | conversion | lift |",
        "|---|---:|---:|---:|---:|",
    ]
    for s in report["top_signals"]:
        lines.append(
            f"| {s['rule']} | {s['shoppers']:,} | {s['bought_after']:,} | "
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
    return "\n".join(lines)


def charts(report: dict[str, Any], out: Path) -> list[Path]:
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


def write(result: ReplayResult, out: Path, source: str) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    report = compute(result)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(report, source))
    charts(report, out)
    return report
