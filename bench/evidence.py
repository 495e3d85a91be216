"""How the built-in rules' points were chosen from real clickstreams, and where they stand
on each file: `make evidence` (needs the three sample files beside the project, in
`../shared/data`: REES46, Taobao and OTTO; it says which are missing).

The rules' *kinds* and windows are the playbook's; the data chooses the points of the
rules it has evidence for. Signals do not depend on points, so each file is replayed
once with the built-in rules, and the score any set of points would give is computed
from the signals (`stream.offline.calibrate.moments`: each rule's decayed share of the
score at each signal, restarted at a purchase). Mid's threshold stays the file's (it
sets the scale); low and high are chosen with the points.

A choice passes on a file when (`stream/offline/search.py`, which also keeps the high
tier at least a tenth of the naive high):
- lift rises strictly, low < mid < high;
- the high tier's lift is at least the naive rule's ("a cart add puts a shopper in high,
  three product views in mid");
- the share of buyers who reach mid or high before their first purchase (capture) is at
  least the naive rule's.

The search (deterministic: a fixed seed) takes the choice with the largest smallest
margin over the training files. Leave one
out: for each file, the points are chosen on the other two and reported on it, replayed
by the real engine; then on all three, which is what the built-in file carries. Every
search starts from the playbook's prior points (PRIOR), never from the built-in ones.

    python -m bench.evidence [--rules FILE] [--samples N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Final

from schemas.rules import RuleSet
from stream.offline.files import LineError, read_events
from stream.offline.replay import replay
from stream.offline.search import SAMPLES, passes, scored_rules, search, table, with_points
from stream.offline.standing import Standing, purchases_of, rules_reached, standing
from stream.rulesfile import load_rules

# Where every search starts: the points the built-in file carried before they were chosen
# on data (the playbook's wording; three product views in a day, added with the search,
# at 14) and tiers 1 / 15 / 35. Starting from the built-in points instead would carry
# into a leave-one-out run what the held-out file taught them.
PRIOR: Final = {
    "several_product_pages": 12.0, "product_viewed": 2.0, "three_product_views": 14.0,
    "added_to_cart": 10.0, "wishlist_add": 8.0, "repeat_product_views": 10.0,
    "repeat_collection_views": 6.0, "single_page_visit": 1.0, "low": 1.0, "high": 35.0,
}  # fmt: skip
ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
FILES: Final = (
    ("REES46", DATA / "rees46_2019-10-01_head.csv.gz", "rees46"),
    ("Taobao", DATA / "taobao_userbehavior_2017-11-26.csv.gz", "taobao"),
    ("OTTO", DATA / "otto_20_sessions.jsonl.gz", "otto"),
)


def on_engine(path: Path, fmt: str, rules: RuleSet) -> Standing:
    """Where `rules` stand on a file, replayed by the real engine."""
    events = [e for e in read_events(path, fmt) if not isinstance(e, LineError)]
    result = replay(path, fmt, rules)
    return standing(rules_reached(result), purchases_of(events), result.shoppers)


def row(label: str, s: Standing) -> str:
    def lift(v: float | None) -> str:
        return f"{v:.2f}" if v is not None else "-"

    return (
        f"| {label} | {lift(s.lift['low'])} | {lift(s.lift['mid'])} | {lift(s.lift['high'])} "
        f"| {s.capture:.1%} | {s.reached['mid']:,} / {s.reached['high']:,} |"
    )


HEAD = (
    "| rules | lift low | lift mid | lift high | capture | mid / high shoppers |\n"
    "|---|---:|---:|---:|---:|---:|"
)


def _ids(rules: RuleSet) -> set[str]:
    return {rule.id for rule in rules.rules}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rules", type=Path, help="the rules to start from (default: built-in)")
    parser.add_argument("--samples", type=int, default=SAMPLES)
    args = parser.parse_args()
    missing = [str(path) for _, path, _ in FILES if not path.exists()]
    if missing:
        print(f"the sample files are not there: {', '.join(missing)}", file=sys.stderr)
        return 2
    rules = load_rules(args.rules)
    prior = with_points(
        rules, {k: v for k, v in PRIOR.items() if k in {*_ids(rules), "low", "high"}}
    )
    print(f"scored rules: {len(scored_rules(rules))}; tiers {rules.tiers.low:g} / "
          f"{rules.tiers.mid:g} / {rules.tiers.high:g}", file=sys.stderr)  # fmt: skip
    tables = []
    for name, path, fmt in FILES:
        print(f"replaying {name} ...", file=sys.stderr)
        events = [e for e in read_events(path, fmt) if not isinstance(e, LineError)]
        tables.append(table(name, replay(path, fmt, rules), events, rules))
    print("\n## Leave one file out: points chosen on the other two\n")
    for held, (name, path, fmt) in enumerate(FILES):
        training = [t for i, t in enumerate(tables) if i != held]
        points, searched = search(training, prior, args.samples)
        chosen = with_points(rules, points)
        s = on_engine(path, fmt, chosen)
        naive = tables[held].naive
        print(f"### {name}, points chosen on {' and '.join(t.name for t in training)}\n")
        print(", ".join(f"{n} {points[n]:g}" for n in searched), end="; ")
        print(f"tiers {points['low']:g} / {rules.tiers.mid:g} / {points['high']:g}\n")
        print(HEAD)
        print(row("naive rule", naive))
        print(row("built-in rules", on_engine(path, fmt, rules)))
        print(row("chosen on the other two", s))
        print(f"\npasses on {name}: {'yes' if passes(s, naive) else 'no'}\n")
    points, searched = search(tables, prior, args.samples)
    print("## Points chosen on all three files\n")
    for n in searched:
        support = ", ".join(f"{t.name} {t.support.get(n, 0):,}" for t in tables)
        given = next(rule.points for rule in rules.rules if rule.id == n)
        print(f"- {n}: {points[n]:g} (built-in: {given:g}; shoppers: {support})")
    t = rules.tiers
    print(f"- tiers: low {points['low']:g}, mid {t.mid:g}, high {points['high']:g} "
          f"(built-in: {t.low:g}, {t.mid:g}, {t.high:g})")  # fmt: skip
    chosen = with_points(rules, points)
    print()
    for name, path, fmt in FILES:
        s = on_engine(path, fmt, chosen)
        naive = tables[[f[0] for f in FILES].index(name)].naive
        print(f"### {name}\n\n{HEAD}\n{row('naive rule', naive)}\n{row('chosen on all three', s)}")
        print(f"\npasses: {'yes' if passes(s, naive) else 'no'}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
