"""What a shopper's events produce does not depend on how they are batched.

The worker detects and scores the events of a batch together, replay a shopper's whole
history in one call, and Kafka may hand the same events over in other batches after a
restart. Each way must give the same tier changes and actions, ids and content alike.
Scored by time alone, two cases did not (found with the generated shoppers below):
- two events of one instant: one evaluation of the tier in one call, two in two calls
  (none to mid, or none to low then low to mid);
- an absence fired late (its deadline passes only once an event `allowed_lateness`
  after it arrives): in one call it was scored at its deadline, ahead of the events in
  between; in calls event by event, after them.
Signals are now scored by the event that fired them (`Outcome.groups`), then by time.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from schemas.events import Event
from stream.detectors.engine import ADVANCED, Engine
from stream.files import read_events
from stream.rulesfile import load_rules
from stream.scoring.actions import Output, outputs_for, to_score_signal
from stream.scoring.reference import ScoreConfig, apply, new_state

RULES = load_rules()
CFG = ScoreConfig(RULES.tiers.low, RULES.tiers.mid, RULES.tiers.high, RULES.tiers.hysteresis)
ENGINE = Engine(RULES)
TYPES = ["product_view"] * 4 + [
    "add_to_cart", "cart_view", "checkout_started", "purchase", "page_view", "search",
    "email_open", "email_click",
]  # fmt: skip
# Seconds to the next event: the same instant, around the 30-minute absence windows and
# their 5 minutes of lateness, and back in time (out of order, within the lateness).
STEPS = [0, 0, 1, 30, 120, 600, 1500, 1800, 1900, 2100, 2400, 7200, -60, -200]


def shopper(rng: random.Random, name: str) -> list[Event]:
    ts = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(3600))
    events = []
    for i in range(rng.randrange(2, 25)):
        ts += timedelta(seconds=rng.choice(STEPS))
        kind = rng.choice(TYPES)
        body: dict[str, Any] = {
            "event_id": f"{name}-{i}", "shopper_id": name, "type": kind, "ts": ts.isoformat(),
            "source": "test",
        }  # fmt: skip
        if kind in ("product_view", "add_to_cart"):
            body["product"] = {
                "sku": f"sku-{rng.randrange(3)}", "category": f"cat-{rng.randrange(2)}",
                "price": 10.0,
            }  # fmt: skip
        if kind == "page_view":
            body["page"] = {"type": rng.choice(["faq", "returns", "home"])}
        if kind == "search":
            body["properties"] = {"query": rng.choice(["how to pick one", "buy cheap"])}
        events.append(Event.model_validate(body))
    return events


def in_batches(name: str, batches: list[list[Event]], end: float) -> Counter[str]:
    """Detect and score batch by batch, as the worker does (one state each, carried
    over), then fire and score everything due by `end`, as a sweep or replay does."""
    state, scores = ENGINE.new_state(), new_state()
    outputs: list[Output] = []
    for batch in batches:
        outcome = ENGINE.process(name, state, batch)
        outputs += _scored(name, scores, outcome.signals, outcome.groups, None)
    outputs += _scored(name, scores, ENGINE.advance(name, state, end), {}, end)
    return Counter(
        json.dumps([o.topic, o.key, json.loads(o.value.model_dump_json())], sort_keys=True)
        for o in outputs
    )


def _scored(
    name: str, scores: dict[str, Any], signals: list[Any], groups: dict[str, int], now: Any
) -> list[Output]:
    if not signals and now is None:
        return []
    batch = [to_score_signal(s, groups.get(s.signal_id, ADVANCED)) for s in signals]
    return outputs_for(name, apply(scores, batch, now, CFG), signals)


def splits(rng: random.Random, events: list[Event]) -> list[list[list[Event]]]:
    """The events in one batch, one by one, and cut at random places."""
    cuts = sorted(rng.sample(range(1, len(events)), rng.randrange(len(events))))
    random_cut = [events[a:b] for a, b in zip([0, *cuts], [*cuts, len(events)], strict=True)]
    return [[events], [[e] for e in events], random_cut]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_generated_shoppers_give_the_same_outputs_however_batched(seed: int) -> None:
    rng = random.Random(seed)
    checked = changed = 0
    for i in range(600):
        name = f"u{seed}-{i}"
        events = shopper(rng, name)
        end = max(e.ts for e in events).timestamp() + 7 * 86400
        whole, *others = [in_batches(name, b, end) for b in splits(rng, events)]
        assert all(other == whole for other in others), name
        checked += 1
        changed += any("topic_tier_changes" in line for line in whole)
    assert checked == 600 and changed > 300  # most reach a tier: the check is not empty


def test_the_rees46_sample_gives_the_same_outputs_event_by_event(shared_data: Path) -> None:
    """The real sample, every shopper's events in one batch and one by one (here two
    product views of one second crossed two tiers, the case found by the live test)."""
    by_shopper: dict[str, list[Event]] = {}
    for item in read_events(shared_data / "rees46_2019-10-01_head.csv.gz", "rees46"):
        if isinstance(item, Event):
            by_shopper.setdefault(item.shopper_id, []).append(item)
    end = max(e.ts for events in by_shopper.values() for e in events).timestamp()
    differ = []
    for name, events in by_shopper.items():
        events.sort(key=lambda e: e.ts)
        if in_batches(name, [events], end) != in_batches(name, [[e] for e in events], end):
            differ.append(name)
    assert len(by_shopper) > 4000
    assert differ == []
