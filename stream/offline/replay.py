"""`intent replay`: the production detector and scoring core, offline, in event time.

Every shopper's state is independent of every other's, so replay reads the file, groups
events by shopper, runs each shopper's events in time order through the same core as the worker
(`Core.run`: detect, fire what is due up to the file's last event time, score, outputs),
scoring with the same maths the worker runs in memory.

With `order="file"` each shopper's events go through in the order the file lists them,
as a worker reads them once the file has been produced to the input topic: events out
of order within the allowed lateness are scored as they come, older ones are late. That
is exactly what the worker emits (tested live), unless the timer got ahead of an event:
`Replay.behind` counts the events it may have (none in a clickstream out of order by
less than the lateness).

Memory is bounded: a large file is split by shopper into shards while it is read
(`shards.py`), and the shards are replayed one after the other, or in several processes
(`--jobs`), with the same output; `replay` (and the command's output files) put
everything back in time order.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from typing_extensions import Unpack

from schemas.events import Event
from schemas.outputs import TierChange
from schemas.rules import RuleSet
from stream.core import scoring
from stream.core.detectors.engine import State
from stream.core.process import Core, Failures, Processed, ScoreBatch
from stream.core.scoring import Result, ScoreConfig
from stream.offline import naive
from stream.offline.files import SHARD_EVENTS
from stream.offline.outputs import OutputFiles
from stream.offline.profiles import DEFAULT_MAX_IDS, Profile
from stream.offline.report import Tally
from stream.offline.result import ReplayResult, action_order
from stream.offline.shards import ReadOptions, ShardReader, shard_of
from stream.offline.thresholds import HORIZON_SECONDS, add_highs

log = logging.getLogger(__name__)
SCORE_BATCH: Final = 100  # shoppers per run of the core, and a step of the progress
# Replay progress (`on_replayed`) in units, REPLAY_UNITS per event: detected, scored,
# turned into outputs; handed over in steps of at least PROGRESS_UNITS.
REPLAY_UNITS: Final = 3
PROGRESS_UNITS: Final = 2000


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while replaying: the run holds every event and signal,
    so each collection re-scans them all, and that took about half of the time
    (docs/performance.md). Nothing replay builds is cyclic; reference counting frees it as usual."""
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


