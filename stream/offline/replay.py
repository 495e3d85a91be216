"""`intent replay`: the production detector and scoring core, offline, in event time.

Every shopper's state is independent of every other's, so replay reads the file, groups
events by shopper, runs each shopper's events in time order through the same `Engine`,
fires what is due up to the file's last event time, and scores the signals with the same
maths as the live worker: the pure reference in process, or the Lua script on a real
Redis (`--redis URL`). The two give identical results (tested on a real sample).

With `order="file"` each shopper's events go through in the order the file lists them,
as a worker reads them once the file has been produced to the input topic: events out
of order within the allowed lateness are scored as they come, older ones are late. That
is exactly what the worker emits (tested live), unless the timer got ahead of an event:
`Replay.behind` counts the events it may have (none in a clickstream out of order by
less than the lateness).

Memory is bounded. A run holds about 6 KB per event it has in hand (the event, its
signals, changes and actions as models), so a file of more than `shard_events` events is
split by shopper into shards on disk while it is read, and the shards are replayed one
after the other. A shopper's events all land in one shard, so the results are the same
as in one piece (tested); only the order in which shards finish differs, and
`replay` (and the command's output files) put everything back in time order. The shards
can also be replayed in several processes (`--jobs`), with the same output.
"""

from __future__ import annotations

import asyncio
import gc
import heapq
import json
import logging
import math
import multiprocessing
import os
import tempfile
import time
import uuid
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, Final

import orjson

from schemas.bounds import DEFAULT_BOUNDS, Bounds
from schemas.events import Event
from schemas.outputs import TierChange
from schemas.rules import RuleSet
from schemas.signals import Signal
from stream.core.detectors.engine import Engine
from stream.core.outputs import Output, outputs_for, score_signals
from stream.core.scoring import Result, ScoreConfig, ScoreSignal
from stream.offline.files import SHARD_EVENTS, SHOW_LINE_ERRORS, LineError, read_events
from stream.state.scores import MemoryScoreStore, ScoreStore

SCORE_BATCH: Final = 500  # shoppers per score pipeline when replaying into Redis
# Replay progress (`on_replayed`) in units, REPLAY_UNITS per event: detected, scored,
# turned into outputs; handed over in steps of at least PROGRESS_UNITS.
log = logging.getLogger(__name__)
REPLAY_UNITS: Final = 3
PROGRESS_UNITS: Final = 2000
MAX_SHARDS: Final = 512  # spill files open at once while reading
SHARD_HEADROOM: Final = 1.25  # more shards than the estimate: shards come out uneven
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
ORDERS: Final = ("time", "file")  # each shopper's events by event time, or as the file has them
MICROSECOND: Final = timedelta(microseconds=1)


@dataclass
class ReplayResult:
    events: int = 0
    line_errors: dict[str, int] = field(default_factory=dict)
    late: int = 0
    failed: int = 0  # shoppers whose processing raised: left out, each logged
    behind: int = 0  # the whole file's (`Replay.behind`), set by `replay`
    shoppers: int = 0
    signals: list[Signal] = field(default_factory=list)
    changes: list[TierChange] = field(default_factory=list)
    actions: list[Output] = field(default_factory=list)
    purchases: dict[str, list[float]] = field(default_factory=dict)  # shopper -> purchase times
    first_seen: dict[str, float] = field(default_factory=dict)
    end: float = 0.0
    seconds: dict[str, float] = field(default_factory=dict)
    shards: int = 1

    @property
    def events_per_second(self) -> float:
        total = sum(self.seconds.values())
        return self.events / total if total else 0.0

    def add(self, part: ReplayResult) -> None:
        """Take in one shard's results (its shoppers are in no other shard)."""
        self.events += part.events
        self.late += part.late
        self.failed += part.failed
        self.shoppers += part.shoppers
        self.signals += part.signals
        self.changes += part.changes
        self.actions += part.actions
        self.purchases.update(part.purchases)
        self.first_seen.update(part.first_seen)

    def sort(self) -> None:
        """Signals by shopper (each shopper's in their own order), changes and actions by
        time: the order of one run in one piece, whatever the sharding."""
        self.signals.sort(key=lambda s: s.shopper_id)  # stable: keeps a shopper's order
        self.changes.sort(key=lambda c: (c.at, c.change_id))
        self.actions.sort(key=action_order)


