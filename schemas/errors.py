"""Why an input was rejected.

`InvalidEvent.reason` is a short machine-readable token; it becomes the dead-letter
record's `reason` and the `reason` label of `intent_events_rejected_total`, so the set
of reasons is small and stable. `detail` is for humans.
"""

from __future__ import annotations

from typing import Final

# Stable reason tokens (dead-letter `reason`, metric label).
OVERSIZED: Final = "oversized"
EMPTY: Final = "empty"
MALFORMED_JSON: Final = "malformed_json"
NOT_AN_OBJECT: Final = "not_an_object"
MISSING_SHOPPER_ID: Final = "missing_shopper_id"
MISSING_TIMESTAMP: Final = "missing_timestamp"
INVALID_EVENT: Final = "invalid_event"
UNSUPPORTED_EVENT_TYPE: Final = "unsupported_event_type"
FUTURE_TIMESTAMP: Final = "future_timestamp"
# past a bound of ingest: a number, string, list, nesting depth, quantity, price or time
OUT_OF_BOUNDS: Final = "out_of_bounds"
MALFORMED_LINE: Final = "malformed_line"
PROCESSING_ERROR: Final = "processing_error"  # a bug of ours, still never silent
LATE: Final = "late"  # older than the allowed lateness (from the detect stage)

REASONS: Final = (
    OVERSIZED,
    EMPTY,
    MALFORMED_JSON,
    NOT_AN_OBJECT,
    MISSING_SHOPPER_ID,
    MISSING_TIMESTAMP,
    INVALID_EVENT,
    UNSUPPORTED_EVENT_TYPE,
    FUTURE_TIMESTAMP,
    OUT_OF_BOUNDS,
    MALFORMED_LINE,
    PROCESSING_ERROR,
    LATE,
)


class InvalidEvent(ValueError):
    """An input that cannot become a canonical event. Never fatal: it is dead-lettered."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
