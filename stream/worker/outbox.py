"""What one batch or one sweep chunk sends and writes, gathered before any of it goes out.

Records are sent together and acked before the score indexes and the detection state are
written (`Pipeline.flush`), and those before the offsets are committed.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from stream.state.patterns import Saved
from stream.state.scores import IndexWrite

T = TypeVar("T")
Headers = list[tuple[str, bytes]]
OutRecord = tuple[str, bytes | None, bytes, Headers | None]  # topic, key, value, headers
Sender = Callable[[list[OutRecord]], Awaitable[None]]


@dataclass
class Outbox:
    """What one batch sends: (topic, key, value, headers), flushed together."""

    records: list[OutRecord] = field(default_factory=list)
    saved: dict[str, Saved] = field(default_factory=dict)  # detection state, written after
    # score indexes (decay deadlines, audiences, tier moves), written after the send: a
    # decay whose output was not sent stays due, and its call comes back (apply.lua)
    index: list[IndexWrite] = field(default_factory=list)
    # shoppers whose sweep raised -> their partition: taken off the timer's indexes
    quarantined: dict[str, int] = field(default_factory=dict)
    # shopper -> their forget fence as read before processing (None: none); read again
    # after the writes, and a shopper forgotten in between is erased again
    fences: dict[str, float | None] = field(default_factory=dict)

    def add(
        self, topic: str, key: bytes | None, value: bytes, headers: Headers | None = None
    ) -> None:
        self.records.append((topic, key, value, headers))

    def clear(self) -> None:
        self.records.clear()
        self.saved.clear()
        self.index.clear()
        self.quarantined.clear()
        self.fences.clear()

    def merge(self, other: Outbox) -> None:
        self.records += other.records
        self.saved.update(other.saved)
        self.index += other.index
        self.quarantined.update(other.quarantined)
        self.fences.update(other.fences)


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