def _check_order(order: str) -> str:
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, not {order!r}")
    return order


def action_order(output: Output) -> tuple[datetime, str, str]:
    return _at(output), output.topic, output.key


def _at(output: Output) -> datetime:
    at: datetime = output.value.at  # type: ignore[attr-defined]  # every output has one
    return at


def detect(
    engine: Engine,
    by_shopper: dict[str, list[Event]],
    result: ReplayResult,
    tick: Callable[[int], None] | None = None,
    order: str = "time",
) -> tuple[dict[str, list[Signal]], dict[str, int]]:
    """Signals per shopper, with every deadline up to `result.end` fired, and their
    scoring order (`Outcome.groups`; those fired at the end are `ADVANCED`); `tick(n)`
    after each shopper's n events. Each shopper's events in time order, or with `order`
    "file" in the order given."""
    _check_order(order)
    end = result.end
    out: dict[str, list[Signal]] = {}
    groups: dict[str, int] = {}
    for shopper in sorted(by_shopper):
        events = by_shopper[shopper]
        if order == "time":
            # Events of the same instant stay in file order, the order a live worker
            # reads them in (by id, two visits starting in one second ended the other
            # way round from the live worker's, with other signal ids).
            events = sorted(events, key=lambda e: e.ts)
            result.first_seen[shopper] = events[0].ts.timestamp()
        else:
            result.first_seen[shopper] = min(e.ts for e in events).timestamp()
        result.events += len(events)
        buys = [e.ts.timestamp() for e in events if e.type == "purchase"]
        if buys:
            result.purchases[shopper] = buys
        state = engine.new_state()
        try:
            outcome = engine.process(shopper, state, events)
            signals = outcome.signals + engine.advance(shopper, state, end)
        except Exception:  # a bug of ours: this shopper is left out, the run goes on
            log.exception("shopper %r failed; left out of the replay", shopper)
            result.failed += 1
            if tick is not None:
                tick(len(events))
            continue
        result.late += len(outcome.late)
        groups.update(outcome.groups)
        if signals:
            out[shopper] = signals
        if tick is not None:
            tick(len(events))
    result.shoppers = len(by_shopper)
    return out, groups


async def score(
    store: MemoryScoreStore | ScoreStore,
    signals: dict[str, list[Signal]],
    end: float,
    groups: dict[str, int],
    done: Callable[[list[str]], None] | None = None,
) -> dict[str, Result]:
    """Each shopper's signals scored, in the order `groups` gives (`detect`); `done(shoppers)`
    after each batch."""
    results: dict[str, Result] = {}
    shoppers = sorted(signals)
    for i in range(0, len(shoppers), SCORE_BATCH):
        chunk = shoppers[i : i + SCORE_BATCH]
        batch: dict[str, tuple[list[ScoreSignal], float | None]] = {
            s: (score_signals(signals[s], groups), end) for s in chunk
        }
        results.update(await store.apply_many(batch))
        if done is not None:
            done(chunk)
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


