"""The canonical event as it is (docs/architecture.md); `identify` and `alias` events
too (docs/identity.md)."""

from __future__ import annotations

from typing import Any

from schemas import errors
from schemas.adapters.common import build, require
from schemas.errors import InvalidEvent
from schemas.events import (
    CUSTOM,
    CUSTOM_NEEDS_NAME,
    EVENT_TYPES,
    IDENTITY_NEEDS_ANONYMOUS_ID,
    IDENTITY_TYPES,
    Event,
)


def from_canonical(obj: dict[str, Any]) -> Event:
    kind = obj.get("type")
    if isinstance(kind, str) and kind not in EVENT_TYPES:
        raise InvalidEvent(errors.UNSUPPORTED_EVENT_TYPE, f"event type {kind!r} is not one we know")
    if kind == CUSTOM:
        require(obj.get("name"), errors.INVALID_EVENT, CUSTOM_NEEDS_NAME)
    if isinstance(kind, str) and kind in IDENTITY_TYPES:  # a list is no type, nor hashable
        require(obj.get("anonymous_id"), errors.INVALID_EVENT, IDENTITY_NEEDS_ANONYMOUS_ID)
    fields = dict(obj)
    fields.setdefault("source", "canonical")
    return build(fields)
