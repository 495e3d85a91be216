"""The fault suite's input and its verdict: seeded journeys, the file `replay` reads, and
the comparison of what the workers sent with what replay computes.

**Journeys.** Each shopper comes back for `rounds` visits ("rounds"), each a run of
`tests.scenarios.generated_shopper` events (views, carts, checkouts, purchases, emails,
opt-outs, ...) at most ROUND_SPAN long, ROUND_EVERY apart in event time, so that state
carries over from visit to visit (repeat views, collections, the cart, suppressions).
Event times lie a few hours in the past: by the time a round is sent, every absence
window and visit of the rounds before it has closed in wall-clock time.

That is why a round is sent as one burst (one produce request, appended at once) and
why rounds are ROUND_EVERY apart. A worker whose partition is idle fires what is due by
the wall clock (`Sweeper.until`), which for past events is everything; a shopper half
delivered would have a deadline fired that the rest of the round cancels (replay,
reading the whole file, would not fire it). Whole rounds, with every deadline of one
round (at most 30 min after its last event, the default rules' longest short window)
due more than the allowed lateness before the next round starts, make the worker's
firing time irrelevant, which is what lets a run with faults be compared with replay at
all. The rules' longer windows (2 days, 7 days) and decays (a 3-day half-life: no tier is
left within 11 hours) never fall due during a run.

A last event, `closer`, is stamped at generation time: replay fires what is due up to the
file's last event, so that it fires every deadline the workers fire by the wall clock.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from schemas.events import Event
from schemas.outputs import OutputTopic
from stream.offline.outputs import action_lines
from stream.offline.replay import replay
from stream.offline.result import ReplayResult
from stream.rulesfile import load_rules
from tests.scenarios import generated_shopper

ROUND_STEPS: Final = [0, 0, 1, 10, 30, 60, 120, 300]  # seconds between a round's events
ROUND_SPAN: Final = timedelta(minutes=15)  # a round's events, first to last
ROUND_JITTER: Final = timedelta(minutes=25)  # where in its slot a shopper's rounds begin
ROUND_EVERY: Final = timedelta(minutes=80)  # >= span + jitter + 30 min window + lateness
ROUNDS: Final = 3
ACTION_TOPICS: Final = (
    OutputTopic.RETARGETING, OutputTopic.CART_RECOVERY, OutputTopic.NURTURE, OutputTopic.SUPPRESSION
)  # fmt: skip
ACTION_IDS: Final = ("action_id", "trigger_id", "record_id")


@dataclass(frozen=True)
class Burst:
    """One round of one shopper: sent together, keyed by the shopper."""

    shopper: str
    round: int
    events: tuple[Event, ...]

    def records(self) -> list[tuple[bytes, bytes]]:
        return [(self.shopper.encode(), e.to_json()) for e in self.events]


@dataclass
class Journeys:
    bursts: list[Burst]  # in the order they are sent: by the time their round begins
    closer: Event

    @property
    def events(self) -> int:
        return sum(len(b.events) for b in self.bursts) + 1

    def write(self, path: Path) -> Path:
        """The canonical JSON Lines file of every event in the order sent (what the
        workers ingest; `replay(path, "canonical", ..., order="file")` reads it)."""
        lines = [e.to_json() for b in self.bursts for e in b.events] + [self.closer.to_json()]
        path.write_bytes(b"\n".join(lines) + b"\n")
        return path


def journeys(
    seed: int, shoppers: int, rounds: int = ROUNDS, now: datetime | None = None
) -> Journeys:
    """`shoppers` shoppers of `rounds` rounds each, the last round ending over an hour
    before `now`; the same seed gives the same events, shifted in time with `now`."""
    now = now or datetime.now(UTC)
    start = now - rounds * ROUND_EVERY - timedelta(hours=1)
    rng = random.Random(seed)
    bursts = []
    for i in range(shoppers):
        shopper = f"f{i}"
        offset = timedelta(seconds=rng.randrange(int(ROUND_JITTER.total_seconds())))
        for k in range(rounds):
            begins = start + k * ROUND_EVERY + offset
            # sessions, event ids: `<shopper>~r<k>...`, unique per round
            raw = generated_shopper(rng, f"{shopper}~r{k}", begins, ROUND_STEPS)
            shift = begins - raw[0].ts
            events = []
            for j, event in enumerate(raw):
                ts = event.ts + shift
                if ts - begins > ROUND_SPAN:
                    break
                body = event.model_dump(mode="json", exclude_none=True)
                body.update(shopper_id=shopper, event_id=f"{shopper}-{k}-{j}", ts=ts.isoformat())
                events.append(Event.model_validate(body))
            bursts.append(Burst(shopper, k, tuple(events)))
    bursts.sort(key=lambda b: (b.events[0].ts, b.shopper))
    closer = Event(event_id="closer", shopper_id="closer", type="page_view", ts=now, source="test")
    return Journeys(bursts, closer)


@dataclass
class Expected:
    """What replay computes for the file: tier changes by id, actions by (topic, id)."""

    changes: dict[str, dict[str, Any]]
    actions: dict[tuple[str, str], dict[str, Any]]
    final_tier: dict[str, str]
    result: ReplayResult


def expected(path: Path, topics: dict[OutputTopic, str]) -> Expected:
    result = replay(path, "canonical", load_rules(), order="file")
    changes = {c.change_id: json.loads(c.model_dump_json()) for c in result.changes}
    actions = {}
    for line in action_lines(result.actions, topics):
        actions[line["topic"], action_id(line["value"])] = line["value"]
    final = {}
    for change in result.changes:  # in time order, each shopper's in their own order
        final[change.shopper_id] = change.to_tier
    return Expected(changes, actions, final, result)


def action_id(value: dict[str, Any]) -> str:
    for name in ACTION_IDS:
        if name in value:
            return str(value[name])
    raise AssertionError(f"an action without an id: {value}")


@dataclass
class Verdict:
    """Live against replay. `lost`: expected, never sent; `wrong`: an id sent with other
    content than replay's (or with two contents); `extra`: an id replay does not
    compute; `redelivered`: the same record sent again (at least once: not a failure).
    Changes and actions together, and each apart in `detail`."""

    lost: int = 0
    wrong: int = 0
    extra: int = 0
    redelivered: int = 0
    final_tier_mismatches: int = 0
    detail: dict[str, Any] = field(default_factory=dict)


def judge(
    want: Expected,
    changes: Iterable[dict[str, Any]],
    actions: Iterable[tuple[str, dict[str, Any]]],
) -> Verdict:
    """`changes`: tier-change records as read, in each partition's order; `actions`:
    (topic, value) of the action topics' records."""
    verdict = Verdict()
    seen: dict[str, list[dict[str, Any]]] = defaultdict(list)
    final: dict[str, str] = {}
    for change in changes:
        seen[change["change_id"]].append(change)
        final[change["shopper_id"]] = change["to_tier"]
    part = _tally(want.changes, seen)
    verdict.detail["changes"] = part
    acts: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for topic, value in actions:
        acts[topic, action_id(value)].append(value)
    verdict.detail["actions"] = _tally(want.actions, acts)
    for part in verdict.detail.values():
        verdict.lost += part["lost"]
        verdict.wrong += part["wrong"]
        verdict.extra += part["extra"]
        verdict.redelivered += part["redelivered"]
    shoppers = set(want.final_tier) | set(final)
    mismatched = sorted(s for s in shoppers if want.final_tier.get(s) != final.get(s))
    verdict.final_tier_mismatches = len(mismatched)
    verdict.detail["final_tier_examples"] = [
        (s, want.final_tier.get(s), final.get(s)) for s in mismatched[:5]
    ]
    return verdict


def _tally(want: dict[Any, dict[str, Any]], got: dict[Any, list[dict[str, Any]]]) -> dict[str, Any]:
    lost = [k for k in want if k not in got]
    extra = [k for k in got if k not in want]
    wrong = []
    redelivered = 0
    for key, records in got.items():
        contents = Counter(json.dumps(r, sort_keys=True) for r in records)
        redelivered += len(records) - len(contents)
        if key in want and (len(contents) > 1 or json.loads(next(iter(contents))) != want[key]):
            wrong.append(key)
    return {
        "expected": len(want),
        "lost": len(lost),
        "wrong": len(wrong),
        "extra": len(extra),
        "redelivered": redelivered,
        "examples": {
            "lost": [str(k) for k in lost[:3]],
            "wrong": [str(k) for k in wrong[:3]],
            "extra": [str(k) for k in extra[:3]],
        },
    }