class Replay:
    """One replay run, shard by shard: `results()` gives each shard's results in this
    process; `in_processes(jobs, outputs)` replays the shards in forked processes.

    `progress(bytes_read)` follows the reading of the file; `on_read(events)` tells how many
    events it holds once it is read, before the first shard is replayed; `on_replayed(n)`
    follows the replay, in units of which each event counts REPLAY_UNITS (in one process
    as each shard goes; with `jobs`, as each shard ends). After the
    iteration, `line_errors`, `end`, `shards`, `events` and `seconds` (read, detect,
    score) describe the whole run.
    """

    def __init__(
        self,
        path: Path,
        fmt: str,
        rules: RuleSet,
        *,
        redis_url: str | None = None,
        progress: Callable[[int], None] | None = None,
        on_read: Callable[[int], None] | None = None,
        on_replayed: Callable[[int], None] | None = None,
        shard_events: int = SHARD_EVENTS,
        spill_dir: Path | None = None,
        order: str = "time",
        bounds: Bounds = DEFAULT_BOUNDS,
    ) -> None:
        if shard_events < 1:
            raise ValueError("shard_events must be at least 1")
        self.order = _check_order(order)
        self.path, self.fmt, self.rules = path, fmt, rules
        self.redis_url = redis_url
        self.progress, self.on_read, self.on_replayed = progress, on_read, on_replayed
        self._unreported = 0  # progress units not yet handed to `on_replayed`
        self.shard_events = shard_events
        self.spill_dir = spill_dir
        self.bounds = bounds  # what an event may hold (`schemas.bounds`), as in the worker
        tiers = rules.tiers
        self.cfg = ScoreConfig(tiers.low, tiers.mid, tiers.high, tiers.hysteresis)
        self.engine = Engine(rules)
        self.line_errors: dict[str, int] = {}
        self.first_errors: list[LineError] = []  # the first few bad lines, in full
        self.end = 0.0
        self.shards = 0
        self.events = 0
        # With order "file", events that a worker's timer may have passed: not late for
        # their shopper, who has events before them, but more than the allowed lateness
        # behind the newest event before them in the file (the timer fires what is due by
        # the newest event time of a partition, minus the lateness).
        self.behind = 0
        self.seconds = {"read": 0.0, "detect": 0.0, "score": 0.0}
        self._at_progress = (0, 0)  # (bytes, events) read by the last progress report

    def _progress(self, position: int) -> None:
        self._at_progress = (position, self.events)
        if self.progress is not None:
            self.progress(position)

    def _tick(self, units: int, flush: bool = False) -> None:
        if self.on_replayed is None:
            return
        self._unreported += units
        if self._unreported >= PROGRESS_UNITS or (flush and self._unreported):
            self.on_replayed(self._unreported)
            self._unreported = 0

    def results(self) -> Iterator[ReplayResult]:
        """Each shard's results, its changes and actions in time order."""
        with (
            tempfile.TemporaryDirectory(prefix="intent-replay-", dir=self.spill_dir) as work,
            self._scoring() as (runner, store),
        ):
            for by_shopper in self._shards(Path(work)):
                yield self._replay_shard(store, runner, by_shopper)

    def summaries(self, jobs: int, outputs: OutputFiles) -> Iterator[tuple[Any, dict[str, int]]]:
        """Each shard replayed and its lines written to `outputs` (`close` merges them):
        yields its report counts (a `report.Tally`) and how many signals, changes, actions
        and late events it had. With `jobs` > 1, in that many processes."""
        # With jobs too: the file is read in this process (with the collector on, reading
        # Taobao took 3.4 s instead of 2.0), and the forks inherit the pause.
        with gc_paused():
            if jobs > 1:
                yield from self._in_processes(jobs, outputs)
                return
            for index, part in enumerate(self.results()):
                yield _summary(part, outputs, self.shards, index)

    @contextmanager
    def _scoring(self) -> Iterator[tuple[asyncio.Runner, MemoryScoreStore | ScoreStore]]:
        """An event loop and the store to score in; a Redis store's keys go at the end."""
        with asyncio.Runner() as runner:
            if self.redis_url is None:
                yield runner, MemoryScoreStore(self.cfg)
                return
            store = runner.run(_redis_store(self.redis_url, self.cfg))
            try:
                yield runner, store
            finally:
                runner.run(_drop(store))

    def _replay_shard(
        self,
        store: MemoryScoreStore | ScoreStore,
        runner: asyncio.Runner,
        by_shopper: dict[str, list[Event]],
    ) -> ReplayResult:
        part = ReplayResult(end=self.end)
        started = time.perf_counter()
        sizes = {shopper: len(events) for shopper, events in by_shopper.items()}
        signals, groups = detect(self.engine, by_shopper, part, self._tick, self.order)
        by_shopper.clear()  # the shard's events: not needed past detection
        part.signals = [s for shopper in sorted(signals) for s in signals[shopper]]
        self.seconds["detect"] += time.perf_counter() - started

        started = time.perf_counter()
        if isinstance(store, MemoryScoreStore):
            store.states.clear()  # shoppers are never seen again in a later shard
        results = runner.run(
            score(
                store,
                signals,
                self.end,
                groups,
                lambda done: self._tick(sum(sizes[s] for s in done)),
            )
        )
        for shopper in sorted(results):
            for output in outputs_for(shopper, results[shopper], signals[shopper]):
                if isinstance(output.value, TierChange):
                    part.changes.append(output.value)
                else:
                    part.actions.append(output)
            self._tick(sizes[shopper])
        # shoppers without a signal are neither scored nor turned into outputs
        self._tick(2 * sum(n for shopper, n in sizes.items() if shopper not in results), True)
        part.changes.sort(key=lambda c: (c.at, c.change_id))
        part.actions.sort(key=action_order)
        self.seconds["score"] += time.perf_counter() - started
        return part

    def _shards(self, work: Path) -> Iterator[dict[str, list[Event]]]:
        """Read the file; if it has at most `shard_events` events, hand it over in one
        piece, else hand the shards it was spilled to over one by one."""
        held, paths = self._read(work)
        if held is not None:
            yield held
            return
        for path in paths:
            yield self._load(path)

    def _read(self, work: Path) -> tuple[dict[str, list[Event]] | None, list[Path]]:
        """The file's events grouped by shopper, or, past `shard_events`, the shard files
        every event was written to (that of its shopper)."""
        started = time.perf_counter()
        held: dict[str, list[Event]] = defaultdict(list)
        errors: dict[str, int] = defaultdict(int)
        end = -math.inf
        self.events = self.behind = 0
        self.first_errors = []
        # In file order, each shopper's newest event time so far (`behind`)
        newest: dict[str, float] | None = {} if self.order == "file" else None
        lateness = self.engine.lateness
        spill: list[IO[str]] = []
        for item in read_events(self.path, self.fmt, self._progress, self.bounds):
            if isinstance(item, LineError):
                errors[item.reason] += 1
                if len(self.first_errors) < SHOW_LINE_ERRORS:
                    self.first_errors.append(item)
                continue
            ts = item.ts.timestamp()
            if newest is not None:
                mine = newest.get(item.shopper_id)
                if mine is not None and mine - lateness <= ts < end - lateness:
                    self.behind += 1
                newest[item.shopper_id] = ts if mine is None or ts > mine else mine
            end = max(end, ts)
            self.events += 1
            if spill:
                spill[_shard(item.shopper_id, len(spill))].write(item.model_dump_json() + "\n")
                continue
            held[item.shopper_id].append(item)
            if self.events >= self.shard_events:  # all held so far: none were spilled
                spill = self._spill(work)
                for shopper, events in held.items():
                    out = spill[_shard(shopper, len(spill))]
                    for event in events:
                        out.write(event.model_dump_json() + "\n")
                held.clear()
        for out in spill:
            out.close()
        self.line_errors = dict(errors)
        self.end = end if self.events else 0.0
        self.shards = len(spill) or 1
        self.seconds["read"] += time.perf_counter() - started
        if self.on_read is not None:
            self.on_read(self.events)
        if not spill:
            return held, []
        return None, [Path(out.name) for out in spill]

    def _load(self, shard: Path) -> dict[str, list[Event]]:
        started = time.perf_counter()
        by_shopper: dict[str, list[Event]] = defaultdict(list)
        with open(shard, "rb") as lines:
            for line in lines:
                event = Event.model_validate_json(line)
                by_shopper[event.shopper_id].append(event)
        shard.unlink()
        self.seconds["read"] += time.perf_counter() - started
        return by_shopper

    def _in_processes(
        self, jobs: int, outputs: OutputFiles
    ) -> Iterator[tuple[Any, dict[str, int]]]:
        """`summaries` in `jobs` forked processes. A file that fits in one shard is split
        in `jobs` groups of shoppers in memory, which the processes share with this one
        (fork: copy on write), so it is never written out."""
        global _FORKED
        with tempfile.TemporaryDirectory(prefix="intent-replay-", dir=self.spill_dir) as work:
            held, paths = self._read(Path(work))
            sources: list[dict[str, list[Event]] | Path] = list(paths)
            if held is not None:
                groups: list[dict[str, list[Event]]] = [{} for _ in range(jobs)]
                for shopper, events in held.items():
                    groups[_shard(shopper, jobs)][shopper] = events
                sources = list(groups)
                del held
            self.shards = len(sources)
            _FORKED = (self, sources, outputs)
            try:
                context = multiprocessing.get_context("fork")
                with context.Pool(min(jobs, len(sources))) as pool:
                    for tally, counts, seconds in pool.imap_unordered(_forked, range(len(sources))):
                        for stage, spent in seconds.items():
                            self.seconds[stage] += spent
                        self._tick(REPLAY_UNITS * tally.events, True)
                        yield tally, counts
            finally:
                _FORKED = None

    def _spill(self, work: Path) -> list[IO[str]]:
        """Shard files for the whole file, as many as its events are expected to fill (from
        the events per byte read so far), with headroom."""
        position, events = self._at_progress
        size = self.path.stat().st_size
        expected = events * size / position if position and events else self.events
        n = math.ceil(SHARD_HEADROOM * expected / self.shard_events)
        return [
            open(work / f"shard-{i:03d}.jsonl", "w", encoding="utf-8")
            for i in range(max(2, min(n, MAX_SHARDS)))
        ]


