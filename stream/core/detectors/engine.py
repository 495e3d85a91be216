"""The detection engine: a shopper's state and a batch of events in, signals out. Pure.

    outcome = engine.process(shopper_id, state, events)    # in the stream (+ .groups)
    signals = engine.advance(shopper_id, state, until)      # on the timer
    engine.deadline(state)                                  # when to call advance next

`state` is a JSON-able dict (`Engine.new_state()`), mutated in place. It holds the
shopper's event-time watermark, the ids of recent events (a re-delivered event changes
nothing), the current visit, and each rule's bounded partial matches.
Events older than the watermark minus `allowed_lateness` are returned as `late`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from schemas.events import EVENT_TYPES, Event
from schemas.rules import AbsenceRule, RuleBase, RuleSet, SequenceRule, SessionRule
from schemas.signals import Signal, Suppression, signal_id
from schemas.trusted import construct
from stream.core.detectors.absence import AbsenceDetector
from stream.core.detectors.base import Detector, Ev, Fired
from stream.core.detectors.count import CountDetector
from stream.core.detectors.repeat import RepeatDetector
from stream.core.detectors.sequence import SequenceDetector
from stream.core.detectors.session import Sessions
from stream.core.detectors.single import SingleDetector
from stream.core.detectors.suppression import SuppressionDetector

STATE_VERSION: Final = 1
# The score group of signals `advance` fires (a visit's end, an absence): scored after
# those of the events of the same call, as a live worker's sweep scores them after the
# batches it has read.
ADVANCED: Final = 1 << 30
SEEN_CAP: Final = 256  # recent event ids kept for de-duplication, per shopper
CART_CAP: Final = 50  # distinct SKUs tracked in a shopper's cart
CART_ACTION: Final = "cart_recovery"  # signals of rules with this action carry the cart
DETECTORS: Final[dict[str, type[Detector]]] = {
    "single": SingleDetector,
    "sequence": SequenceDetector,
    "count": CountDetector,
    "absence": AbsenceDetector,
    "repeat": RepeatDetector,
    "suppression": SuppressionDetector,
}

State = dict[str, Any]


@dataclass
class Outcome:
    signals: list[Signal] = field(default_factory=list)
    late: list[Event] = field(default_factory=list)
    duplicates: int = 0
    # signal id -> its score group: the position of the event that fired it in this call.
    # Signals are scored group by group (`ScoreSignal.group`), as calls event by event
    # would score them, so the changes do not depend on how events were batched.
    groups: dict[str, int] = field(default_factory=dict)


class Engine:
    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        self.lateness = rules.defaults.allowed_lateness
        self.detectors: list[Detector] = [
            DETECTORS[rule.kind](rule, self.lateness)
            for rule in rules.rules
            if rule.kind != "session"
        ]
        # Which detectors an event type can concern: most rules name their types, so an
        # event skips the rules it can never match (strict sequences see every event).
        reacts = [(d, _types(d.rule)) for d in self.detectors]
        self.by_type: dict[str, list[Detector]] = {
            kind: [d for d, types in reacts if types is None or kind in types]
            for kind in EVENT_TYPES
        }
        self.by_id: dict[str, Detector] = {d.rule.id: d for d in self.detectors}
        # Only these do anything in `advance`/`deadline` (absence: its pending deadlines).
        self.timed = [d for d in self.detectors if type(d).advance is not Detector.advance]
        session_rules = [r for r in rules.rules if isinstance(r, SessionRule)]
        self.sessions = Sessions(session_rules, rules.defaults.session_gap)
        # How long a shopper's pattern state matters after their last event.
        self.horizon = max(
            [d.horizon for d in self.detectors] + [rules.defaults.session_gap + self.lateness]
        )

    @staticmethod
    def new_state() -> State:
        return {"v": STATE_VERSION, "wm": None, "seen": [], "ses": {}, "r": {}}

    def process(self, shopper: str, state: State, events: Iterable[Event]) -> Outcome:
        outcome = Outcome()
        seen_ids = {eid for _, eid in state["seen"]}
        groups = outcome.groups
        for position, event in enumerate(events):
            ts = event.ts.timestamp()
            eid = event.id
            if eid in seen_ids:
                outcome.duplicates += 1
                continue
            watermark = state["wm"]
            if watermark is not None and ts < watermark - self.lateness:
                outcome.late.append(event)
                continue
            seen_ids.add(eid)
            state["seen"].append([ts, eid])
            state["wm"] = ts if watermark is None else max(watermark, ts)
            fired = self._on_event(state, event, ts)
            fired += self._advance(state, state["wm"] - self.lateness)
            signals = self._signals(shopper, state, fired)
            for signal in signals:
                groups.setdefault(signal.signal_id, position)
            outcome.signals += signals
        self._prune(state)
        outcome.signals.sort(key=lambda s: (s.at, groups[s.signal_id], s.signal_id))
        return outcome

    def advance(self, shopper: str, state: State, until: float) -> list[Signal]:
        """Fire what is due by `until` (epoch seconds): absence deadlines, ended visits.
        Their score group is `ADVANCED`."""
        signals = self._signals(shopper, state, self._advance(state, until))
        self._prune(state)
        signals.sort(key=lambda s: (s.at, s.signal_id))
        return signals

    def ttl(self, state: State) -> float:
        """Seconds this state must outlive the shopper's last event: the longest window
        among the rules that hold something, never less than a visit (so stale shoppers
        cost nothing)."""
        held = [self.by_id[rule_id].horizon for rule_id, st in state["r"].items() if st]
        floor = self.rules.defaults.session_gap + self.lateness
        due = self.deadline(state)
        if due is not None and state["wm"] is not None:
            floor = max(floor, due - state["wm"] + self.lateness)
        return max([floor, *held])

    def deadline(self, state: State) -> float | None:
        """The earliest time `advance` has something to do for this state."""
        times = [self.sessions.deadline(state["ses"])]
        rules_state = state["r"]
        times += [
            d.deadline(rules_state[d.rule.id]) for d in self.timed if d.rule.id in rules_state
        ]
        due = [t for t in times if t is not None]
        return min(due) if due else None

    # --- internals ---------------------------------------------------------------------
    def _on_event(self, state: State, event: Event, ts: float) -> list[tuple[RuleBase, Fired]]:
        _track_cart(state, event, ts)
        session, fired = self.sessions.assign(state["ses"], event, ts)
        product = event.product
        sku, category = (product.sku, product.category) if product else (None, None)
        ev = Ev(event, event.id, ts, session, sku, category)
        out: list[tuple[RuleBase, Fired]] = list(fired)
        rules_state = state["r"]
        for detector in self.by_type[event.type]:
            rule_id = detector.rule.id
            st = rules_state.get(rule_id)
            if st is None:
                st = rules_state[rule_id] = {}
            out.extend((detector.rule, f) for f in detector.on_event(st, ev))
        return out

    def _advance(self, state: State, until: float) -> list[tuple[RuleBase, Fired]]:
        out: list[tuple[RuleBase, Fired]] = list(self.sessions.advance(state["ses"], until))
        rules_state = state["r"]
        for detector in self.timed:
            st = rules_state.get(detector.rule.id)
            if st:
                out.extend((detector.rule, f) for f in detector.advance(st, until))
        return out

    def _prune(self, state: State) -> None:
        watermark = state["wm"]
        if watermark is None:
            return
        floor = watermark - self.lateness
        state["seen"] = [s for s in state["seen"] if s[0] >= floor][-SEEN_CAP:]
        _fold_cart(state, floor)
        rules_state = state["r"]
        for rule_id, st in list(rules_state.items()):
            detector = self.by_id.get(rule_id)
            if detector is None:  # a rule removed from the file since this state was saved
                del rules_state[rule_id]
                continue
            detector.prune(st, watermark)
            if not any(st.values()):
                del rules_state[rule_id]

    def _signals(
        self, shopper: str, state: State, fired: list[tuple[RuleBase, Fired]]
    ) -> list[Signal]:
        out = []
        for rule, f in fired:
            anchors = list(f.anchors)
            suppression = Suppression.model_validate(f.suppression) if f.suppression else None
            properties: dict[str, Any] = {}
            if isinstance(rule, AbsenceRule):
                waited = datetime.fromtimestamp(f.at - rule.within, tz=UTC)
                properties["anchor_at"] = waited.isoformat()
            if CART_ACTION in rule.actions:
                properties["cart"] = cart_snapshot(state, f.at)
            # Built from validated rules and events: no need to validate again (hot path).
            out.append(
                construct(
                    Signal,
                    {
                        "signal_id": signal_id(rule.id, shopper, anchors),
                        "rule_id": rule.id,
                        "kind": rule.kind,  # type: ignore[attr-defined]
                        "shopper_id": shopper,
                        "at": datetime.fromtimestamp(f.at, tz=UTC),
                        "points": rule.points,
                        "half_life_seconds": self.rules.half_life(rule),
                        "tier_hint": rule.tier_hint,
                        "actions": list(rule.actions),
                        "anchors": anchors,
                        "session_id": f.session,
                        "sku": f.sku,
                        "category": f.category,
                        "suppression": suppression,
                        "properties": properties,
                    },
                )
            )
        return out


def _track_cart(state: State, event: Event, ts: float) -> None:
    """Cart events (add/remove; a purchase empties the cart) go to `cartlog` as [ts, type]
    (+ sku, quantity, price, category, name), in the order they come; `_fold_cart` moves
    them into the `cart` once no signal can be earlier than them. So a signal carries
    the cart of its own time (an abandoned checkout: the cart at its deadline), however
    late it fires: by the timer first, or with an event after it."""
    if event.type == "purchase":
        state.setdefault("cartlog", []).append([ts, "purchase"])
        return
    product = event.product
    if product is None or event.type not in ("add_to_cart", "remove_from_cart"):
        return
    entry = [ts, event.type, product.sku, product.quantity or 1, product.price,
             product.category, product.name]  # fmt: skip
    state.setdefault("cartlog", []).append(entry)


def _apply_cart(cart: dict[str, list[Any]], entry: list[Any]) -> None:
    if entry[1] == "purchase":
        cart.clear()
        return
    _, kind, sku, quantity, price, category, name = entry
    item = cart.pop(sku, [0, price, category, name])
    item[0] += quantity if kind == "add_to_cart" else -quantity
    if item[0] > 0:
        cart[sku] = item
        while len(cart) > CART_CAP:
            del cart[next(iter(cart))]


def _fold_cart(state: State, floor: float) -> None:
    """Move the cart events up to `floor` (the watermark minus the allowed lateness: no
    signal still to fire is earlier) into the cart, oldest first, in the order they
    came."""
    log = state.get("cartlog")
    if not log or log[0][0] > floor:
        return
    cart: dict[str, list[Any]] = state.pop("cart", {})
    n = 0
    while n < len(log) and log[n][0] <= floor:
        _apply_cart(cart, log[n])
        n += 1
    if cart:
        state["cart"] = cart
    if n < len(log):
        state["cartlog"] = log[n:]
    else:
        del state["cartlog"]


def cart_at(state: State, t: float) -> dict[str, list[Any]]:
    """The cart as of event time `t`: sku -> [quantity, price, category, name]."""
    cart = {sku: list(item) for sku, item in state.get("cart", {}).items()}
    for entry in state.get("cartlog", ()):
        if entry[0] <= t:
            _apply_cart(cart, entry)
    return cart


def cart_snapshot(state: State, t: float) -> dict[str, Any]:
    items = [
        {"sku": sku, "quantity": qty, "price": price, "category": category, "name": name}
        for sku, (qty, price, category, name) in cart_at(state, t).items()
    ]
    value = sum((i["price"] or 0.0) * i["quantity"] for i in items)
    return {"items": items, "value": round(value, 2)}


def _types(rule: RuleBase) -> frozenset[str] | None:
    """The event types a rule can react to; None when any type can matter."""
    if isinstance(rule, SequenceRule) and rule.contiguity == "strict":
        return None  # any event of the key breaks a strict chain
    matches = [getattr(rule, name) for name in ("when", "unless") if getattr(rule, name, None)]
    matches += list(getattr(rule, "steps", []))
    types: set[str] = set()
    for match in matches:
        for conditions in match.any:
            cond = conditions.get("type")
            if cond is None:
                return None
            if cond.eq is not None:
                types.add(cond.eq)
            elif cond.in_ is not None:
                types.update(cond.in_)
            else:
                return None  # not_in, regex...: any type may match
    return frozenset(types)