class Replay(ShardReader):
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
        on_replayed: Callable[[int], None] | None = None,
        max_ids: int = DEFAULT_MAX_IDS,
        **reading: Unpack[ReadOptions],
    ) -> None:
        """`reading`: how the file is read (`ShardReader`)."""
        self.core = Core(rules)
        super().__init__(path, fmt, lateness=self.core.lateness, **reading)
        self.rules = rules
        self.on_replayed = on_replayed
        self.max_ids = max_ids
        self._unreported = 0  # progress units not yet handed to `on_replayed`

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

    def summaries(
        self, jobs: int, outputs: OutputFiles, horizon: float = HORIZON_SECONDS
    ) -> Iterator[tuple[Any, dict[str, int]]]:
        """Each shard replayed and its lines written to `outputs` (`close` merges them):
        yields its report counts (a `report.Tally`, its score thresholds' purchases
        within `horizon` seconds) and how many signals, changes, actions and late events
        it had. With `jobs` > 1, in that many processes."""
        # With jobs too: the file is read in this process (with the collector on, reading
        # Taobao took 3.4 s instead of 2.0), and the forks inherit the pause.
        with gc_paused():
            if jobs > 1:
                yield from self._in_processes(jobs, outputs, horizon)
                return
            for index, part in enumerate(self.results()):
                yield _summary(part, outputs, self.shards, index, horizon)

    @contextmanager
    def _scoring(self) -> Iterator[tuple[asyncio.Runner, MemoryScores]]:
        """An event loop and the scores' states."""
        with asyncio.Runner() as runner:
            yield runner, MemoryScores(self.core.config)

    def _replay_shard(
        self,
        store: MemoryScores,
        runner: asyncio.Runner,
        by_shopper: dict[str, list[Event]],
    ) -> ReplayResult:
        """The shard's shoppers through the core, SCORE_BATCH at a time, each from a
        fresh state, with everything due by the file's last event time fired."""
        part = ReplayResult(end=self.end)
        store.states.clear()  # shoppers are never seen again in a later shard
        store.highs.clear()
        loop = runner.get_loop()
        profiles = self.links.groups(by_shopper) if self.links else {}
        for members in profiles.values():
            self._replay_profile(store, loop, {s: by_shopper.pop(s) for s in members}, part)
        shoppers = sorted(by_shopper)
        for i in range(0, len(shoppers), SCORE_BATCH):
            started = time.perf_counter()
            chunk = {shopper: self._events(shopper, by_shopper.pop(shopper), part)
                     for shopper in shoppers[i : i + SCORE_BATCH]}  # fmt: skip
            failures = Failures(_left_out)
            # The loop's own run, not `runner.run`: that one swaps the SIGINT handler per
            # call, and restoring it formats the old handler, whose repr holds the task
            # and so the whole `Processed` result (it halved replay's speed).
            done = loop.run_until_complete(
                self.core.run(chunk, store.apply_many, failures, until=self.end, at=self.end)
            )
            _collect(part, done, failures, store, list(chunk))
            self._done(started, sum(len(events) for _, events in chunk.values()))
        self._tick(0, True)
        part.shoppers = len(shoppers) + sum(len(members) for members in profiles.values())
        part.changes.sort(key=lambda c: (c.at, c.shopper_id))  # stable: a shopper's in order
        part.actions.sort(key=action_order)
        return part

    def _replay_profile(
        self,
        store: MemoryScores,
        loop: asyncio.AbstractEventLoop,
        members: dict[str, list[Event]],
        part: ReplayResult,
    ) -> None:
        """The ids of one profile together, merged at their links (`profiles.Profile`)."""
        started = time.perf_counter()
        ordered = {s: self._events(s, events, part)[1] for s, events in sorted(members.items())}
        failures = Failures(_left_out)
        profile = Profile(self.core, store.states, store.apply_many, self.max_ids)
        done = profile.run(ordered, self.end, loop, failures)
        part.merges += profile.merged
        _collect(part, done, failures, store, list(ordered))
        self._done(started, sum(len(events) for events in ordered.values()))

    def _done(self, started: float, events: int) -> None:
        self.seconds["process"] += time.perf_counter() - started
        self._tick(REPLAY_UNITS * events)

    def _events(
        self, shopper: str, events: list[Event], part: ReplayResult
    ) -> tuple[State, list[Event]]:
        """A shopper's events in the order they go through (by time, or as in the file),
        with a fresh state; what the report needs of them noted in `part`."""
        if self.order == "time":
            # Events of the same instant stay in file order, the order a live worker
            # reads them in (by id, two visits starting in one second ended the other
            # way round from the live worker's, with other signal ids).
            events = sorted(events, key=lambda e: e.ts)
            part.first_seen[shopper] = events[0].ts.timestamp()
        else:
            part.first_seen[shopper] = min(e.ts for e in events).timestamp()
        part.events += len(events)
        buys = [e.ts.timestamp() for e in events if e.type == "purchase"]
        if buys:
            part.purchases[shopper] = buys
        part.naive[shopper] = naive.reached(events)
        return self.core.new_state(), events

    def _in_processes(
        self, jobs: int, outputs: OutputFiles, horizon: float
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
                    groups[shard_of(self.links.root(shopper), jobs)][shopper] = events
                sources = list(groups)
                del held
            self.shards = len(sources)
            _FORKED = (self, sources, outputs, horizon)
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


def _collect(
    part: ReplayResult,
    done: Processed,
    failures: Failures,
    store: MemoryScores,
    shoppers: list[str],
) -> None:
    """What one run of the core gave these shoppers, into the shard's results."""
    part.failed += len(failures)
    for shopper in shoppers:
        highs = store.highs.pop(shopper, None)
        if highs and shopper not in failures:
            part.highs[shopper] = highs
    part.late += sum(len(late) for late in done.late.values())
    part.signals += done.all_signals(failures)
    for outputs in done.outputs.values():
        for output in outputs:
            if isinstance(output.value, TierChange):
                part.changes.append(output.value)
            else:
                part.actions.append(output)


_FORKED: tuple[Replay, list[dict[str, list[Event]] | Path], OutputFiles, float] | None = None


def _forked(index: int) -> tuple[Any, dict[str, int], dict[str, float]]:
    """One shard, in a process forked by `Replay._in_processes` (its state is inherited)."""
    assert _FORKED is not None
    run, sources, outputs, horizon = _FORKED
    run.seconds = {stage: 0.0 for stage in run.seconds}
    run.on_replayed = None  # the parent's: it reports each shard as it comes back
    source = sources[index]
    by_shopper = source if isinstance(source, dict) else run._load(source)
    with gc_paused(), run._scoring() as (runner, store):
        part = run._replay_shard(store, runner, by_shopper)
    return (*_summary(part, outputs, len(sources), index, horizon), run.seconds)


def _summary(
    part: ReplayResult, outputs: OutputFiles, shards: int, index: int, horizon: float
) -> tuple[Any, dict[str, int]]:
    """A shard's lines written, and what the command keeps of it: the report's counts."""
    outputs.add(part, shards, index)
    tally = Tally(horizon)
    tally.add(part)
    counts = {
        "signals": len(part.signals), "changes": len(part.changes),
        "actions": len(part.actions), "late": part.late, "failed": part.failed,
        "merges": part.merges,
    }  # fmt: skip
    return tally, counts


def replay(
    path: Path,
    fmt: str,
    rules: RuleSet,
    *,
    redis_url: str | None = None,
    progress: Callable[[int], None] | None = None,
    shard_events: int = SHARD_EVENTS,
    order: str = "time",
    on_replayed: Callable[[int], None] | None = None,
) -> ReplayResult:
    """The whole run's results in memory, in time order (tests, small files; the command
    streams the shards to its output files instead). `progress` and `on_replayed` are
    `Replay`'s."""
    run = Replay(
        path, fmt, rules, progress=progress, shard_events=shard_events,
        order=order, on_replayed=on_replayed,
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


class MemoryScores:
    """Each shopper's score state, scored by the same maths as the worker's owner, and
    the new highs of each shopper's score (`highs`: (time, score), for the report)."""

    def __init__(self, cfg: ScoreConfig) -> None:
        self.cfg = cfg
        self.states: dict[str, dict[str, Any]] = {}
        self.highs: dict[str, list[tuple[float, float]]] = {}

    async def apply_many(self, batch: ScoreBatch) -> dict[str, Result]:
        out = {}
        for shopper, (signals, now) in batch.items():
            state = self.states.setdefault(shopper, scoring.new_state())
            trace: list[tuple[float, float]] = []
            out[shopper] = scoring.apply(state, signals, now, self.cfg, trace=trace)
            add_highs(self.highs.setdefault(shopper, []), trace)
        return out


def _left_out(stage: str, shopper: str, exc: Exception) -> None:
    """A bug of ours: this shopper is left out, the run goes on."""
    log.error("shopper %r failed in %s (%s); left out of the replay", shopper, stage, exc,
              exc_info=exc)  # fmt: skip
