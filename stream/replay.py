"""`intent replay`: the production detector and scoring core, offline, in event time.

Every shopper's state is independent of every other's, so replay reads the file, groups
events by shopper, runs each shopper's events in time order through the same `Engine`,
fires what is due up to the file's last event time, and scores the signals with the same
maths as the live worker: the pure reference in process, or the Lua script on a real
Redis (`--redis URL`). The two give identical results (tested on a real sample).
"""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from schemas.events import Event
from schemas.outputs import TierChange
from schemas.rules import RuleSet
from schemas.signals import Signal
from stream.detectors.engine import Engine
from stream.files import LineError, read_events
from stream.scoring.actions import Output, outputs_for, to_score_signal
from stream.scoring.reference import Result, ScoreConfig, ScoreSignal
from stream.scoring.store import MemoryScoreStore, ScoreStore

SCORE_BATCH: Final = 500  # shoppers per score pipeline when replaying into Redis


@dataclass
class ReplayResult:
    events: int = 0
    line_errors: dict[str, int] = field(default_factory=dict)
    late: int = 0
    shoppers: int = 0
    signals: list[Signal] = field(default_factory=list)
    changes: list[TierChange] = field(default_factory=list)
    actions: list[Output] = field(default_factory=list)
    purchases: dict[str, list[float]] = field(default_factory=dict)  # shopper -> purchase times
    first_seen: dict[str, float] = field(default_factory=dict)
    end: float = 0.0
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def events_per_second(self) -> float:
        total = sum(self.seconds.values())
        return self.events / total if total else 0.0


def load(
    path: Path, fmt: str, progress: Callable[[int], None] | None = None
) -> tuple[dict[str, list[Event]], dict[str, int]]:
    by_shopper: dict[str, list[Event]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    for item in read_events(path, fmt, progress):
        if isinstance(item, LineError):
            errors[item.reason] += 1
        else:
            by_shopper[item.shopper_id].append(item)
    return by_shopper, dict(errors)


def detect(
    engine: Engine, by_shopper: dict[str, list[Event]], result: ReplayResult
) -> dict[str, list[Signal]]:
    """Signals per shopper, with every deadline up to the file's end fired."""
    end = max((e.ts.timestamp() for events in by_shopper.values() for e in events), default=0.0)
    result.end = end
    out: dict[str, list[Signal]] = {}
    for shopper in sorted(by_shopper):
        events = sorted(by_shopper[shopper], key=lambda e: (e.ts, e.id))
        result.events += len(events)
        result.first_seen[shopper] = events[0].ts.timestamp()
        buys = [e.ts.timestamp() for e in events if e.type == "purchase"]
        if buys:
            result.purchases[shopper] = buys
        state = engine.new_state()
        outcome = engine.process(shopper, state, events)
        result.late += len(outcome.late)
        signals = outcome.signals + engine.advance(shopper, state, end)
        if signals:
            out[shopper] = signals
    result.shoppers = len(by_shopper)
    return out


async def score(
    store: MemoryScoreStore | ScoreStore, signals: dict[str, list[Signal]], end: float
) -> dict[str, Result]:
    results: dict[str, Result] = {}
    shoppers = sorted(signals)
    for i in range(0, len(shoppers), SCORE_BATCH):
        chunk = shoppers[i : i + SCORE_BATCH]
        batch: dict[str, tuple[list[ScoreSignal], float | None]] = {
            s: ([to_score_signal(x) for x in signals[s]], end) for s in chunk
        }
        results.update(await store.apply_many(batch))
    return results


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while replaying: the run holds every event and signal,
    so each collection re-scans them all, and that took 40-60 % of the time (measured on
    Taobao). Nothing replay builds is cyclic; reference counting frees it as usual."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        # What the run built is alive and acyclic: set it aside before collecting again,
        # or the first collection walks all of it (1.2 s of a 13 s Taobao run).
        # Reference counting still frees it once the caller lets go.
        gc.freeze()
        if was:
            gc.enable()


def replay(
    path: Path,
    fmt: str,
    rules: RuleSet,
    *,
    redis_url: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> ReplayResult:
    with gc_paused():
        return _replay(path, fmt, rules, redis_url, progress)


def _replay(
    path: Path,
    fmt: str,
    rules: RuleSet,
    redis_url: str | None,
    progress: Callable[[int], None] | None,
) -> ReplayResult:
    result = ReplayResult()
    started = time.perf_counter()
    by_shopper, result.line_errors = load(path, fmt, progress)
    result.seconds["read"] = time.perf_counter() - started

    started = time.perf_counter()
    engine = Engine(rules)
    signals = detect(engine, by_shopper, result)
    result.signals = [s for shopper in sorted(signals) for s in signals[shopper]]
    result.seconds["detect"] = time.perf_counter() - started

    started = time.perf_counter()
    tiers = rules.tiers
    cfg = ScoreConfig(tiers.low, tiers.mid, tiers.high, tiers.hysteresis)
    results = asyncio.run(_score(cfg, signals, result.end, redis_url))
    for shopper in sorted(results):
        for output in outputs_for(shopper, results[shopper], signals[shopper]):
            if isinstance(output.value, TierChange):
                result.changes.append(output.value)
            else:
                result.actions.append(output)
    result.changes.sort(key=lambda c: (c.at, c.change_id))
    result.actions.sort(key=lambda o: (_at(o), o.topic, o.key))
    result.seconds["score"] = time.perf_counter() - started
    return result


def _at(output: Output) -> datetime:
    at: datetime = output.value.at  # type: ignore[attr-defined]  # every output has one
    return at


async def _score(
    cfg: ScoreConfig, signals: dict[str, list[Signal]], end: float, redis_url: str | None
) -> dict[str, Result]:
    if redis_url is None:
        return await score(MemoryScoreStore(cfg), signals, end)
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    prefix = f"replay-{uuid.uuid4().hex[:12]}"  # never touches a live worker's keys
    try:
        return await score(ScoreStore(client, prefix, cfg), signals, end)
    finally:
        async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            await client.delete(key)
        await client.aclose()


def action_lines(actions: list[Output], topics: dict[str, str]) -> Iterator[dict[str, Any]]:
    """`{"topic": "intent.actions.…", "key": shopper, "value": {…}}` per action."""
    for output in actions:
        yield {
            "topic": topics[output.topic],
            "key": output.key,
            "value": output.value.model_dump(mode="json"),
        }
