"""Map any accepted input onto the canonical `Event`: the JSON shapes (canonical,
Segment, GA4, Snowplow's analytics SDK JSON) and Snowplow's enriched TSV."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Literal

from schemas import errors
from schemas.adapters.canonical import from_canonical
from schemas.adapters.ga4 import from_ga4, looks_like_ga4
from schemas.adapters.segment import from_segment, looks_like_segment
from schemas.adapters.snowplow import (
    from_snowplow,
    from_snowplow_tsv,
    looks_like_snowplow,
    reads_as_tsv,
)
from schemas.bounds import DEFAULT_BOUNDS, Bounds, check_event, loads
from schemas.errors import InvalidEvent
from schemas.events import Event

JsonFormat = Literal["auto", "canonical", "segment", "ga4", "snowplow"]

ADAPTERS: Final[dict[str, Callable[[dict[str, Any]], Event]]] = {
    "canonical": from_canonical,
    "segment": from_segment,
    "ga4": from_ga4,
    "snowplow": from_snowplow,
}


def detect(obj: dict[str, Any]) -> str:
    """Which adapter an object needs: the shapes do not overlap (Snowplow's JSON has an
    `event_name` too, so it is told apart first)."""
    if looks_like_snowplow(obj):
        return "snowplow"
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
    record and the event must be within `bounds` (`schemas.bounds`). A Snowplow enriched
    TSV line is read as one in formats `auto` and `snowplow` (`reads_as_tsv`)."""
    if not raw or not raw.strip():
        raise InvalidEvent(errors.EMPTY, "the payload is empty")
    if reads_as_tsv(raw, fmt):
        return check_event(from_snowplow_tsv(raw, bounds), bounds)
    return check_event(to_event(loads(raw, bounds), fmt), bounds)


__all__ = ["ADAPTERS", "JsonFormat", "decode_json", "detect", "to_event"]
