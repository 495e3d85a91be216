"""Ingest's bounds: whatever passes is safe for every later stage; the rest is
`out_of_bounds`, with a detail that names what was past which bound."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from schemas import errors
from schemas.adapters import decode_json
from schemas.bounds import DEFAULT_BOUNDS, Bounds
from schemas.errors import InvalidEvent
from stream.core.ingest import RawRecord, ingest_batch, ingest_limits
from stream.offline.files import LineError, read_events
from stream.offline.replay import replay
from stream.rulesfile import load_ruleset
from stream.settings import Settings

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def event(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "shopper_id": "s-1",
        "type": "add_to_cart",
        "ts": "2026-12-05T11:00:00Z",
        "product": {"sku": "p-1", "price": 10.0, "quantity": 1, "name": "mug"},
    }
    base.update(changes)
    return base


def rejected_why(raw: bytes | str, bounds: Bounds = DEFAULT_BOUNDS) -> str:
    with pytest.raises(InvalidEvent) as caught:
        decode_json(raw, "auto", bounds)
    assert caught.value.reason == errors.OUT_OF_BOUNDS, caught.value
    return caught.value.detail


def test_a_400_digit_quantity_is_out_of_bounds_not_an_overflow_later() -> None:
    raw = json.dumps(event()).replace('"quantity": 1', '"quantity": ' + "9" * 400)
    assert "beyond" in rejected_why(raw)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('"price": 10.0', '"price": NaN'),
        ('"price": 10.0', '"price": Infinity'),
        ('"price": 10.0', '"price": -Infinity'),
        ('"price": 10.0', '"price": 1e400'),
        ('"price": 10.0', '"price": 1e300'),
        ('"quantity": 1', '"quantity": 100001'),
        ('"price": 10.0', '"price": 20000000000.0'),
    ],
)
def test_numbers_past_a_bound(old: str, new: str) -> None:
    raw = json.dumps(event())
    assert old in raw
    rejected_why(raw.replace(old, new))


def test_numbers_beyond_the_interpreters_digit_limit() -> None:
    raw = json.dumps(event(properties={"n": 1})).replace('"n": 1', '"n": ' + "1" * 5000)
    rejected_why(raw)


def test_deep_nesting_long_strings_and_long_lists() -> None:
    deep: Any = "x"
    for _ in range(30):
        deep = {"a": deep}
    assert "deeper than 20" in rejected_why(json.dumps(event(properties=deep)))
    assert "deeper" in rejected_why("[" * 50_000 + "]" * 50_000)  # past Python's recursion
    assert "characters" in rejected_why(json.dumps(event(properties={"q": "x" * 9000})))
    assert "1001 items" in rejected_why(json.dumps(event(properties={"l": [1] * 1001})))
    tight = Bounds(max_depth=3)
    assert decode_json(json.dumps(event(properties={"a": {"b": 1}})), "auto", tight)
    assert "deeper than 3" in rejected_why(json.dumps(event(properties={"a": {"b": {}}})), tight)


def test_a_lone_surrogate_is_replaced_and_the_event_kept() -> None:
    raw = json.dumps(event()).replace('"mug"', '"x\\ud800y"')
    assert "\\ud800" in raw
    parsed = decode_json(raw)
    assert parsed.product is not None
    assert parsed.product.name == "x\ufffdy"
    assert b"x\xef\xbf\xbdy" in parsed.to_json()  # serialisable, which a surrogate is not
    assert decode_json(raw).id == parsed.id  # the same replacement, the same id
    pair = decode_json(json.dumps(event()).replace('"mug"', '"\\ud83d\\ude00"'))
    assert pair.product is not None and pair.product.name == "\U0001f600"


def test_a_surrogate_in_the_shopper_id_or_a_key_is_replaced_too() -> None:
    raw = json.dumps(event(shopper_id="a\ud800", properties={"k\udfff": 1}), ensure_ascii=True)
    parsed = decode_json(raw)
    assert parsed.shopper_id == "a\ufffd"
    assert parsed.properties == {"k\ufffd": 1}


def test_time_floor() -> None:
    assert "before the floor" in rejected_why(json.dumps(event(ts="1999-12-31T23:59:59Z")))
    assert decode_json(json.dumps(event(ts="2000-01-01T00:00:00Z")))
    later = Bounds(min_time=datetime(2020, 1, 1, tzinfo=UTC))
    rejected_why(json.dumps(event(ts="2019-06-01T00:00:00Z")), later)


def test_the_bounds_are_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTENT_MAX_QUANTITY", "5")
    monkeypatch.setenv("INTENT_MIN_EVENT_TIME", "2026-01-01T00:00:00Z")
    limits = ingest_limits(Settings())
    records = [
        RawRecord(json.dumps(event(product={"sku": "p", "quantity": n})).encode(), None, "t", 0, n)
        for n in (5, 6)
    ] + [RawRecord(json.dumps(event(ts="2025-12-31T00:00:00Z")).encode(), None, "t", 0, 9)]
    result = ingest_batch(records, NOW, limits)
    assert len(result.events) == 1
    assert [(r.record.offset, r.reason) for r in result.rejected] == [
        (6, errors.OUT_OF_BOUNDS),
        (9, errors.OUT_OF_BOUNDS),
    ]


def test_the_largest_event_within_bounds_is_safe_downstream() -> None:
    """A checkout of a cart at the bounds: valued, serialised, scored, no overflow."""
    top = {"sku": "p", "price": DEFAULT_BOUNDS.max_price, "quantity": DEFAULT_BOUNDS.max_quantity}
    lines = [
        event(type="add_to_cart", product=top, ts="2026-12-05T10:00:00Z"),
        event(type="checkout_started", product=top, ts="2026-12-05T10:01:00Z"),
    ]
    path = Path(__file__).parent / "_bounds_tmp.jsonl"
    try:
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
        result = replay(path, "canonical", load_ruleset(Settings()))
    finally:
        path.unlink(missing_ok=True)
    assert result.failed == 0
    assert result.events == 2


def test_replay_reads_past_a_line_out_of_bounds(tmp_path: Path) -> None:
    """The line that made replay abort with an OverflowError is a line error now."""
    bad = json.dumps(event(type="checkout_started")).replace(
        '"quantity": 1', '"quantity": ' + "9" * 400
    )
    good = [
        event(type="add_to_cart", ts="2026-12-05T10:00:00Z"),
        event(type="checkout_started", ts="2026-12-05T10:01:00Z"),
    ]
    path = tmp_path / "events.jsonl"
    path.write_text(bad + "\n" + "".join(json.dumps(line) + "\n" for line in good))
    items = list(read_events(path, "canonical"))
    assert isinstance(items[0], LineError) and items[0].reason == errors.OUT_OF_BOUNDS
    result = replay(path, "canonical", load_ruleset(Settings()))
    assert result.line_errors == {errors.OUT_OF_BOUNDS: 1}
    assert result.events == 2


def test_a_csv_row_is_bounded_too(tmp_path: Path) -> None:
    path = tmp_path / "taobao.csv"
    old = int((datetime(1999, 1, 1, tzinfo=UTC)).timestamp())
    new = int((NOW - timedelta(days=1)).timestamp())
    path.write_text(f"1,2,3,pv,{old}\n1,2,3,pv,{new}\n")
    items = list(read_events(path, "taobao"))
    assert isinstance(items[0], LineError) and items[0].reason == errors.OUT_OF_BOUNDS
    assert not isinstance(items[1], LineError)


@pytest.mark.parametrize(
    "body",
    [
        {"shopper_id": "s", "type": [], "ts": "2026-12-05T11:00:00Z"},
        {"shopper_id": "s", "type": {}, "ts": "2026-12-05T11:00:00Z"},
        {"type": "track", "event": "Product Viewed", "userId": "u", "properties": "n/a",
         "timestamp": "2026-12-05T11:00:00Z"},
        {"type": "track", "event": "Product Viewed", "userId": "u", "context": [1],
         "timestamp": "2026-12-05T11:00:00Z"},
        {"type": "page", "userId": "u", "context": {"page": 7},
         "timestamp": "2026-12-05T11:00:00Z"},
    ],
)  # fmt: skip
def test_shapes_of_the_wrong_type_are_invalid_events_not_errors_of_ours(
    body: dict[str, Any],
) -> None:
    """Found by the fuzz tests: each raised TypeError or AttributeError in an adapter."""
    with pytest.raises(InvalidEvent) as caught:
        decode_json(json.dumps(body))
    assert caught.value.reason in {errors.INVALID_EVENT, errors.UNSUPPORTED_EVENT_TYPE}


@pytest.mark.parametrize("url", ["https://[shop/returns", 7, ["/returns"], None])
def test_a_page_url_that_does_not_split_or_is_no_text(url: Any) -> None:
    """Found by the fuzz tests: urlsplit raises ValueError on an unclosed "["."""
    body = {
        "event_name": "page_view",
        "user_pseudo_id": "u",
        "event_timestamp": "1796459897416910",
        "event_params": [{"key": "page_location", "value": {"string_value": url}}],
    }
    try:
        event = decode_json(json.dumps(body))
    except InvalidEvent as exc:  # a URL that is no text is an invalid page
        assert exc.reason == errors.INVALID_EVENT
    else:
        assert event.page is not None


def test_intent_replay_takes_the_bounds_from_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from stream.cli import main

    lines = [
        event(ts="2026-12-05T10:00:00Z"),
        event(ts="2026-12-05T10:01:00Z", product={"sku": "p", "quantity": 3}),
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    monkeypatch.setenv("INTENT_MAX_QUANTITY", "2")
    done = CliRunner().invoke(main, ["replay", str(path), "--format", "canonical"])
    assert done.exit_code == 0, done.output
    assert "1 unreadable line (out_of_bounds: 1)" in done.output
    assert "product.quantity 3 is over 2" in done.output
