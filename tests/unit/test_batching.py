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
With the timer between batches (`test_sweeps_between_batches_change_nothing`), two more:
- a checkout superseded an earlier one whose deadline had passed: that abandonment
  fired only if the timer got to it first;
- an abandoned checkout carried the cart of the moment it fired, not of its deadline.
With suppressions among the events: a purchase that came before a view a minute older
(out of order) suppressed the view's actions in a later batch, not in the same one (an
action obeyed the suppressions in force at its signal's time, not when it was scored).
"""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter
from datetime import UTC, datetime
from itertools import accumulate
from pathlib import Path
from typing import Any

import pytest

from schemas.events import Event
from stream.core.detectors.engine import Engine
from stream.core.outputs import Output, outputs_for, score_signals
from stream.core.scoring import ScoreConfig, apply, new_state, next_deadline
from stream.offline.files import read_events
from stream.rulesfile import load_rules
from tests.scenarios import IN_ORDER_STEPS, STEPS, generated_shopper

RULES = load_rules()
CFG = ScoreConfig(RULES.tiers.low, RULES.tiers.mid, RULES.tiers.high, RULES.tiers.hysteresis)
ENGINE = Engine(RULES)


def in_batches(
    name: str, batches: list[list[Event]], end: float, sweeps: list[float] | None = None
) -> Counter[str]:
    """Detect and score batch by batch, as the worker does (one state each, carried
    over), with a sweep after batch i up to `sweeps[i]` if given (the timer: absences
    and visit ends due, scored in a call of their own, then each decay or suppression
    end due, a call each at its time), then fire and score everything due by `end`, as
    a sweep or replay does."""
    state, scores = ENGINE.new_state(), new_state()
    outputs: list[Output] = []
    for i, batch in enumerate(batches):
        outcome = ENGINE.process(name, state, batch)
        outputs += _scored(name, scores, outcome.signals, outcome.groups, None)
        if sweeps is not None:
            outputs += _scored(name, scores, ENGINE.advance(name, state, sweeps[i]), {}, None)
            due = next_deadline(scores, CFG) if scores["T"] is not None else None
            while due is not None and due <= sweeps[i]:
                outputs += outputs_for(name, apply(scores, [], due, CFG), [])
                due = next_deadline(scores, CFG)
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
    return outputs_for(name, apply(scores, score_signals(signals, groups), now, CFG), signals)


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
        events = generated_shopper(rng, name, datetime(2026, 1, 1, tzinfo=UTC))
        end = max(e.ts for e in events).timestamp() + 7 * 86400
        whole, *others = [in_batches(name, b, end) for b in splits(rng, events)]
        assert all(other == whole for other in others), name
        checked += 1
        changed += any('"tier_changes"' in line for line in whole)
    assert checked == 600 and changed > 300  # most reach a tier: the check is not empty


@pytest.mark.parametrize(
    ("seed", "steps"),
    [(4, IN_ORDER_STEPS), (5, IN_ORDER_STEPS), (6, STEPS), (7, STEPS)],
    ids=["in-order-4", "in-order-5", "out-of-order-6", "out-of-order-7"],
)
def test_sweeps_between_batches_change_nothing(seed: int, steps: list[int]) -> None:
    """The timer fires what is due by the partition's event time minus the allowed
    lateness, which runs ahead of the shopper's: after a batch, up to the time the
    shopper's next event arrives at, minus the lateness. So an absence fires before that
    event, or with it; the same either way.

    An event out of order (the shopper steps back in time, within the lateness) arrives
    at the shopper's newest event time so far: it was held up on its way, while events
    of other shoppers went on. A clickstream out of order by less than the lateness is
    like this, and a worker then emits what replay in file order computes (`--order
    file`). A sweep past that bound changes the outputs: up to the next event's arrival
    time, without the lateness, fails this."""
    rng = random.Random(seed)
    lateness = RULES.defaults.allowed_lateness
    swept = 0
    for i in range(600):
        name = f"w{seed}-{i}"
        events = generated_shopper(rng, name, datetime(2026, 1, 1, tzinfo=UTC), steps)
        arrival = list(accumulate((e.ts.timestamp() for e in events), max))
        end = arrival[-1] + 7 * 86400
        cuts = sorted(rng.sample(range(1, len(events)), rng.randrange(len(events))))
        bounds = list(zip([0, *cuts], [*cuts, len(events)], strict=True))
        sweeps = []
        for _, b in bounds:
            low = arrival[b - 1] - lateness
            high = arrival[b] - lateness if b < len(events) else end
            sweeps.append(rng.uniform(low, max(low, high)))
        with_sweeps = in_batches(name, [events[a:b] for a, b in bounds], end, sweeps)
        assert with_sweeps == in_batches(name, [events], end), name
        swept += any('"cart_recovery"' in line for line in with_sweeps)
    assert swept > 50  # abandoned checkouts among them


def test_a_rees46_file_gives_the_same_outputs_event_by_event(rees46_file: Path) -> None:
    """A REES46 file, every shopper's events in one batch and one by one: product views
    of one second crossing tiers (the case found by the live test), carts, purchases."""
    by_shopper: dict[str, list[Event]] = {}
    for item in read_events(rees46_file, "rees46"):
        if isinstance(item, Event):
            by_shopper.setdefault(item.shopper_id, []).append(item)
    end = max(e.ts for events in by_shopper.values() for e in events).timestamp()
    differ = []
    for name, events in by_shopper.items():
        events.sort(key=lambda e: e.ts)
        if in_batches(name, [events], end) != in_batches(name, [[e] for e in events], end):
            differ.append(name)
    assert len(by_shopper) > 4000
    one_second = Counter(
        name for name, events in by_shopper.items()
        for a, b in itertools.pairwise(events)
        if a.ts == b.ts and a.product != b.product
    )  # fmt: skip
    assert len(one_second) > 300  # shoppers who viewed two products in one second
    assert differ == []
