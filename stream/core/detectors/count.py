"""`count`: N matching events (optionally N distinct values of a field) within `within`.

Fires on the event that completes the count, then stays quiet for the key for
`cooldown` (default: `within`), so a burst fires once.
"""

from __future__ import annotations

from typing import Any

from schemas.rules import CountRule
from stream.core.detectors.base import Detector, Ev, Fired, RuleState, insert_sorted, key_of
from stream.core.detectors.match import compile_match, field_value


class CountDetector(Detector):
    kind = "count"

    def __init__(self, rule: CountRule, lateness: float) -> None:
        super().__init__(rule, lateness)
        self.rule_: CountRule = rule
        self.when = compile_match(rule.when)
        self.cooldown = rule.cooldown or rule.within
        self.horizon = rule.within + lateness

    def on_event(self, st: RuleState, ev: Ev) -> list[Fired]:
        key = key_of(ev, self.rule_.same)
        if key is None or not self.when(ev.event):
            return []
        value = field_value(ev.event, self.rule_.distinct) if self.rule_.distinct else ev.id
        if value is None:
            return []
        buf: list[list[Any]] = st.setdefault("buf", [])
        if not insert_sorted(buf, [ev.ts, ev.id, key, str(value)]):
            return []
        fired: list[str] = st.setdefault("fired", [])
        for ts, eid, item_key, _ in list(buf):
            if item_key != key or eid in fired or not ev.ts <= ts <= ev.ts + self.rule_.within:
                continue
            window = [x for x in buf if x[2] == key and ts - self.rule_.within <= x[0] <= ts]
            latest: dict[str, str] = {}
            for x in window:
                if (x[0], x[1]) <= (ts, eid):
                    latest[x[3]] = x[1]
            if len(latest) >= self.rule_.count and not self.cooling(st, key, ts):
                fired.append(eid)
                self.cool(st, key, ts, self.cooldown)
                anchors = tuple(sorted(latest.values()))
                return [Fired(anchors, ts, ev.session, ev.sku, ev.category)]
        return []

    def prune(self, st: RuleState, watermark: float) -> None:
        super().prune(st, watermark)
        floor = watermark - self.horizon
        if "buf" in st:
            st["buf"] = [item for item in st["buf"] if item[0] >= floor]
            live = {item[1] for item in st["buf"]}
            st["fired"] = [eid for eid in st.get("fired", []) if eid in live]