_FORKED: tuple[Replay, list[dict[str, list[Event]] | Path], OutputFiles] | None = None


def _forked(index: int) -> tuple[Any, dict[str, int], dict[str, float]]:
    """One shard, in a process forked by `Replay._in_processes` (its state is inherited)."""
    assert _FORKED is not None
    run, sources, outputs = _FORKED
    run.seconds = {stage: 0.0 for stage in run.seconds}
    run.on_replayed = None  # the parent's: it reports each shard as it comes back
    source = sources[index]
    by_shopper = source if isinstance(source, dict) else run._load(source)
    with gc_paused(), run._scoring() as (runner, store):
        part = run._replay_shard(store, runner, by_shopper)
    return (*_summary(part, outputs, len(sources), index), run.seconds)


def _summary(
    part: ReplayResult, outputs: OutputFiles, shards: int, index: int
) -> tuple[Any, dict[str, int]]:
    """A shard's lines written, and what the command keeps of it: the report's counts."""
    from stream.offline.report import Tally  # report imports this module

    outputs.add(part, shards, index)
    tally = Tally()
    tally.add(part)
    counts = {
        "signals": len(part.signals), "changes": len(part.changes),
        "actions": len(part.actions), "late": part.late, "failed": part.failed,
    }  # fmt: skip
    return tally, counts


