"""`single`: one event matching `when`."""

from __future__ import annotations

from schemas.rules import SingleRule
from stream.core.detectors.base import Detector, Ev, Fired, RuleState
from stream.core.detectors.match import compile_match


class SingleDetector(Detector):
    kind = "single"

    def __init__(self, rule: SingleRule, lateness: float) -> None:
        super().__init__(rule, lateness)
        self.when = compile_match(rule.when)
        self.cooldown = rule.cooldown
        self.horizon = rule.cooldown or 0.0

    def on_event(self, st: RuleState, ev: Ev) -> list[Fired]:
        if not self.when(ev.event) or self.cooling(st, "", ev.ts):
            return []
        self.cool(st, "", ev.ts, self.cooldown)
        return [Fired((ev.id,), ev.ts, ev.session, ev.sku, ev.category)]
