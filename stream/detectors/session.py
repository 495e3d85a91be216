"""Visits, and the `session` rules evaluated when one ends.

A visit is the source's `session_id` when it gives one; otherwise events closer than
`session_gap` belong together and the visit is named after its first event time. A
visit ends when an event of another visit arrives, or when `session_gap` has passed
after its last event (through `advance`, in event time or on the timer). Email, SMS and
consent events happen off-site and are not part of visits.
"""

from __future__ import annotations

from typing import Any, Final

from schemas.events import Event
from schemas.rules import SessionRule
from stream.detectors.base import Fired
from stream.detectors.match import compile_match

OFFSITE_TYPES: Final = frozenset(
    {"email_open", "email_click", "email_bounce", "spam_complaint", "opt_out", "consent_update",
     "sms_click"}
)  # fmt: skip


class Sessions:
    def __init__(self, rules: list[SessionRule], gap: float) -> None:
        self.rules = rules
        self.gap = gap
        self.all = {r.id: compile_match(r.all) if r.all else None for r in rules}
        self.none = {r.id: compile_match(r.none) if r.none else None for r in rules}

    def assign(
        self, st: dict[str, Any], event: Event, ts: float
    ) -> tuple[str | None, list[tuple[SessionRule, Fired]]]:
        """The visit this event belongs to, and the session rules fired by a visit it ends."""
        if event.type in OFFSITE_TYPES:
            return event.session_id, []
        cur: dict[str, Any] | None = st.get("cur")
        fired: list[tuple[SessionRule, Fired]] = []
        if cur is not None:
            if event.session_id is not None:
                same = event.session_id == cur["k"]
            else:
                same = cur["s"] - self.gap <= ts <= cur["l"] + self.gap
            if not same and ts < cur["s"]:
                # An out-of-order event of an earlier visit: name it, leave the current one.
                return event.session_id or f"gap-{int(ts)}", []
            if not same:
                fired = self._close(cur)
                cur = None
        if cur is None:
            cur = {"k": event.session_id or f"gap-{int(ts)}", "s": ts, "l": ts, "n": 0,
                   "r": {r.id: [True, True] for r in self.rules}}  # fmt: skip
            st["cur"] = cur
        cur["n"] += 1
        cur["s"] = min(cur["s"], ts)
        cur["l"] = max(cur["l"], ts)
        for rule_id, flags in cur["r"].items():
            test_all, test_none = self.all.get(rule_id), self.none.get(rule_id)
            if test_all is not None and flags[0] and not test_all(event):
                flags[0] = False
            if test_none is not None and flags[1] and test_none(event):
                flags[1] = False
        return str(cur["k"]), fired

    def advance(self, st: dict[str, Any], until: float) -> list[tuple[SessionRule, Fired]]:
        cur = st.get("cur")
        if cur is None or cur["l"] + self.gap > until:
            return []
        del st["cur"]
        return self._close(cur)

    def deadline(self, st: dict[str, Any]) -> float | None:
        cur = st.get("cur")
        return float(cur["l"]) + self.gap if cur else None

    def _close(self, cur: dict[str, Any]) -> list[tuple[SessionRule, Fired]]:
        out: list[tuple[SessionRule, Fired]] = []
        count = cur["n"]
        for rule in self.rules:
            all_ok, none_ok = cur["r"].get(rule.id, [True, True])
            if not (all_ok and none_ok) or count < rule.min_events:
                continue
            if rule.max_events is not None and count > rule.max_events:
                continue
            key = str(cur["k"])
            out.append((rule, Fired((f"session:{key}",), cur["l"] + self.gap, key)))
        return out
