"""The state of the shoppers this worker owns, kept in memory and made durable in Redis
once per batch with one fenced write per partition.

Kafka's group protocol gives each partition of intent.events one owner at a time, and
with it each shopper. The owner:

- loads a shopper's record on first touch after an assignment (one MGET per partition
  for a batch's misses) and keeps it in an LRU cache of INTENT_STATE_CACHE_SHOPPERS;
- computes detection and scores in memory (`stream.core`), the same code replay runs;
- after the batch's output is acked, writes the changed records and the indexes in one
  script call per partition, which refuses the write unless the writer still holds the
  partition's epoch (`lua/fence.lua`). A worker paused past its session (a zombie)
  writes nothing when it wakes: its epoch is stale.

On any failure between computing and writing (a refused send, a failed or fenced
write, a shopper whose processing raised), the shoppers concerned are dropped from the
cache: the batch is processed again from what Redis holds, and gives the same outputs
with the same ids.

Epochs: at each assignment the worker reads each intent.events partition's epoch. If
it is the one this worker took last time, no other worker has written the partition
since, and the cached shoppers stay; otherwise it takes a new epoch (INCR) and drops the
partition's cached shoppers (an A -> B -> A rebalance).
"""

from __future__ import annotations

import logging
import zlib
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, Final

from redis.exceptions import ResponseError

from stream.core import scoring
from stream.core.detectors.engine import Engine
from stream.state.connection import Client, run
from stream.state.records import Fence, FormatError, Keys, PartitionWrite, Record, decode

log = logging.getLogger(__name__)

MGET_CHUNK: Final = 2000  # records per MGET


class Fenced(Exception):
    """A newer owner holds the partition: this worker's write was refused."""

    def __init__(self, reply: str) -> None:
        super().__init__(f"the write was refused: {reply}")


