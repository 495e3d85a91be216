"""Visits, and the `session` rules evaluated when one ends.

A visit is the source's `session_id` when it gives one; otherwise events closer than
`session_gap` belong together and the visit is named after its first event time. A
visit ends when an event of another visit arrives, or when `session_gap` has passed
after its last event, whatever its session id (through `advance`, in event time or on
the timer, or as the next event arrives). Email, SMS and consent events happen off-site
and are not part of visits; nor are custom events (a shop's own names, GA4's `scroll` or
`user_engagement`, sent alongside most pages), nor `identify` and `alias` events (a
shopper's ids linked): they say nothing of what a visit was, so they neither open,
extend nor count in one, and `blog_only_visit` or `single_page_visit` still fire on a
feed full of them.

A session id whose visit has ended stays ended (the last CLOSED_CAP are kept): a later
event of it leaves the current visit alone and opens none. So what fires does not
depend on whether the timer ended a visit before the next event arrived, and two
interleaved visits (two tabs, two session ids) do not end each other over and over:
that fired a session's rule twice, the same signal id in two batches, which the score
script took for a batch run again after a crash (it sent that call's output again).
"""

from __future__ import annotations

from typing import Any, Final

from schemas.events import Event
from schemas.rules import SessionRule
from stream.core.detectors.base import Fired
from stream.core.detectors.match import compile_match

OFFSITE_TYPES: Final = frozenset(
    {"email_open", "email_click", "email_bounce", "spam_complaint", "opt_out", "consent_update",
     "sms_click"}
)  # fmt: skip
OUTSIDE_VISITS: Final = OFFSITE_TYPES | {"custom", "identify", "alias"}
CLOSED_CAP: Final = 8  # ended session ids remembered per shopper


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
        if event.type in OUTSIDE_VISITS:
            return event.session_id, []
        cur: dict[str, Any] | None = st.get("cur")
        fired: list[tuple[SessionRule, Fired]] = []
        if cur is not None:
            # The gap ends a visit whatever its session id, as `advance` does: whether the
            # timer got there before this event must not change what fires.
            ends = cur["l"] + self.gap
            if event.session_id is not None:
                same = event.session_id == cur["k"] and ts < ends
            else:
                same = cur["s"] - self.gap <= ts < ends
            if not same and ts < cur["s"]:
                # An out-of-order event of an earlier visit: name it, leave the current one.
                return event.session_id or f"gap-{int(ts)}", []
            if not same and ts < ends and event.session_id in st.get("done", ()):
                return event.session_id, []  # of a visit that ended: leave this one alone
            if not same:
                del st["cur"]  # ended: the next event must not end it again
                fired = self._close(st, cur, min(ts, ends))
                cur = None
        # asked again: the close just above may have ended this very session id (the gap)
        if event.session_id is not None and event.session_id in st.get("done", ()):
            return event.session_id, fired  # of a visit that ended: opens none
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
        return self._close(st, cur, float(cur["l"]) + self.gap)

    def deadline(self, st: dict[str, Any]) -> float | None:
        cur = st.get("cur")
        return float(cur["l"]) + self.gap if cur else None

    def _close(
        self, st: dict[str, Any], cur: dict[str, Any], at: float
    ) -> list[tuple[SessionRule, Fired]]:
        """The session rules a visit fires as it ends `at`: when the gap ran out after its
        last event, or when an event of another visit came first (then, not at the end
        of a gap still to run: a signal later than events yet to be scored would be
        scored ahead of them, and a purchase among them would count after it)."""
        out: list[tuple[SessionRule, Fired]] = []
        count = cur["n"]
        key = str(cur["k"])
        if not key.startswith("gap-"):  # a session id: it stays ended
            st["done"] = [*st.get("done", []), key][-CLOSED_CAP:]
        for rule in self.rules:
            all_ok, none_ok = cur["r"].get(rule.id, [True, True])
            if not (all_ok and none_ok) or count < rule.min_events:
                continue
            if rule.max_events is not None and count > rule.max_events:
                continue
            out.append((rule, Fired((f"session:{key}",), at, key)))
        return out
