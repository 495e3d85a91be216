"""`repeat`: the same product (or category) seen in >= N sessions within `within`.

State `keys` maps a product/category to [session, ts] of the sessions it was seen in
(the most recent `MAX_KEYS` values only); each value fires once per `cooldown`
(default: `within`).
"""

from __future__ import annotations

from typing import Any, Final

from schemas.rules import RepeatRule
from stream.core.detectors.base import Detector, Ev, Fired, RuleState
from stream.core.detectors.match import compile_match

MAX_KEYS: Final = 50  # products/categories remembered per shopper for one rule


class RepeatDetector(Detector):
    kind = "repeat"

    def __init__(self, rule: RepeatRule, lateness: float) -> None:
        super().__init__(rule, lateness)
        self.rule_: RepeatRule = rule
        self.when = compile_match(rule.when)
        self.cooldown = rule.cooldown or rule.within
        self.horizon = rule.within + lateness

    def on_event(self, st: RuleState, ev: Ev) -> list[Fired]:
        value = ev.sku if self.rule_.key == "product" else ev.category
        if value is None or ev.session is None or not self.when(ev.event):
            return []
        keys: dict[str, list[list[Any]]] = st.setdefault("keys", {})
        sessions = keys.pop(value, [])
        if not any(s == ev.session for s, _ in sessions):
            sessions.append([ev.session, ev.ts])
        keys[value] = sessions  # re-inserted last: most recently seen
        while len(keys) > MAX_KEYS:
            del keys[next(iter(keys))]
        recent = sorted({s for s, ts in sessions if ev.ts - self.rule_.within <= ts <= ev.ts})
        if len(recent) < self.rule_.sessions or self.cooling(st, value, ev.ts):
            return []
        self.cool(st, value, ev.ts, self.cooldown)
        sku = value if self.rule_.key == "product" else ev.sku
        category = value if self.rule_.key == "category" else ev.category
        anchors = (f"{self.rule_.key}:{value}", *(f"session:{s}" for s in recent))
        return [Fired(anchors, ev.ts, ev.session, sku, category)]

    def prune(self, st: RuleState, watermark: float) -> None:
        super().prune(st, watermark)
        floor = watermark - self.horizon
        keys = st.get("keys")
        if keys:
            for value in list(keys):
                kept = [s for s in keys[value] if s[1] >= floor]
                if kept:
                    keys[value] = kept
                else:
                    del keys[value]