class EpochLost(Exception):
    """A partition's epoch is gone from Redis: Redis lost its data."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)


class Entry:
    """A cached shopper: its partition and its record as stored (None: none stored)."""

    __slots__ = ("partition", "raw")

    def __init__(self, partition: int, raw: bytes | None) -> None:
        self.partition = partition
        self.raw = raw


class Owner:
    """The cache of owned shoppers' records, and the partitions' epochs."""

    def __init__(self, client: Client, app_id: str, capacity: int) -> None:
        self.client = client
        self.keys = Keys(app_id)
        self.fence = Fence(self.keys)
        self.capacity = max(1, capacity)
        self.cache: OrderedDict[str, Entry] = OrderedDict()
        # The records the batch in hand loaded, decoded: changed in place until its
        # write, then cached as the bytes written (`written`)
        self.live: dict[str, Record] = {}
        self.epochs: dict[int, int] = {}  # partition -> the epoch this worker holds
        self.loads = 0  # records read from Redis (cache misses)

    # --- assignment -----------------------------------------------------------------
    async def take(self, partitions: Iterable[int]) -> list[int]:
        """Hold these partitions' epochs (see the module's docstring); returns those that
        had none (a new deployment, or Redis lost its data)."""
        partitions = sorted(set(partitions))
        if not partitions:
            return []
        held = await run(self.client, [("GET", self.keys.epoch(p)) for p in partitions])
        fresh = [p for p, value in zip(partitions, held, strict=True) if value is None]
        stale = [
            p
            for p, value in zip(partitions, held, strict=True)
            if value is None or int(value) != self.epochs.get(p)
        ]
        if stale:
            taken = await run(self.client, [("INCR", self.keys.epoch(p)) for p in stale])
            for p, epoch in zip(stale, taken, strict=True):
                self.epochs[p] = int(epoch)
            self.drop_partitions(stale)
            log.info("took the epochs of partitions %s", ", ".join(map(str, stale)))
        return fresh

    def drop_partitions(self, partitions: Iterable[int]) -> None:
        gone = set(partitions)
        for shopper in [s for s, e in self.cache.items() if e.partition in gone]:
            del self.cache[shopper]

    def drop(self, shoppers: Iterable[str]) -> None:
        for shopper in shoppers:
            self.cache.pop(shopper, None)
            self.live.pop(shopper, None)

    def clear(self) -> None:
        self.cache.clear()
        self.live.clear()

    def written(self, writes: dict[int, PartitionWrite]) -> None:
        """The batch's writes succeeded: its records are cached as the bytes written, and
        the next batch decodes them afresh. Records are cached as bytes, not as Python
        objects: a hundred thousand decoded records are millions of objects, which one
        full pass of the garbage collector took 3 s to scan (measured)."""
        for partition, write in writes.items():
            for shopper, (value, _) in write.records.items():
                self.cache[shopper] = Entry(partition, value)
                self.cache.move_to_end(shopper)
        self.live.clear()

    # --- reads ----------------------------------------------------------------------
    async def load(self, shoppers: dict[str, int]) -> dict[str, Record | Exception]:
        """Each shopper's record (shopper -> partition), from the cache or else from
        Redis (a fresh one if it has none); a record that cannot be read comes back as
        its exception, for that shopper alone to fail."""
        out: dict[str, Record | Exception] = {}
        missing: dict[int, list[str]] = {}
        for shopper, partition in shoppers.items():
            live = self.live.get(shopper)
            if live is not None:
                out[shopper] = live
                continue
            entry = self.cache.get(shopper)
            if entry is not None and entry.partition == partition:
                self.cache.move_to_end(shopper)
                out[shopper] = self._decoded(shopper, entry.raw)
            else:
                missing.setdefault(partition, []).append(shopper)
        commands: list[Any] = []
        asked: list[list[str]] = []
        for partition, some in missing.items():
            for i in range(0, len(some), MGET_CHUNK):
                chunk = some[i : i + MGET_CHUNK]
                commands.append(("MGET", *(self.keys.record(partition, s) for s in chunk)))
                asked.append(chunk)
        replies = await run(self.client, commands)
        for chunk, values in zip(asked, replies, strict=True):
            for shopper, raw in zip(chunk, values, strict=True):
                self.loads += 1
                self.cache[shopper] = Entry(shoppers[shopper], raw)
                out[shopper] = self._decoded(shopper, raw)
        return out

    def _decoded(self, shopper: str, raw: bytes | None) -> Record | Exception:
        """The record decoded (or a fresh one), held in `live` for the batch; an
        unreadable one comes back as its exception, and leaves the cache."""
        try:
            record = self.fresh() if raw is None else decode(raw, scoring.new_state())
        except (FormatError, ValueError, zlib.error) as exc:
            self.cache.pop(shopper, None)
            return exc
        self.live[shopper] = record
        return record

    @staticmethod
    def fresh() -> Record:
        return Record(Engine.new_state(), scoring.new_state())

    def trim(self) -> None:
        """Evict the least recently used shoppers past the capacity (after a write:
        every cached record is then what Redis holds)."""
        while len(self.cache) > self.capacity:
            self.cache.popitem(last=False)

    # --- the write ------------------------------------------------------------------
    def commands(self, writes: dict[int, PartitionWrite]) -> list[Any]:
        out = []
        for partition in sorted(writes):
            epoch = self.epochs.get(partition)
            if epoch is None:
                raise Fenced(f"partition {partition} is not held by this worker")
            command = self.fence.command(partition, epoch, writes[partition])
            if command is not None:
                out.append(command)
        return out

    async def write(self, writes: dict[int, PartitionWrite]) -> int:
        """The fenced writes; raises `Fenced` or `EpochLost` as the script answers."""
        commands = self.commands(writes)
        try:
            replies = await run(self.client, commands, [self.fence.script])
        except ResponseError as exc:
            text = str(exc)
            if "FENCED" in text:
                raise Fenced(text) from exc
            if "NOEPOCH" in text or "EPOCHLOST" in text:
                raise EpochLost(text) from exc
            raise
        return sum(int(r) for r in replies)
