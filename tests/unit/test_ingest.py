"""`stream.core.ingest`: a batch of raw records in, events and rejections out, nothing lost."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas import errors
from schemas.adapters import decode_json
from schemas.events import Event
from stream.core import ingest
from stream.core.ingest import PREVIEW_CHARS, IngestLimits, RawRecord, Rejection, ingest_batch

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
LIMITS = IngestLimits()
TOPIC = "clickstream.events"


def canonical(ts: datetime = NOW, **extra: Any) -> bytes:
    body = {"shopper_id": "s-42", "type": "product_view", "ts": ts.isoformat(), **extra}
    return json.dumps(body).encode()


def record(value: bytes | None, offset: int, key: bytes | None = b"s-42") -> RawRecord:
    return RawRecord(value=value, key=key, topic=TOPIC, partition=3, offset=offset)


def padded(size: int) -> bytes:
    """A valid canonical event padded with trailing spaces to exactly `size` bytes."""
    raw = canonical()
    assert len(raw) <= size
    return raw + b" " * (size - len(raw))


def test_default_limits() -> None:
    assert LIMITS.max_bytes == 64 * 1024
    assert LIMITS.max_skew == timedelta(minutes=5)


def test_mixed_batch() -> None:
    skew = LIMITS.max_skew
    records = [
        record(canonical(), 0),  # valid
        record(padded(LIMITS.max_bytes + 1), 1),  # oversized
        record(b"", 2),  # empty
        record(None, 3, key=None),  # tombstone
        record(canonical(NOW + skew + timedelta(seconds=1)), 4),  # too far ahead
        record(canonical(NOW + skew - timedelta(seconds=1)), 5),  # just inside: valid
        record(b'{"shopper_id": "s-42", "type": ', 6),  # malformed JSON
        record(padded(LIMITS.max_bytes), 7),  # exactly at the limit: valid
        record(canonical(NOW + skew), 8),  # exactly at the skew: valid
        record(b"   \n", 9),  # whitespace only
        record(canonical(NOW - timedelta(days=400)), 10),  # old events are fine
        record(json.dumps({"type": "product_view", "ts": NOW.isoformat()}).encode(), 11),
        record(canonical(type="teleport"), 12),
    ]

    result = ingest_batch(records, NOW, LIMITS)

    assert len(result.events) + len(result.rejected) == len(records)
    assert len(result.events) == 5
    assert [e.ts for e in result.events] == [
        NOW,
        NOW + skew - timedelta(seconds=1),
        NOW,
        NOW + skew,
        NOW - timedelta(days=400),
    ]
    assert [(r.record.offset, r.reason) for r in result.rejected] == [
        (1, errors.OVERSIZED),
        (2, errors.EMPTY),
        (3, errors.EMPTY),
        (4, errors.FUTURE_TIMESTAMP),
        (6, errors.MALFORMED_JSON),
        (9, errors.EMPTY),
        (11, errors.MISSING_SHOPPER_ID),
        (12, errors.UNSUPPORTED_EVENT_TYPE),
    ]
    by_offset = {r.record.offset: r for r in result.rejected}
    assert by_offset[1].detail == f"{LIMITS.max_bytes + 1} bytes is over the limit of 65536"
    assert by_offset[3].detail == "the record has no value"
    assert by_offset[4].detail == (
        "ts 2026-11-23T10:05:01+00:00 is more than 0:05:00 ahead of 2026-11-23T10:00:00+00:00"
    )
    for rejection in result.rejected:
        assert rejection.record is records[rejection.record.offset]


def test_custom_events_pass_and_only_a_custom_event_without_a_name_is_rejected() -> None:
    segment = {"type": "track", "event": "Quiz Completed", "userId": "s-42",
               "timestamp": NOW.isoformat()}  # fmt: skip
    ga4 = {"event_name": "quiz_complete", "client_id": "s-42",
           "timestamp_micros": int(NOW.timestamp()) * 1_000_000}  # fmt: skip
    records = [
        record(json.dumps(segment).encode(), 0),
        record(json.dumps(ga4).encode(), 1),
        record(canonical(type="custom", name="Quiz Completed"), 2),
        record(canonical(type="custom"), 3),
        record(json.dumps({**segment, "event": "Pop-up Email Accepted"}).encode(), 4),
    ]

    result = ingest_batch(records, NOW, LIMITS)

    assert [(e.type, e.name) for e in result.events] == [
        ("custom", "Quiz Completed"),
        ("custom", "quiz_complete"),
        ("custom", "Quiz Completed"),
        ("signup", "Pop-up Email Accepted"),
    ]
    [rejected] = result.rejected
    assert (rejected.record.offset, rejected.reason) == (3, errors.INVALID_EVENT)
    assert "a custom event needs a name" in rejected.detail


def test_empty_batch() -> None:
    result = ingest_batch([], NOW, LIMITS)

    assert result.events == []
    assert result.rejected == []


def test_custom_limits() -> None:
    limits = IngestLimits(max_bytes=100, max_skew=timedelta(0))
    records = [
        record(canonical(), 0),
        record(canonical(NOW + timedelta(microseconds=1)), 1),
        record(padded(101), 2),
    ]

    result = ingest_batch(records, NOW, limits)

    assert [e.ts for e in result.events] == [NOW]
    assert [(r.record.offset, r.reason) for r in result.rejected] == [
        (1, errors.FUTURE_TIMESTAMP),
        (2, errors.OVERSIZED),
    ]


def test_future_check_compares_instants_across_zones() -> None:
    ahead = "2026-11-23T11:04:00+01:00"  # 10:04 UTC: inside the skew
    too_far = "2026-11-23T11:06:00+01:00"  # 10:06 UTC: outside
    records = [
        record(json.dumps({"shopper_id": "s", "type": "signup", "ts": ts}).encode(), n)
        for n, ts in enumerate((ahead, too_far))
    ]

    result = ingest_batch(records, NOW, LIMITS)

    assert [e.ts for e in result.events] == [datetime(2026, 11, 23, 10, 4, tzinfo=UTC)]
    assert [r.reason for r in result.rejected] == [errors.FUTURE_TIMESTAMP]


def test_valid_records_in_all_three_shapes() -> None:
    micros = int(NOW.timestamp()) * 1_000_000
    values = [
        canonical(),
        json.dumps(
            {"type": "track", "event": "Product Viewed", "userId": "u", "messageId": "m-1",
             "timestamp": "2026-11-23T10:00:00Z", "properties": {"product_id": "P"}}
        ).encode(),
        json.dumps(
            {"event_name": "view_item", "user_pseudo_id": "p", "event_timestamp": str(micros)}
        ).encode(),
    ]  # fmt: skip

    result = ingest_batch([record(v, n) for n, v in enumerate(values)], NOW, LIMITS)

    assert result.rejected == []
    assert [e.source for e in result.events] == ["canonical", "segment", "ga4"]
    assert all(isinstance(e, Event) for e in result.events)


def test_dead_letter_holds_everything_needed_to_replay() -> None:
    original = b'{"shopper_id": "s-42", "type": \xff'
    rejected_at = datetime(2026, 11, 23, 10, 0, 1, tzinfo=UTC)
    [rejection] = ingest_batch([record(original, 1234, key=b"s-42")], NOW, LIMITS).rejected

    letter = json.loads(rejection.dead_letter(rejected_at))

    assert letter["reason"] == errors.MALFORMED_JSON
    assert letter["detail"] == rejection.detail
    assert letter["detail"] != ""
    assert letter["source"] == {"topic": TOPIC, "partition": 3, "offset": 1234}
    assert letter["key"] == "s-42"
    assert base64.b64decode(letter["value_b64"]) == original
    assert letter["value_preview"] == original.decode("utf-8", errors="replace")
    assert letter["size_bytes"] == len(original)
    assert letter["sha256"] == hashlib.sha256(original).hexdigest()
    assert letter["truncated"] is False
    assert letter["rejected_at"] == "2026-11-23T10:00:01+00:00"
    assert set(letter) == {
        "reason",
        "detail",
        "source",
        "key",
        "value_b64",
        "value_preview",
        "size_bytes",
        "sha256",
        "truncated",
        "rejected_at",
    }


def test_dead_letter_of_an_oversized_record_keeps_all_bytes_and_a_short_preview() -> None:
    original = padded(LIMITS.max_bytes + 10)
    [rejection] = ingest_batch([record(original, 5)], NOW, LIMITS).rejected

    letter = json.loads(rejection.dead_letter(NOW))

    assert letter["reason"] == errors.OVERSIZED
    assert base64.b64decode(letter["value_b64"]) == original
    assert letter["size_bytes"] == LIMITS.max_bytes + 10
    assert letter["value_preview"] == original[:PREVIEW_CHARS].decode()
    assert len(letter["value_preview"]) == PREVIEW_CHARS


def test_dead_letter_without_key_or_value() -> None:
    [rejection] = ingest_batch([record(None, 0, key=None)], NOW, LIMITS).rejected

    letter = json.loads(rejection.dead_letter(NOW))

    assert letter["key"] is None
    assert letter["value_b64"] == ""
    assert letter["value_preview"] == ""
    assert letter["size_bytes"] == 0
    assert letter["reason"] == errors.EMPTY


def test_dead_letter_key_that_is_not_utf8_is_replaced_not_fatal() -> None:
    rejection = Rejection(record(b"x", 0, key=b"s-\xff"), errors.MALFORMED_JSON, "d")

    letter = json.loads(rejection.dead_letter(NOW))

    assert letter["key"] == "s-\ufffd"


def test_unexpected_exception_becomes_processing_error(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes | str] = []

    def explode(raw: bytes | str, fmt: str = "auto", bounds: object = None) -> Event:
        calls.append(raw)
        raise RuntimeError("adapter bug")

    monkeypatch.setattr(ingest, "decode_json", explode)
    records = [record(canonical(), 0), record(b"", 1), record(canonical(), 2)]

    result = ingest_batch(records, NOW, LIMITS)

    assert result.events == []
    assert [(r.record.offset, r.reason, r.detail) for r in result.rejected] == [
        (0, errors.PROCESSING_ERROR, "RuntimeError: adapter bug"),
        (1, errors.EMPTY, "the record has no value"),
        (2, errors.PROCESSING_ERROR, "RuntimeError: adapter bug"),
    ]
    assert calls == [canonical(), canonical()]
    letter = json.loads(result.rejected[0].dead_letter(NOW))
    assert letter["reason"] == "processing_error"
    assert base64.b64decode(letter["value_b64"]) == canonical()
    assert errors.PROCESSING_ERROR in errors.REASONS


def test_processing_error_does_not_stop_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    def flaky(raw: bytes | str, fmt: str = "auto", bounds: object = None) -> Event:
        if b"boom" in (raw if isinstance(raw, bytes) else raw.encode()):
            raise KeyError("boom")
        return decode_json(raw)

    monkeypatch.setattr(ingest, "decode_json", flaky)
    records = [record(canonical(), 0), record(canonical(note="boom"), 1), record(canonical(), 2)]

    result = ingest_batch(records, NOW, LIMITS)

    assert [e.ts for e in result.events] == [NOW, NOW]
    assert [(r.record.offset, r.reason, r.detail) for r in result.rejected] == [
        (1, errors.PROCESSING_ERROR, "KeyError: 'boom'")
    ]


@pytest.mark.parametrize("size", [4096, 70_000, 1_500_000])
@pytest.mark.parametrize("max_bytes", [4096, 100_000, 1_000_000])
def test_a_dead_letter_always_fits_and_says_what_it_left_out(size: int, max_bytes: int) -> None:
    original = bytes(range(256)) * (size // 256)
    key = b"k" * 5000  # a key that would not fit either
    rejection = Rejection(record(original, 7, key=key), errors.OVERSIZED, "x" * 10_000)

    value = rejection.dead_letter(NOW, max_bytes)
    letter = json.loads(value)

    assert len(value) <= max_bytes
    carried = base64.b64decode(letter["value_b64"])
    assert original.startswith(carried)
    assert letter["truncated"] is (carried != original)
    assert letter["truncated"] is (len(base64.b64encode(original)) > max_bytes)
    assert letter["size_bytes"] == len(original)
    assert letter["sha256"] == hashlib.sha256(original).hexdigest()
    if letter["truncated"]:  # as much as fits, not a token prefix
        assert len(value) > max_bytes - 8
    assert rejection.key() == hashlib.sha256(key).hexdigest().encode()
    assert len(letter["key"]) == 1024


def test_a_short_key_stays_the_dead_letters_key() -> None:
    assert Rejection(record(b"x", 0, key=b"s-1"), errors.EMPTY, "").key() == b"s-1"
    assert Rejection(record(b"x", 0, key=None), errors.EMPTY, "").key() is None
