"""Map any accepted JSON input (canonical, Segment, GA4) onto the canonical `Event`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Literal

from schemas import errors
from schemas.adapters.canonical import from_canonical
from schemas.adapters.ga4 import from_ga4, looks_like_ga4
from schemas.adapters.segment import from_segment, looks_like_segment
from schemas.bounds import DEFAULT_BOUNDS, Bounds, check_event, loads
from schemas.errors import InvalidEvent
from schemas.events import Event

JsonFormat = Literal["auto", "canonical", "segment", "ga4"]

ADAPTERS: Final[dict[str, Callable[[dict[str, Any]], Event]]] = {
    "canonical": from_canonical,
    "segment": from_segment,
    "ga4": from_ga4,
}


def detect(obj: dict[str, Any]) -> str:
    """Which adapter an object needs: the shapes do not overlap."""
    if looks_like_ga4(obj):
        return "ga4"
    if looks_like_segment(obj):
        return "segment"
    return "canonical"


def to_event(obj: Any, fmt: JsonFormat = "auto") -> Event:
    if not isinstance(obj, dict):
        raise InvalidEvent(
            errors.NOT_AN_OBJECT, f"expected a JSON object, got {type(obj).__name__}"
        )
    name = detect(obj) if fmt == "auto" else fmt
    return ADAPTERS[name](obj)


def decode_json(
    raw: bytes | str, fmt: JsonFormat = "auto", bounds: Bounds = DEFAULT_BOUNDS
) -> Event:
    """Bytes off the wire (or a file line) to an event: the single decode step. The
    record and the event must be within `bounds` (`schemas.bounds`)."""
    if not raw or not raw.strip():
        raise InvalidEvent(errors.EMPTY, "the payload is empty")
    return check_event(to_event(loads(raw, bounds), fmt), bounds)


__all__ = ["ADAPTERS", "JsonFormat", "decode_json", "detect", "to_event"]
