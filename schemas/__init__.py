"""Pydantic models at the edges: input events, adapters, file readers (later: rules, outputs)."""

from schemas.errors import InvalidEvent
from schemas.events import EVENT_TYPES, PAGE_TYPES, Event, Page, Product

__all__ = ["EVENT_TYPES", "PAGE_TYPES", "Event", "InvalidEvent", "Page", "Product"]
