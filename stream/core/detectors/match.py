"""Compile a rule's `Match` into a fast predicate over events."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from schemas.events import EVENT_TYPES, Event
from schemas.rules import Condition, Match, segments

Predicate = Callable[[Event], bool]


def field_value(event: Event, path: str) -> Any:
    """The value at a field path (`type`, `name`, `page.type`, `product.sku`,
    `properties.a.b`)."""
    root, _, rest = path.partition(".")
    if root == "type":
        return event.type
    if root == "name":
        return event.name
    if root == "source":
        return event.source
    if root == "session_id":
        return event.session_id
    if root == "page":
        return getattr(event.page, rest, None) if event.page is not None else None
    if root == "product":
        return getattr(event.product, rest, None) if event.product is not None else None
    value: Any = event.properties
    for part in rest.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def compile_condition(cond: Condition) -> Callable[[Any], bool]:
    if cond.eq is not None:
        expected = cond.eq
        return lambda v: v == expected
    if cond.in_ is not None:
        allowed = frozenset(cond.in_)
        return lambda v: v in allowed
    if cond.not_in is not None:
        banned = frozenset(cond.not_in)
        return lambda v: v not in banned
    if cond.contains_any is not None:
        words = tuple(w.lower() for w in cond.contains_any)
        return lambda v: isinstance(v, str) and any(w in v.lower() for w in words)
    if cond.prefix is not None:
        prefixes = tuple(cond.prefix)
        return lambda v: isinstance(v, str) and v.startswith(prefixes)
    if cond.segment is not None:
        return _segment_test(cond.segment)
    if cond.regex is not None:
        pattern = re.compile(cond.regex)
        return lambda v: isinstance(v, str) and pattern.search(v) is not None
    if cond.exists is not None:
        want = cond.exists
        return lambda v: (v is not None) == want
    for op, bound in (("gt", cond.gt), ("gte", cond.gte), ("lt", cond.lt), ("lte", cond.lte)):
        if bound is not None:
            return _compare(op, bound)
    raise ValueError("empty condition")  # the schema makes this unreachable


def _segment_test(names: list[str]) -> Callable[[Any], bool]:
    """True when one of the names is a segment of the value, or whole words of one
    (`subscription` is in `subscription-boxes`, `shoes` in `Running Shoes`), whatever the
    case and the spelling of spaces, `-` and `_`. A name with separators itself must be a
    run of whole segments (`home/garden`)."""
    keys = [segments(name) for name in names]
    words = [f" {key[0]} " for key in keys if len(key) == 1]
    runs = [key for key in keys if len(key) > 1]
    seen: dict[str, bool] = {}  # a shop has few categories and many events

    def test(value: Any) -> bool:
        if not isinstance(value, str):
            return False
        found = seen.get(value)
        if found is None:
            parts = segments(value)
            found = any(word in f" {part} " for part in parts for word in words) or any(
                parts[i : i + len(run)] == run for run in runs for i in range(len(parts))
            )
            if len(seen) < _SEGMENT_CACHE:
                seen[value] = found
        return found

    return test


_SEGMENT_CACHE = 100_000  # distinct category paths remembered per condition


def _compare(op: str, bound: float) -> Callable[[Any], bool]:
    def test(v: Any) -> bool:
        n = _number(v)
        if n is None:
            return False
        return {"gt": n > bound, "gte": n >= bound, "lt": n < bound, "lte": n <= bound}[op]

    return test


def _always(event: Event) -> bool:
    return True


def _never(event: Event) -> bool:
    return False


Test = tuple[str, Callable[[Any], bool]]


def _conjunction(tests: list[Test]) -> Predicate:
    if len(tests) == 1:
        ((path, test),) = tests
        return lambda event: test(field_value(event, path))
    return lambda event: all(test(field_value(event, path)) for path, test in tests)


def _specialise(alternatives: list[list[Test]], event_type: str | None) -> Predicate:
    """The predicate for events of one type: conditions on `type` are settled here, once,
    so a rule that names its event types costs nothing on the others."""
    remaining: list[list[Test]] = []
    for tests in alternatives:
        if event_type is not None:
            if not all(test(event_type) for path, test in tests if path == "type"):
                continue  # this alternative can never match this type
            tests = [(path, test) for path, test in tests if path != "type"]
        if not tests:
            return _always  # the type alone decides
        remaining.append(tests)
    if not remaining:
        return _never
    if len(remaining) == 1:
        return _conjunction(remaining[0])
    conjunctions = [_conjunction(tests) for tests in remaining]
    return lambda event: any(p(event) for p in conjunctions)


def compile_match(match: Match) -> Predicate:
    alternatives = [
        [(path, compile_condition(cond)) for path, cond in conditions.items()]
        for conditions in match.any
    ]
    by_type = {kind: _specialise(alternatives, kind) for kind in EVENT_TYPES}
    generic = _specialise(alternatives, None)

    def predicate(event: Event) -> bool:
        return by_type.get(event.type, generic)(event)

    return predicate