def _shard(shopper: str, n: int) -> int:
    return zlib.crc32(shopper.encode()) % n


def replay(
    path: Path,
    fmt: str,
    rules: RuleSet,
    *,
    redis_url: str | None = None,
    progress: Callable[[int], None] | None = None,
    shard_events: int = SHARD_EVENTS,
    order: str = "time",
) -> ReplayResult:
    """The whole run's results in memory, in time order (tests, small files; the command
    streams the shards to its output files instead)."""
    run = Replay(
        path, fmt, rules, redis_url=redis_url, progress=progress, shard_events=shard_events,
        order=order,
    )  # fmt: skip
    result = ReplayResult()
    with gc_paused():
        for part in run.results():
            result.add(part)
        result.sort()
    result.line_errors, result.end, result.shards = run.line_errors, run.end, run.shards
    result.behind = run.behind
    result.seconds = dict(run.seconds)
    return result


async def _redis_store(url: str, cfg: ScoreConfig) -> ScoreStore:
    import redis.asyncio as aioredis

    prefix = f"replay-{uuid.uuid4().hex[:12]}"  # never touches a live worker's keys
    return ScoreStore(aioredis.Redis.from_url(url), prefix, cfg)


async def _drop(store: ScoreStore) -> None:
    client = store.redis
    try:
        async for key in client.scan_iter(match=f"{store.prefix}:*", count=1000):
            await client.delete(key)
    finally:
        await client.aclose()


