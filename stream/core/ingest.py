"""Ingest core: raw Kafka records in, canonical events and rejections out. Pure, batched.

This is the one place where input bytes are decoded. The agent hands it a batch of raw
records with their coordinates; it returns the valid events and, for everything else, a
`Rejection` that carries the original bytes, the reason and where the record came from.
No record is dropped: len(events) + len(rejections) == len(records), always.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from schemas import errors
from schemas.adapters import decode_json
from schemas.bounds import DEFAULT_BOUNDS, Bounds
from schemas.errors import InvalidEvent
from schemas.events import Event

if TYPE_CHECKING:
    from stream.settings import Settings

PREVIEW_CHARS: Final = 200  # how much of a rejected payload is shown as text in the dead letter
DETAIL_CHARS: Final = 1000  # how much of the reason's detail a dead letter carries
KEY_BYTES: Final = 1024  # a longer original key is carried as a prefix (and keyed by its hash)
# Apache Kafka's default message.max.bytes is 1,048,588: a dead letter stays under it
DEAD_LETTER_MAX_BYTES: Final = 1_000_000


class RawRecord(NamedTuple):
    """One record as consumed: bytes plus where it came from."""

    value: bytes | None
    key: bytes | None = None
    topic: str = ""
    partition: int = -1
    offset: int = -1


@dataclass(frozen=True, slots=True)
class IngestLimits:
    max_bytes: int = 64 * 1024
    max_skew: timedelta = timedelta(minutes=5)
    bounds: Bounds = DEFAULT_BOUNDS


def ingest_bounds(settings: Settings) -> Bounds:
    """The bounds on what an event may hold (INTENT_MAX_*, INTENT_MIN_EVENT_TIME): the
    worker's and replay's alike."""
    return Bounds(
        max_depth=settings.max_json_depth,
        max_string_chars=settings.max_string_chars,
        max_list_items=settings.max_list_items,
        max_number=settings.max_number,
        max_quantity=settings.max_quantity,
        max_price=settings.max_price,
        min_time=settings.min_event_time,
    )


def ingest_limits(settings: Settings) -> IngestLimits:
    """The limits the worker applies (INTENT_MAX_EVENT_BYTES, INTENT_MAX_CLOCK_SKEW_SECONDS
    and the bounds)."""
    return IngestLimits(
        max_bytes=settings.max_event_bytes,
        max_skew=timedelta(seconds=settings.max_clock_skew_seconds),
        bounds=ingest_bounds(settings),
    )


@dataclass(frozen=True, slots=True)
class Rejection:
    record: RawRecord
    reason: str
    detail: str

    def dead_letter(self, rejected_at: datetime, max_bytes: int = DEAD_LETTER_MAX_BYTES) -> bytes:
        """The dead-letter value: the original bytes (base64) plus reason and source, and
        the original's size and SHA-256. It never exceeds `max_bytes`: an original too big
        to carry whole is carried as a prefix (`truncated`), so the broker never refuses
        a dead letter (which would hold up the batch for good)."""
        raw = self.record.value or b""
        letter: dict[str, Any] = {
            "reason": self.reason,
            "detail": self.detail[:DETAIL_CHARS],
            "source": {
                "topic": self.record.topic,
                "partition": self.record.partition,
                "offset": self.record.offset,
            },
            "key": _text(self.record.key[:KEY_BYTES] if self.record.key else self.record.key),
            "value_b64": "",
            "value_preview": raw[:PREVIEW_CHARS].decode("utf-8", errors="replace"),
            "size_bytes": len(raw),
            "sha256": hashlib.sha256(raw).hexdigest(),
            "truncated": False,
            "rejected_at": rejected_at.isoformat(),
        }
        room = max_bytes - len(_json(letter)) + 1  # "truncated": false -> true is one less
        if 4 * ((len(raw) + 2) // 3) > room:  # base64 of it all would not fit
            raw = raw[: max(0, room) // 4 * 3]
            letter["truncated"] = True
        letter["value_b64"] = base64.b64encode(raw).decode()
        return _json(letter)

    def key(self) -> bytes | None:
        """The dead letter's record key: the original's, or for a key longer than
        KEY_BYTES (which could make the record too big) its SHA-256."""
        key = self.record.key
        if key is not None and len(key) > KEY_BYTES:
            return hashlib.sha256(key).hexdigest().encode()
        return key


def _json(value: dict[str, Any]) -> bytes:
    # ensure_ascii: a lone surrogate in a detail or preview is escaped, never an error
    return json.dumps(value, separators=(",", ":")).encode()


@dataclass(slots=True)
class IngestResult:
    events: list[Event] = field(default_factory=list)
    sources: list[RawRecord] = field(default_factory=list)  # the record of each event
    rejected: list[Rejection] = field(default_factory=list)


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8", errors="replace")


def ingest_one(record: RawRecord, now: datetime, limits: IngestLimits) -> Event:
    """Decode and validate one record; raises `InvalidEvent` with the reason."""
    raw = record.value
    if raw is None or not raw:
        raise InvalidEvent(errors.EMPTY, "the record has no value")
    if len(raw) > limits.max_bytes:
        raise InvalidEvent(
            errors.OVERSIZED, f"{len(raw)} bytes is over the limit of {limits.max_bytes}"
        )
    event = decode_json(raw, "auto", limits.bounds)
    if event.ts > now + limits.max_skew:
        raise InvalidEvent(
            errors.FUTURE_TIMESTAMP,
            f"ts {event.ts.isoformat()} is more than {limits.max_skew} ahead of {now.isoformat()}",
        )
    return event


def ingest_batch(records: Sequence[RawRecord], now: datetime, limits: IngestLimits) -> IngestResult:
    """Every record becomes exactly one event or one rejection; nothing raises."""
    result = IngestResult()
    for record in records:
        try:
            result.events.append(ingest_one(record, now, limits))
            result.sources.append(record)
        except InvalidEvent as exc:
            result.rejected.append(Rejection(record, exc.reason, exc.detail))
        except Exception as exc:  # a bug of ours must not stop the worker or lose the record
            result.rejected.append(
                Rejection(record, errors.PROCESSING_ERROR, f"{type(exc).__name__}: {exc}")
            )
    return result
