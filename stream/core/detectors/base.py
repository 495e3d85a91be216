"""What every detector shares: the event view, a firing, cooldowns, the interface.

Detectors are pure. Each keeps its state in a plain JSON-able dict (one per rule, in
`ShopperState.rules`), mutated in place, and bounded: `prune` drops what its window no
longer needs. Times are epoch seconds (event time).
"""

from __future__ import annotations

import bisect
from typing import Any, ClassVar, NamedTuple

from schemas.events import Event
from schemas.rules import KeyName, RuleBase

RuleState = dict[str, Any]
BUFFER_CAP = 64  # most events one rule keeps for one shopper, whatever its window


class Ev(NamedTuple):
    """An event as the detectors see it: with its effective session key."""

    event: Event
    id: str
    ts: float
    session: str | None
    sku: str | None
    category: str | None


class Fired(NamedTuple):
    """One firing of a rule, before the engine turns it into a `Signal`."""

    anchors: tuple[str, ...]
    at: float
    session: str | None = None
    sku: str | None = None
    category: str | None = None
    suppression: dict[str, Any] | None = None


def key_of(ev: Ev, same: KeyName) -> str | None:
    """The partition key of a `same:` constraint; None when the event lacks it."""
    if same == "shopper":
        return ""
    if same == "session":
        return ev.session
    if same == "product":
        return ev.sku
    return ev.category


def insert_sorted(buf: list[list[Any]], item: list[Any]) -> bool:
    """Insert [ts, id, ...] in (ts, id) order unless that id is already there."""
    if any(existing[1] == item[1] for existing in buf):
        return False
    bisect.insort(buf, item, key=lambda x: (x[0], x[1]))
    if len(buf) > BUFFER_CAP:
        del buf[0]
    return True


class Detector:
    """Base: a rule that fires on events only and keeps nothing."""

    kind: ClassVar[str] = ""
    horizon: float = 0.0  # how far back (s) this rule's state matters

    def __init__(self, rule: RuleBase, lateness: float) -> None:
        self.rule = rule
        self.lateness = lateness

    def on_event(self, st: RuleState, ev: Ev) -> list[Fired]:
        raise NotImplementedError

    def advance(self, st: RuleState, until: float) -> list[Fired]:
        return []

    def deadline(self, st: RuleState) -> float | None:
        return None

    def prune(self, st: RuleState, watermark: float) -> None:
        cooldowns = st.get("cd")
        if cooldowns:
            for key in [k for k, until in cooldowns.items() if until <= watermark - self.lateness]:
                del cooldowns[key]

    # --- cooldowns: after firing, the same key stays quiet for `rule.cooldown` seconds
    def cooling(self, st: RuleState, key: str, at: float) -> bool:
        return bool(st.get("cd", {}).get(key, float("-inf")) > at)

    def cool(self, st: RuleState, key: str, at: float, seconds: float | None) -> None:
        if seconds:
            st.setdefault("cd", {})[key] = at + seconds