class OutputFiles:
    """`--changes` and `--actions`, written shard by shard in the lines' final form.

    With one shard, lines go straight to the files, in time order. With several, each
    shard's lines (already in time order) go to a part file named by the shard's index,
    after a sort key, in this process or a forked one; `close` merges the parts, so the
    files come out in the order of a run in one piece.

    Each file is opened when this is made, so a path that cannot be written fails before
    the replay starts, not after it. The lines go to a hidden file beside it, renamed to
    the name asked for by `close`: a replay that fails or is stopped leaves an earlier
    file of that name as it was (`discard` removes the hidden one).
    """

    def __init__(
        self, changes: Path | None, actions: Path | None, topics: dict[str, str], work: Path
    ) -> None:
        self.paths = {"changes": changes, "actions": actions}
        self.topics = topics
        self.work = work
        self.direct: dict[str, IO[str]] = {}
        self.partial: dict[str, Path] = {}
        try:
            for kind, path in self.paths.items():
                if path is None:
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
                self.direct[kind] = open(partial, "w", encoding="utf-8")  # noqa: SIM115
                self.partial[kind] = partial
        except OSError:
            self.discard()
            raise

    def add(self, part: ReplayResult, shards: int, index: int) -> None:
        lines: dict[str, list[tuple[tuple[Any, ...], str]]] = {}
        if self.paths["changes"] is not None:
            lines["changes"] = [
                ((_micros(c.at), c.change_id), c.model_dump_json()) for c in part.changes
            ]
        if self.paths["actions"] is not None:
            lines["actions"] = [
                ((_micros(_at(o)), o.topic, o.key), json.dumps(line))
                for o, line in zip(
                    part.actions, action_lines(part.actions, self.topics), strict=True
                )
            ]
        for kind in self.direct:
            if shards == 1:
                self.direct[kind].writelines(line + "\n" for _, line in lines[kind])
                continue
            with open(self.work / f"{kind}-{index:04d}.part", "w", encoding="utf-8") as out:
                out.writelines(
                    orjson.dumps(key).decode() + "\t" + line + "\n" for key, line in lines[kind]
                )

    def close(self) -> None:
        """Merge the parts, if any, and give each file its name."""
        for kind, out in self.direct.items():
            parts = sorted(self.work.glob(f"{kind}-*.part"))
            with ExitStack() as stack:
                files = [stack.enter_context(open(p, encoding="utf-8")) for p in parts]
                for line in heapq.merge(*files, key=_sort_key):
                    out.write(line.split("\t", 1)[1])  # JSON never holds a raw tab
            for p in parts:
                p.unlink()
            out.close()
            path = self.paths[kind]
            assert path is not None
            os.replace(self.partial.pop(kind), path)
        self.direct.clear()

    def discard(self) -> None:
        """Close and remove the files not yet renamed, and the parts (after a failure)."""
        for kind, out in self.direct.items():
            out.close()
            for p in self.work.glob(f"{kind}-*.part"):
                p.unlink()
        for partial in self.partial.values():
            partial.unlink(missing_ok=True)
        self.direct.clear()
        self.partial.clear()


def _micros(at: datetime) -> int:
    return (at - EPOCH) // MICROSECOND


def _sort_key(line: str) -> list[Any]:
    key: list[Any] = orjson.loads(line.split("\t", 1)[0])
    return key


def action_lines(actions: list[Output], topics: dict[str, str]) -> Iterator[dict[str, Any]]:
    """`{"topic": "intent.actions.…", "key": shopper, "value": {…}}` per action."""
    for output in actions:
        yield {
            "topic": topics[output.topic],
            "key": output.key,
            "value": output.value.model_dump(mode="json"),
        }
