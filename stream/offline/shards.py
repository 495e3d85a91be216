"""Reading an event file for replay, in one piece or split by shopper into shards.

A run holds about 6 KB per event it has in hand (the event, its signals, changes and
actions as models), so a file of more than `shard_events` events is split by shopper into
shard files while it is read. A shopper's events all land in one shard, so the shards can
be replayed one after the other, or in several processes, with the same results. So do
all the ids of one profile (ids that events link: `profiles.Links`): a link found after
some of an id's events were spilled has the shards written again by profile.
"""

from __future__ import annotations

import math
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Final, TypedDict

from schemas.bounds import DEFAULT_BOUNDS, Bounds
from schemas.events import Event
from stream.offline.files import SHARD_EVENTS, SHOW_LINE_ERRORS, LineError, read_events
from stream.offline.profiles import Links

MAX_SHARDS: Final = 512  # spill files open at once while reading
SHARD_HEADROOM: Final = 1.25  # more shards than the estimate: shards come out uneven
ORDERS: Final = ("time", "file")  # each shopper's events by event time, or as the file has them


class ReadOptions(TypedDict, total=False):
    """How a file is read: `ShardReader`'s options, as a run passes them on."""

    progress: Callable[[int], None] | None
    on_read: Callable[[int], None] | None
    shard_events: int
    spill_dir: Path | None
    order: str
    bounds: Bounds


def check_order(order: str) -> str:
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, not {order!r}")
    return order


def shard_of(shopper: str, n: int) -> int:
    return zlib.crc32(shopper.encode()) % n


class ShardReader:
    """Reads the file (`_shards`, `_read`), and says what it found: `events`,
    `line_errors` (and the `first_errors` in full), `end` (the last event time),
    `shards`, `behind`, and the seconds spent reading (`seconds["read"]`)."""

    def __init__(
        self,
        path: Path,
        fmt: str,
        *,
        lateness: float,
        progress: Callable[[int], None] | None = None,
        on_read: Callable[[int], None] | None = None,
        shard_events: int = SHARD_EVENTS,
        spill_dir: Path | None = None,
        order: str = "time",
        bounds: Bounds = DEFAULT_BOUNDS,
    ) -> None:
        if shard_events < 1:
            raise ValueError("shard_events must be at least 1")
        self.order = check_order(order)
        self.path, self.fmt = path, fmt
        self.lateness = lateness
        self.progress, self.on_read = progress, on_read
        self.shard_events = shard_events
        self.spill_dir = spill_dir
        self.bounds = bounds  # what an event may hold (`schemas.bounds`), as in the worker
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
        self.seconds = {"read": 0.0, "process": 0.0}
        self.links = Links()  # the ids the file links, joined into profiles
        self._at_progress = (0, 0)  # (bytes, events) read by the last progress report

    def _progress(self, position: int) -> None:
        self._at_progress = (position, self.events)
        if self.progress is not None:
            self.progress(position)

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
        lateness = self.lateness
        links = self.links = Links()
        moved = False  # a link joined ids some of whose events were spilled apart
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
            if item.anonymous_id is not None:
                before = links.root(item.anonymous_id), links.root(item.shopper_id)
                links.add(item)
                moved = moved or (bool(spill) and before[0] != before[1])
            if spill:
                shopper = links.root(item.shopper_id) if links else item.shopper_id
                spill[shard_of(shopper, len(spill))].write(item.model_dump_json() + "\n")
                continue
            held[item.shopper_id].append(item)
            if self.events >= self.shard_events:  # all held so far: none were spilled
                spill = self._spill(work)
                for shopper, events in held.items():
                    out = spill[shard_of(links.root(shopper), len(spill))]
                    for event in events:
                        out.write(event.model_dump_json() + "\n")
                held.clear()
        for out in spill:
            out.close()
        if moved:
            self._by_profile([Path(out.name) for out in spill])
        self.line_errors = dict(errors)
        self.end = end if self.events else 0.0
        self.shards = len(spill) or 1
        self.seconds["read"] += time.perf_counter() - started
        if self.on_read is not None:
            self.on_read(self.events)
        if not spill:
            return held, []
        return None, [Path(out.name) for out in spill]

    def _by_profile(self, paths: list[Path]) -> None:
        """Write the shards again, every event in the shard of its profile's root (the
        links known at the end of the file), each shard's lines in their order."""
        for path in paths:
            path.rename(path.with_suffix(".old"))
        with ExitStack() as stack:
            outs = [stack.enter_context(open(path, "w", encoding="utf-8")) for path in paths]
            for path in paths:
                old = path.with_suffix(".old")
                with open(old, "rb") as lines:
                    for line in lines:
                        shopper = Event.model_validate_json(line).shopper_id
                        outs[shard_of(self.links.root(shopper), len(outs))].write(line.decode())
                old.unlink()

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
