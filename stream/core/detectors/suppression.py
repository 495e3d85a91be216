"""`suppression`: negative signals (opt-out, spam complaint, repeated bounces, consent
withdrawn, purchase in a category). They carry a scope and an expiry, never points."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from schemas.rules import SuppressionRule
from stream.core.detectors.base import Detector, Ev, Fired, RuleState
from stream.core.detectors.match import compile_match, field_value


class SuppressionDetector(Detector):
    kind = "suppression"

    def __init__(self, rule: SuppressionRule, lateness: float) -> None:
        super().__init__(rule, lateness)
        self.rule_: SuppressionRule = rule
        self.when = compile_match(rule.when)
        self.horizon = (rule.within or 0.0) + lateness

    def on_event(self, st: RuleState, ev: Ev) -> list[Fired]:
        rule = self.rule_
        if not self.when(ev.event):
            return []
        value = self._scope_value(ev)
        if rule.scope != "all" and value is None:
            return []  # nothing to scope it to (a purchase without product data)
        anchors: tuple[str, ...] = (ev.id,)
        if rule.count > 1:
            hits: list[list[Any]] = st.setdefault("hits", [])
            if any(h[1] == ev.id for h in hits):
                return []
            hits.append([ev.ts, ev.id])
            hits.sort()
            assert rule.within is not None  # the schema requires it with count > 1
            recent = [h for h in hits if ev.ts - rule.within <= h[0] <= ev.ts]
            if len(recent) < rule.count:
                return []
            anchors = tuple(h[1] for h in recent[-rule.count :])
            st["hits"] = []
        until = datetime.fromtimestamp(ev.ts + rule.duration, tz=UTC)
        detail = {
            "scope": rule.scope,
            "value": value,
            "until": until.isoformat(),
            "except_actions": list(rule.except_actions),
        }
        return [Fired(anchors, ev.ts, ev.session, ev.sku, ev.category, suppression=detail)]

    def _scope_value(self, ev: Ev) -> str | None:
        if self.rule_.scope == "channel":
            channel = self.rule_.channel or field_value(ev.event, "properties.channel")
            return str(channel) if channel else None
        if self.rule_.scope == "category":
            return ev.category or ev.sku
        return None

    def prune(self, st: RuleState, watermark: float) -> None:
        super().prune(st, watermark)
        if st.get("hits"):
            st["hits"] = [h for h in st["hits"] if h[0] >= watermark - self.horizon]
