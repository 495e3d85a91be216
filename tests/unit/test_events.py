"""The canonical event model: validation, normalisation and the derived id."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from schemas.events import (
    EVENT_TYPES,
    IDENTITY_NEEDS_ANONYMOUS_ID,
    IDENTITY_NEEDS_TWO_IDS,
    PAGE_TYPES,
    Event,
    Page,
    Product,
    derive_event_id,
)

TS = "2026-11-23T10:00:00Z"
TS_UTC = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)

MINIMAL: dict[str, Any] = {"shopper_id": "s-42", "type": "product_view", "ts": TS}

FULL: dict[str, Any] = {
    "shopper_id": "s-42",
    "session_id": "sess-9",
    "type": "page_view",
    "ts": TS,
    "page": {"type": "returns", "url": "https://shop.example/returns"},
    "product": {
        "sku": "CBL-USB-C",
        "category": "electronics/cables",
        "price": 19.9,
        "variant": "2m",
    },
    "properties": {"ref": "newsletter"},
}


def make(base: dict[str, Any] | None = None, **overrides: Any) -> Event:
    return Event.model_validate({**(base if base is not None else FULL), **overrides})


def error_locs(exc: pytest.ExceptionInfo[ValidationError]) -> list[tuple[str | int, ...]]:
    return [tuple(err["loc"]) for err in exc.value.errors()]


# --- a valid event ------------------------------------------------------------------------


def test_minimal_event_is_valid_with_defaults() -> None:
    event = Event.model_validate(MINIMAL)

    assert event.shopper_id == "s-42"
    assert event.type == "product_view"
    assert event.ts == TS_UTC
    assert event.session_id is None
    assert event.page is None  # only page_view gets a default page
    assert event.product is None
    assert event.properties == {}
    assert event.source == "canonical"
    assert event.event_id is not None
    assert event.id == event.event_id


def test_contract_example_is_valid() -> None:
    event = make()

    assert event.page == Page(type="returns", url="https://shop.example/returns")
    assert event.product == Product(
        sku="CBL-USB-C", category="electronics/cables", price=19.9, variant="2m"
    )
    assert event.session_id == "sess-9"
    assert event.properties == {"ref": "newsletter"}


def test_type_and_page_literals_match_the_contract() -> None:
    assert len(EVENT_TYPES) == 26
    assert {"page_view", "purchase", "opt_out", "consent_update", "custom"} <= EVENT_TYPES
    assert {"identify", "alias"} <= EVENT_TYPES
    expected = {
        "home",
        "blog",
        "category",
        "product",
        "pricing",
        "shipping",
        "returns",
        "faq",
        "spec_sheet",
        "size_guide",
        "landing",
        "other",
    }
    assert sorted(PAGE_TYPES) == sorted(expected)


# --- derived event id ---------------------------------------------------------------------


def test_derived_event_id_is_the_documented_content_hash() -> None:
    event = make()
    content = {
        "shopper_id": "s-42",
        "session_id": "sess-9",
        "type": "page_view",
        "ts": "2026-11-23T10:00:00Z",
        "page": {"type": "returns", "url": "https://shop.example/returns"},
        "product": {
            "sku": "CBL-USB-C",
            "category": "electronics/cables",
            "price": 19.9,
            "variant": "2m",
        },
        "properties": {"ref": "newsletter"},
    }
    expected = hashlib.blake2b(
        json.dumps(content, sort_keys=True, separators=(",", ":")).encode(), digest_size=16
    ).hexdigest()

    assert event.event_id == expected
    assert len(expected) == 32
    assert derive_event_id(event) == expected


def test_derived_event_id_is_deterministic() -> None:
    first = make()
    second = make()

    assert first is not second
    assert first.event_id == second.event_id


def test_derived_event_id_ignores_key_order_of_properties() -> None:
    one = make(properties={"a": 1, "b": 2})
    two = make(properties={"b": 2, "a": 1})

    assert one.event_id == two.event_id


def test_derived_event_id_is_the_same_for_the_same_instant_in_another_zone() -> None:
    utc = make(ts="2026-11-23T10:00:00Z")
    paris = make(ts="2026-11-23T11:00:00+01:00")
    naive = make(ts=datetime(2026, 11, 23, 10, 0))

    assert utc.event_id == paris.event_id == naive.event_id


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("shopper_id", "s-43"),
        ("session_id", "sess-10"),
        ("session_id", None),
        ("type", "product_view"),
        ("ts", "2026-11-23T10:00:01Z"),
        ("ts", "2026-11-23T10:00:00.000001Z"),
        ("page", {"type": "shipping", "url": "https://shop.example/returns"}),
        ("page", {"type": "returns", "url": "https://shop.example/returns?x=1"}),
        ("product", {"sku": "CBL-USB-C", "category": "electronics/cables", "price": 19.8}),
        ("product", {"sku": "OTHER", "category": "electronics/cables", "price": 19.9}),
        ("product", None),
        ("properties", {"ref": "ads"}),
        ("properties", {}),
    ],
)
def test_derived_event_id_changes_with_any_content_field(field: str, value: Any) -> None:
    base = make()
    changed = make(**{field: value})

    assert getattr(changed, field) != getattr(base, field)
    assert changed.event_id != base.event_id


@pytest.mark.parametrize("source", ["segment", "ga4", "rees46", "taobao", "otto"])
def test_derived_event_id_ignores_source(source: str) -> None:
    canonical = make()
    other = make(source=source)

    assert other.source == source
    assert other.event_id == canonical.event_id


@pytest.mark.parametrize("identified", [True, False])
def test_derived_event_id_ignores_identified(identified: bool) -> None:
    plain = make()
    told = make(identified=identified)

    assert (plain.identified, told.identified) == (None, identified)
    assert told.event_id == plain.event_id == derive_event_id(told)


def test_derived_event_id_keeps_the_anonymous_id() -> None:
    one = make(MINIMAL, type="identify", anonymous_id="anon-1")
    two = make(MINIMAL, type="identify", anonymous_id="anon-2")
    beside = make(anonymous_id="anon-1")

    assert one.event_id != two.event_id
    assert beside.event_id != make().event_id


@pytest.mark.parametrize(("given", "kept"), [("evt-1", "evt-1"), ("  evt-2 \n", "evt-2"), (7, "7")])
def test_explicit_event_id_is_kept(given: Any, kept: str) -> None:
    event = make(event_id=given)

    assert event.event_id == kept
    assert event.id == kept
    assert event.event_id != derive_event_id(event)


# --- timestamps ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ts",
    [
        datetime(2026, 11, 23, 10, 0),
        "2026-11-23T10:00:00",
        "2026-11-23 10:00:00",
    ],
)
def test_naive_timestamp_is_taken_as_utc(ts: Any) -> None:
    event = make(MINIMAL, ts=ts)

    assert event.ts == TS_UTC
    assert event.ts.tzinfo is UTC
    assert event.ts.hour == 10


@pytest.mark.parametrize(
    "ts",
    [
        datetime(2026, 11, 23, 5, 0, tzinfo=timezone(timedelta(hours=-5))),
        datetime(2026, 11, 23, 19, 30, tzinfo=timezone(timedelta(hours=9, minutes=30))),
        "2026-11-23T11:00:00+01:00",
        "2026-11-23T10:00:00Z",
        "2026-11-23T10:00:00+00:00",
    ],
)
def test_aware_timestamp_is_converted_to_utc(ts: Any) -> None:
    event = make(MINIMAL, ts=ts)

    assert event.ts.tzinfo is UTC
    assert event.ts.utcoffset() == timedelta(0)
    assert (event.ts.year, event.ts.month, event.ts.day) == (2026, 11, 23)
    assert (event.ts.hour, event.ts.minute) == (10, 0)


def test_unix_seconds_timestamp_is_utc() -> None:
    event = make(MINIMAL, ts=int(TS_UTC.timestamp()))

    assert event.ts == TS_UTC
    assert event.ts.tzinfo is UTC


# --- defaults and coercions ---------------------------------------------------------------


def test_page_view_without_page_gets_page_type_other() -> None:
    event = make(MINIMAL, type="page_view")

    assert event.page == Page(type="other", url=None)
    assert event.page is not None
    assert event.page.type == "other"


def test_page_view_with_page_keeps_it() -> None:
    event = make(MINIMAL, type="page_view", page={"type": "blog", "url": "/blog/x"})

    assert event.page == Page(type="blog", url="/blog/x")


def test_page_given_without_type_is_other() -> None:
    event = make(MINIMAL, type="page_view", page={"url": "/anything"})

    assert event.page == Page(type="other", url="/anything")


@pytest.mark.parametrize(("given", "expected"), [(42, "42"), (0, "0"), ("  s-1  ", "s-1")])
def test_numeric_and_padded_shopper_ids_become_clean_strings(given: Any, expected: str) -> None:
    event = make(MINIMAL, shopper_id=given, session_id=given)

    assert event.shopper_id == expected
    assert event.session_id == expected


def test_numeric_sku_becomes_a_string() -> None:
    event = make(MINIMAL, product={"sku": 355908, "brand": 7, "price": "1.5"})

    assert event.product == Product(sku="355908", brand="7", price=1.5)


def test_blank_product_text_fields_become_none() -> None:
    event = make(MINIMAL, product={"sku": "x", "category": " ", "brand": "", "name": "Cable"})

    assert event.product == Product(sku="x", category=None, brand=None, name="Cable")


# --- rejections ---------------------------------------------------------------------------


@pytest.mark.parametrize("shopper_id", ["", " ", "   ", "\t\n"])
def test_empty_or_whitespace_shopper_id_is_rejected(shopper_id: str) -> None:
    with pytest.raises(ValidationError) as exc:
        make(MINIMAL, shopper_id=shopper_id)

    assert error_locs(exc) == [("shopper_id",)]


@pytest.mark.parametrize("shopper_id", [True, None, 1.5, ["s-1"]])
def test_non_id_shopper_values_are_rejected(shopper_id: Any) -> None:
    with pytest.raises(ValidationError) as exc:
        make(MINIMAL, shopper_id=shopper_id)

    assert error_locs(exc) == [("shopper_id",)]


def test_shopper_id_length_limit() -> None:
    assert make(MINIMAL, shopper_id="s" * 256).shopper_id == "s" * 256
    with pytest.raises(ValidationError) as exc:
        make(MINIMAL, shopper_id="s" * 257)

    assert error_locs(exc) == [("shopper_id",)]


def test_missing_shopper_id_and_ts_are_rejected() -> None:
    with pytest.raises(ValidationError) as exc:
        Event.model_validate({"type": "page_view"})

    assert sorted(error_locs(exc)) == [("shopper_id",), ("ts",)]


@pytest.mark.parametrize("page_type", ["moon", "Returns", "size guide", ""])
def test_unknown_page_type_is_rejected(page_type: str) -> None:
    with pytest.raises(ValidationError) as exc:
        make(MINIMAL, type="page_view", page={"type": page_type})

    assert error_locs(exc) == [("page", "type")]


@pytest.mark.parametrize("kind", ["teleport", "Page View", "pageview", ""])
def test_unknown_event_type_is_rejected(kind: str) -> None:
    with pytest.raises(ValidationError) as exc:
        make(MINIMAL, type=kind)

    assert error_locs(exc) == [("type",)]


@pytest.mark.parametrize("price", [-0.01, -1, -19.9])
def test_negative_price_is_rejected(price: float) -> None:
    with pytest.raises(ValidationError) as exc:
        make(MINIMAL, product={"sku": "x", "price": price})

    assert error_locs(exc) == [("product", "price")]


def test_zero_price_is_accepted() -> None:
    event = make(MINIMAL, product={"sku": "x", "price": 0})

    assert event.product is not None
    assert event.product.price == 0.0


def test_negative_quantity_is_rejected() -> None:
    with pytest.raises(ValidationError) as exc:
        make(MINIMAL, product={"sku": "x", "quantity": -1})

    assert error_locs(exc) == [("product", "quantity")]


def test_product_without_sku_is_rejected() -> None:
    with pytest.raises(ValidationError) as exc:
        make(MINIMAL, product={"name": "Cable"})

    assert error_locs(exc) == [("product", "sku")]


@pytest.mark.parametrize("kind", ["identify", "alias"])
def test_identify_and_alias_link_the_anonymous_id_to_the_shopper(kind: str) -> None:
    event = make(MINIMAL, type=kind, anonymous_id=" anon-7 ", identified=True)

    assert (event.type, event.shopper_id, event.anonymous_id) == (kind, "s-42", "anon-7")
    assert event.identified is True


@pytest.mark.parametrize("kind", ["identify", "alias"])
@pytest.mark.parametrize(
    ("anonymous_id", "message"),
    [
        (None, IDENTITY_NEEDS_ANONYMOUS_ID),
        ("s-42", IDENTITY_NEEDS_TWO_IDS),
        ("  s-42 ", IDENTITY_NEEDS_TWO_IDS),
        (42, None),  # the number 42 is the id "42", not the shopper "s-42"
    ],
)
def test_identify_and_alias_need_an_anonymous_id_other_than_the_shopper(
    kind: str, anonymous_id: Any, message: str | None
) -> None:
    fields = {**MINIMAL, "type": kind, "anonymous_id": anonymous_id}
    if message is None:
        assert make(fields).anonymous_id == "42"
        return

    with pytest.raises(ValidationError) as exc:
        make(fields)

    [error] = exc.value.errors()
    assert (error["loc"], error["msg"]) == ((), f"Value error, {message}")


def test_identified_is_optional_and_only_a_bool() -> None:
    assert make(MINIMAL).identified is None
    assert make(MINIMAL, identified=False).identified is False
    with pytest.raises(ValidationError) as exc:
        make(MINIMAL, identified="maybe")

    assert error_locs(exc) == [("identified",)]


def test_unknown_fields_are_ignored() -> None:
    event = make(MINIMAL, colour="red", page={"type": "blog", "extra": 1})

    assert not hasattr(event, "colour")
    assert event.page == Page(type="blog")


# --- immutability and wire form -----------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"), [("shopper_id", "s-other"), ("type", "purchase"), ("event_id", "x")]
)
def test_event_is_frozen(field: str, value: Any) -> None:
    event = make()
    before = getattr(event, field)

    with pytest.raises(ValidationError) as exc:
        setattr(event, field, value)

    assert exc.value.errors()[0]["type"] == "frozen_instance"
    assert getattr(event, field) == before


def test_page_and_product_are_frozen() -> None:
    event = make()
    assert event.page is not None
    assert event.product is not None

    with pytest.raises(ValidationError):
        event.page.type = "blog"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        event.product.price = 1.0  # type: ignore[misc]

    assert event.page.type == "returns"
    assert event.product.price == 19.9


def test_events_compare_by_value() -> None:
    assert make() == make()
    assert make() != make(shopper_id="s-other")


@pytest.mark.parametrize(
    "fields",
    [
        MINIMAL,
        FULL,
        {**MINIMAL, "type": "page_view"},
        {**FULL, "event_id": "evt-1", "source": "segment"},
        {**MINIMAL, "type": "search", "properties": {"query": "cable", "n": 3, "x": None}},
        {**MINIMAL, "ts": "2026-11-23T10:00:00.123456+05:30"},
        {**MINIMAL, "type": "alias", "anonymous_id": "s-41", "identified": True},
    ],
    ids=["minimal", "full", "page-view-default", "explicit-id", "properties", "micros-zone",
         "alias"],
)  # fmt: skip
def test_to_json_round_trips(fields: dict[str, Any]) -> None:
    event = Event.model_validate(fields)

    wire = event.to_json()
    again = Event.model_validate_json(wire)

    assert isinstance(wire, bytes)
    assert again == event
    assert again.event_id == event.event_id
    assert again.to_json() == wire


def test_to_json_leaves_out_none_and_writes_utc() -> None:
    event = make(MINIMAL)

    data = json.loads(event.to_json())

    assert data == {
        "event_id": event.event_id,
        "shopper_id": "s-42",
        "type": "product_view",
        "ts": "2026-11-23T10:00:00Z",
        "properties": {},
        "source": "canonical",
    }
