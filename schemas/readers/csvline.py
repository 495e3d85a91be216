"""Split one CSV line into exactly the expected number of fields."""

from __future__ import annotations

import csv
from datetime import UTC, datetime

from schemas import errors
from schemas.errors import InvalidEvent


def fields(line: str, expected: int, fmt: str) -> list[str]:
    try:
        row = next(csv.reader([line.rstrip("\r\n")]))
    except (csv.Error, StopIteration) as exc:
        raise InvalidEvent(errors.MALFORMED_LINE, f"{fmt}: not a CSV line ({exc})") from exc
    if len(row) != expected:
        raise InvalidEvent(
            errors.MALFORMED_LINE,
            f"{fmt}: expected {expected} fields, got {len(row)} (truncated line?)",
        )
    return row


def epoch(value: str, fmt: str, *, scale: int = 1) -> datetime:
    """Unix time (in seconds, or milliseconds with scale=1000) to an aware datetime."""
    try:
        return datetime.fromtimestamp(int(value) / scale, tz=UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise InvalidEvent(errors.MALFORMED_LINE, f"{fmt}: bad timestamp {value!r}") from exc
