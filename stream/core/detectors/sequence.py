"""`sequence`: steps A, B (, C) in event-time order within `within`.

State `buf` holds [ts, id, step-mask, key] of recent events that match any step (with
strict contiguity: every event, so gaps are visible), sorted by event time, so an event
that arrives out of order still completes the chain it belongs to. A chain is anchored
on its last step's event: each such event fires at most once (`fired`).
"""

from __future__ import annotations

from typing import Any

from schemas.rules import SequenceRule
from stream.core.detectors.base import Detector, Ev, Fired, RuleState, insert_sorted, key_of
from stream.core.detectors.match import compile_match


class SequenceDetector(Detector):
    kind = "sequence"

    def __init__(self, rule: SequenceRule, lateness: float) -> None:
        super().__init__(rule, lateness)
        self.rule_: SequenceRule = rule
        self.steps = [compile_match(step) for step in rule.steps]
        self.last_bit = 1 << (len(self.steps) - 1)
        self.strict = rule.contiguity == "strict"
        self.horizon = rule.within + lateness

    def on_event(self, st: RuleState, ev: Ev) -> list[Fired]:
        mask = sum(1 << i for i, step in enumerate(self.steps) if step(ev.event))
        key = key_of(ev, self.rule_.same)
        if key is None or (mask == 0 and not (self.strict and st.get("buf"))):
            return []
        buf: list[list[Any]] = st.setdefault("buf", [])
        if not insert_sorted(buf, [ev.ts, ev.id, mask, key]):
            return []
        fired: dict[str, float] = st.setdefault("fired", {})
        out: list[Fired] = []
        for index, item in enumerate(buf):
            ts, last_id, bits, last_key = item
            if not bits & self.last_bit or last_id in fired:
                continue
            if not ev.ts <= ts <= ev.ts + self.rule_.within:
                continue  # the new event cannot be part of a chain ending here
            chain = self._chain(buf, index, last_key)
            if chain is None or self.cooling(st, last_key, ts):
                continue
            fired[last_id] = ts
            self.cool(st, last_key, ts, self.rule_.cooldown)
            out.append(Fired(tuple(chain), ts, ev.session if last_id == ev.id else None,
                             ev.sku, ev.category))  # fmt: skip
        return out

    def _chain(self, buf: list[list[Any]], end: int, key: str) -> list[str] | None:
        """Ids of a chain ending at buf[end], latest predecessors first; None if none."""
        end_ts = buf[end][0]
        ids = [buf[end][1]]
        step = len(self.steps) - 2
        pos = end - 1
        while step >= 0 and pos >= 0:
            ts, eid, bits, item_key = buf[pos]
            if end_ts - ts > self.rule_.within:
                return None
            if item_key == key:
                if bits & (1 << step):
                    ids.append(eid)
                    step -= 1
                elif self.strict:
                    return None  # another event of the same key sits in between
            pos -= 1
        return ids[::-1] if step < 0 else None

    def prune(self, st: RuleState, watermark: float) -> None:
        super().prune(st, watermark)
        floor = watermark - self.horizon
        if "buf" in st:
            st["buf"] = [item for item in st["buf"] if item[0] >= floor]
        if "fired" in st:
            st["fired"] = {k: ts for k, ts in st["fired"].items() if ts >= floor}
