"""What a replay gives: a shard's results, and their order."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from schemas.outputs import TierChange
from schemas.signals import Signal
from stream.core.outputs import Output


@dataclass
class ReplayResult:
    events: int = 0
    line_errors: dict[str, int] = field(default_factory=dict)
    late: int = 0
    failed: int = 0  # shoppers whose processing raised: left out, each logged
    merges: int = 0  # anonymous ids merged into a known profile (`profiles.Profile`)
    behind: int = 0  # the whole file's (`Replay.behind`), set by `replay`
    shoppers: int = 0
    signals: list[Signal] = field(default_factory=list)
    changes: list[TierChange] = field(default_factory=list)
    actions: list[Output] = field(default_factory=list)
    purchases: dict[str, list[float]] = field(default_factory=dict)  # shopper -> purchase times
    # shopper -> tier -> when the naive rule (`naive.py`) first put them in it or higher
    naive: dict[str, dict[str, float]] = field(default_factory=dict)
    # shopper -> (time, score) each time their score rose above its highest so far
    highs: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
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
        self.merges += part.merges
        self.shoppers += part.shoppers
        self.signals += part.signals
        self.changes += part.changes
        self.actions += part.actions
        self.purchases.update(part.purchases)
        self.first_seen.update(part.first_seen)
        self.naive.update(part.naive)
        self.highs.update(part.highs)

    def sort(self) -> None:
        """Signals by shopper (each shopper's in their own order), changes and actions by
        time: the order of one run in one piece, whatever the sharding."""
        self.signals.sort(key=lambda s: s.shopper_id)  # stable: keeps a shopper's order
        self.changes.sort(key=lambda c: (c.at, c.shopper_id))  # stable: a shopper's in order
        self.actions.sort(key=action_order)


def action_order(output: Output) -> tuple[datetime, str, str]:
    return _at(output), output.topic, output.key


def _at(output: Output) -> datetime:
    at: datetime = output.value.at  # type: ignore[attr-defined]  # every output has one
    return at
