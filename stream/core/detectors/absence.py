"""`absence`: `when` not followed by `unless` within `within`; fires at the deadline.

`pending` holds [ts, id, key] of the latest `when` event per key (a newer one supersedes
it: one trigger per checkout, not per click), and of earlier ones whose deadline passed
before the newer one came, until they fire: whether the timer fired them first must not
change what fires. `seen` holds [ts, key] of recent `unless` events, so an `unless`
that arrives before its `when` (out of order) still cancels it.
Deadlines fire through `advance(until)`, which the engine calls with event time (in the
stream) or wall-clock time (the timer), so a shopper who sends nothing more still fires.
"""

from __future__ import annotations

from typing import Any

from schemas.rules import AbsenceRule
from stream.core.detectors.base import Detector, Ev, Fired, RuleState, key_of
from stream.core.detectors.match import compile_match


class AbsenceDetector(Detector):
    kind = "absence"

    def __init__(self, rule: AbsenceRule, lateness: float) -> None:
        super().__init__(rule, lateness)
        self.rule_: AbsenceRule = rule
        self.when = compile_match(rule.when)
        self.unless = compile_match(rule.unless)
        self.horizon = rule.within + lateness

    def on_event(self, st: RuleState, ev: Ev) -> list[Fired]:
        key = key_of(ev, self.rule_.same)
        if key is None:
            return []
        within = self.rule_.within
        if self.unless(ev.event):
            seen: list[list[Any]] = st.setdefault("seen", [])
            seen.append([ev.ts, key])
            st["pending"] = [
                p
                for p in st.get("pending", [])
                if not (p[2] == key and p[0] <= ev.ts <= p[0] + within)
            ]
            return []
        if self.when(ev.event):
            if any(k == key and ev.ts <= ts <= ev.ts + within for ts, k in st.get("seen", [])):
                return []  # already followed (the `unless` came first, out of order)
            pending: list[list[Any]] = st.setdefault("pending", [])
            if any(p[2] == key and p[0] > ev.ts for p in pending):
                return []  # an older `when` arriving late: the newer one already waits
            st["pending"] = [p for p in pending if p[2] != key or p[0] + within <= ev.ts] + [
                [ev.ts, ev.id, key]
            ]
        return []

    def advance(self, st: RuleState, until: float) -> list[Fired]:
        pending = st.get("pending")
        if not pending:
            return []
        within = self.rule_.within
        due = [p for p in pending if p[0] + within <= until]
        if not due:
            return []
        st["pending"] = [p for p in pending if p[0] + within > until]
        return [Fired((eid,), ts + within) for ts, eid, _ in sorted(due)]

    def deadline(self, st: RuleState) -> float | None:
        pending = st.get("pending")
        return min(p[0] for p in pending) + self.rule_.within if pending else None

    def prune(self, st: RuleState, watermark: float) -> None:
        super().prune(st, watermark)
        if "seen" in st:
            floor = watermark - self.horizon
            st["seen"] = [s for s in st["seen"] if s[0] >= floor][-64:]
