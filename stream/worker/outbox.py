"""What one batch or one sweep chunk sends and writes, gathered before any of it goes out.

Records are sent together and acked before the shoppers' records and the indexes are
written (`Pipeline.flush`, one fenced write per partition), and those before the offsets
are committed.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from stream.state.records import PartitionWrite, Record

T = TypeVar("T")
Headers = list[tuple[str, bytes]]
OutRecord = tuple[str, bytes | None, bytes, Headers | None]  # topic, key, value, headers
Sender = Callable[[list[OutRecord]], Awaitable[None]]


@dataclass
class Outbox:
    """What one batch sends: (topic, key, value, headers), flushed together."""

    records: list[OutRecord] = field(default_factory=list)
    # shopper -> (partition, record): the records to write once the output is acked
    saved: dict[str, tuple[int, Record]] = field(default_factory=dict)
    # partition -> its index moves (decay deadlines, tiers, audiences), written with the
    # records: a decay whose output was not sent stays due, and comes back
    writes: dict[int, PartitionWrite] = field(default_factory=dict)
    # shoppers whose state this batch changed in memory and may not write: dropped from
    # the cache, so their next touch reads Redis (`Owner.drop`)
    dropped: set[str] = field(default_factory=set)

    def add(
        self, topic: str, key: bytes | None, value: bytes, headers: Headers | None = None
    ) -> None:
        self.records.append((topic, key, value, headers))

    def write(self, partition: int) -> PartitionWrite:
        part = self.writes.get(partition)
        if part is None:
            part = self.writes[partition] = PartitionWrite()
        return part

    def erase(self, partition: int, shopper: str, names: list[str]) -> None:
        """The shopper leaves every tier and audience of its partition (`names`: the
        partition's audiences), and its deadlines, whatever this batch queued before."""
        write = self.write(partition)
        write.erased[shopper] = names
        write.deadlines[shopper] = None
        write.decays[shopper] = None
        write.tiers.pop(shopper, None)
        for key in [k for k in write.audiences if k[1] == shopper]:
            del write.audiences[key]

    def touched(self) -> set[str]:
        """Every shopper whose state this outbox holds changes of."""
        shoppers = set(self.saved) | self.dropped
        for part in self.writes.values():
            shoppers.update(part.decays, part.deadlines, part.tiers, part.erased)
        return shoppers

    def clear(self) -> None:
        self.dropped |= self.touched()
        self.records.clear()
        self.saved.clear()
        self.writes.clear()

    def merge(self, other: Outbox) -> None:
        self.records += other.records
        self.saved.update(other.saved)
        for partition, part in other.writes.items():
            self.write(partition).merge(part)
        self.dropped |= other.dropped


async def concurrently(
    jobs: list[Callable[[Outbox], Coroutine[Any, Any, T]]], outbox: Outbox
) -> list[T]:
    """Run the jobs as concurrent tasks, each queuing into an outbox of its own, and merge
    those into `outbox` in job order, so what goes out does not depend on which finished
    first; the jobs' results, in the same order. One that fails cancels the others
    before they go further, and its own exception is raised, not the task group's."""
    parts = [Outbox() for _ in jobs]
    try:
        async with asyncio.TaskGroup() as tasks:
            running = [tasks.create_task(job(part)) for job, part in zip(jobs, parts, strict=True)]
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None
    for part in parts:
        outbox.merge(part)
    return [task.result() for task in running]


def count(metric: Any, counts: Counter[Any]) -> None:
    """A batch's counts into a labelled counter: one increment per label set, not per
    record (a `labels()` lookup per record cost measurably on the hot path)."""
    for labels, n in counts.items():
        metric.labels(*labels).inc(n)
