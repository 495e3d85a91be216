"""Ingest core: raw Kafka records in, canonical events and rejections out. Pure, batched.

This is the one place where input bytes are decoded. The agent hands it a batch of raw
records with their coordinates; it returns the valid events and, for everything else, a
`Rejection` that carries the original bytes, the reason and where the record came from.
No record is dropped: len(events) + len(rejections) == len(records), always.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Final, NamedTuple

from schemas import errors
from schemas.adapters import decode_json
from schemas.errors import InvalidEvent
from schemas.events import Event

if TYPE_CHECKING:
    from stream.settings import Settings

PREVIEW_CHARS: Final = 200  # how much of a rejected payload is shown as text in the dead letter


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


def ingest_limits(settings: Settings) -> IngestLimits:
    """The limits the worker applies (INTENT_MAX_EVENT_BYTES, INTENT_MAX_CLOCK_SKEW_SECONDS)."""
    return IngestLimits(
        max_bytes=settings.max_event_bytes,
        max_skew=timedelta(seconds=settings.max_clock_skew_seconds),
    )


@dataclass(frozen=True, slots=True)
class Rejection:
    record: RawRecord
    reason: str
    detail: str

    def dead_letter(self, rejected_at: datetime) -> bytes:
        """The dead-letter value: the original bytes (base64) plus reason and source."""
        raw = self.record.value or b""
        return json.dumps(
            {
                "reason": self.reason,
                "detail": self.detail,
                "source": {
                    "topic": self.record.topic,
                    "partition": self.record.partition,
                    "offset": self.record.offset,
                },
                "key": _text(self.record.key),
                "value_b64": base64.b64encode(raw).decode(),
                "value_preview": raw[:PREVIEW_CHARS].decode("utf-8", errors="replace"),
                "size_bytes": len(raw),
                "rejected_at": rejected_at.isoformat(),
            },
            separators=(",", ":"),
        ).encode()


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
    event = decode_json(raw)
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
