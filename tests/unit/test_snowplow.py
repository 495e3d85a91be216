"""Snowplow enriched events, TSV and the analytics SDKs' JSON (`--format snowplow`).

The fixture lines in tests/unit/data come from Snowplow's own repositories (each file's
header names where); the ecommerce events are the SDKs' page-view fixture with its event
and entities swapped for the ecommerce plugin's, as iglu-central's schemas define them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from schemas import errors
from schemas.adapters import decode_json, detect
from schemas.adapters.snowplow_record import ENRICHED_FIELDS, from_tsv
from schemas.bounds import DEFAULT_BOUNDS, Bounds
from schemas.errors import InvalidEvent
from schemas.events import Event, Page, Product
from schemas.readers import FORMATS
from stream.core.ingest import IngestLimits, RawRecord, ingest_one
from stream.offline.files import LineError, guess_formats, read_events

DATA = Path(__file__).parent / "data"


def fixture_lines(name: str) -> list[str]:
    """The records of a data file, its `#` comment lines left out."""
    text = (DATA / name).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line and not line.startswith("#")]


PAGE_VIEW_TSV, IOS_TSV, TRANSACTION_TSV, ITEM_TSV, STRUCT_TSV = fixture_lines(
    "snowplow_enriched.tsv"
)
PYTHON_SDK_JSON, SCALA_SDK_JSON = (json.loads(line) for line in fixture_lines("snowplow_sdk.jsonl"))

CONTEXTS = "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0"
UNSTRUCT = "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0"
ACTION = "iglu:com.snowplowanalytics.snowplow.ecommerce/snowplow_ecommerce_action/jsonschema/1-0-2"
PRODUCT = "iglu:com.snowplowanalytics.snowplow.ecommerce/product/jsonschema/1-0-0"
TRANSACTION = "iglu:com.snowplowanalytics.snowplow.ecommerce/transaction/jsonschema/1-0-0"
CART = "iglu:com.snowplowanalytics.snowplow.ecommerce/cart/jsonschema/1-0-0"
CHECKOUT_STEP = "iglu:com.snowplowanalytics.snowplow.ecommerce/checkout_step/jsonschema/1-0-0"
ECOMMERCE_PAGE = "iglu:com.snowplowanalytics.snowplow.ecommerce/page/jsonschema/1-0-0"
# The analytics SDKs' JSON column of each schema
COLUMNS = {
    ACTION: "unstruct_event_com_snowplowanalytics_snowplow_ecommerce_snowplow_ecommerce_action_1",
    PRODUCT: "contexts_com_snowplowanalytics_snowplow_ecommerce_product_1",
    TRANSACTION: "contexts_com_snowplowanalytics_snowplow_ecommerce_transaction_1",
    CART: "contexts_com_snowplowanalytics_snowplow_ecommerce_cart_1",
    CHECKOUT_STEP: "contexts_com_snowplowanalytics_snowplow_ecommerce_checkout_step_1",
}

CABLE = {
    "id": "CBL-USB-C",
    "name": "USB-C cable 2m",
    "category": "electronics/cables",
    "price": 19.9,
    "currency": "EUR",
    "quantity": 1,
    "variant": "2m",
    "brand": "Acme",
}
CHARGER = {"id": "CHG-65W", "category": "electronics/chargers", "price": 39.0, "currency": "EUR"}
ORDER = {
    "transaction_id": "T-1001",
    "revenue": 58.9,
    "currency": "EUR",
    "payment_method": "card",
    "total_quantity": 2,
}
THE_CART = {"cart_id": "cart-7", "total_value": 19.9, "currency": "EUR"}

PAGE_VIEW = Event(
    event_id="c6ef3124-b53a-4b13-a233-0088f79dcbcb",
    shopper_id="jon.doe@email.com",
    anonymous_id="bc2e92ec6c204a14",
    identified=True,
    session_id="2b15e5c8-d3b1-11e4-b9d6-1681e6b88ec1",
    type="page_view",
    ts=datetime(2013, 11, 26, 0, 3, 57, 886000, tzinfo=UTC),
    page=Page(type="home", url="http://www.snowplowanalytics.com"),
    properties={"app_id": "angry-birds"},
    source="snowplow",
)


def read(line: str, bounds: Bounds = DEFAULT_BOUNDS) -> Event:
    [event] = FORMATS["snowplow"].read(line, bounds)
    return event


def rejected(line: str, fmt: str = "snowplow") -> InvalidEvent:
    with pytest.raises(InvalidEvent) as exc:
        FORMATS[fmt].read(line)
    return exc.value


def tsv(**changes: str) -> str:
    """The SDKs' page-view fixture line with some fields changed."""
    fields = dict(zip(ENRICHED_FIELDS, PAGE_VIEW_TSV.split("\t"), strict=True)) | changes
    return "\t".join(fields[name] for name in ENRICHED_FIELDS)


def contexts(*entities: tuple[str, dict[str, Any]]) -> str:
    return json.dumps({"schema": CONTEXTS, "data": [{"schema": s, "data": d} for s, d in entities]})


def unstruct(schema: str, data: dict[str, Any]) -> str:
    return json.dumps({"schema": UNSTRUCT, "data": {"schema": schema, "data": data}})


def ecommerce_tsv(action: dict[str, Any], *entities: tuple[str, dict[str, Any]]) -> str:
    return tsv(
        event="unstruct",
        event_vendor="com.snowplowanalytics.snowplow.ecommerce",
        event_name="snowplow_ecommerce_action",
        event_version="1-0-2",
        unstruct_event=unstruct(ACTION, action),
        contexts=contexts(*entities),
        derived_contexts="",
    )


def ecommerce_json(action: dict[str, Any], *entities: tuple[str, dict[str, Any]]) -> str:
    """The same event as the Python analytics SDK writes it."""
    obj = {
        key: value
        for key, value in PYTHON_SDK_JSON.items()
        if not key.startswith(("contexts_", "unstruct_event_"))
    }
    obj.update(event="unstruct", event_name="snowplow_ecommerce_action", event_version="1-0-2")
    obj[COLUMNS[ACTION]] = action
    for schema, data in entities:
        obj.setdefault(COLUMNS[schema], []).append(data)
    return json.dumps(obj)


SHAPES = {"tsv": ecommerce_tsv, "json": ecommerce_json}


# --- the fixture lines ---------------------------------------------------------------------


def test_the_sdks_page_view_fixture_is_a_page_view_of_its_url() -> None:
    assert read(PAGE_VIEW_TSV) == PAGE_VIEW


@pytest.mark.parametrize("obj", [PYTHON_SDK_JSON, SCALA_SDK_JSON], ids=["python", "scala"])
def test_the_sdks_json_of_the_fixture_is_the_same_event(obj: dict[str, Any]) -> None:
    assert read(json.dumps(obj)) == PAGE_VIEW
    assert decode_json(json.dumps(obj).encode()) == PAGE_VIEW  # auto-detected


def test_the_tsv_entities_are_named_as_the_python_sdk_names_them() -> None:
    record = from_tsv(PAGE_VIEW_TSV, DEFAULT_BOUNDS)
    columns = [key for key in PYTHON_SDK_JSON if key.startswith(("contexts_", "unstruct_event_"))]

    assert sorted(columns) == [
        "contexts_com_snowplowanalytics_snowplow_ua_parser_context_1",
        "contexts_org_schema_web_page_1",
        "contexts_org_w3_performance_timing_1",
        "unstruct_event_com_snowplowanalytics_snowplow_link_click_1",
    ]
    assert {key: record[key] for key in columns} == {key: PYTHON_SDK_JSON[key] for key in columns}


def test_the_dotnet_sdks_ios_record_is_a_custom_event_in_its_client_session() -> None:
    event = read(IOS_TSV)

    assert event.type == "custom" and event.name == "pageview"
    assert event.event_id == "31f2162e-ba8f-40c7-a646-818f30b8b9c0"
    assert event.shopper_id == "7FA8CC82-4E8F-40A7-B753-2355E8543025"  # user_id
    assert event.anonymous_id == "87D7E1FA-0E40-40B4-9B81-8A9912B01C82"  # domain_userid
    # a mobile tracker sets no domain_sessionid: the client_session entity's sessionId
    assert event.session_id == "a4fd0d6b-a698-49c5-aa8e-797e350d6773"
    assert event.ts == datetime(2022, 9, 13, 17, 6, 56, 936000, tzinfo=UTC)  # derived_tstamp
    assert event.page is None and event.product is None


def test_enrichs_transaction_is_one_purchase_of_the_order() -> None:
    event = read(TRANSACTION_TSV)

    assert event.type == "purchase" and event.product is None
    assert event.shopper_id == "a279872d76480afb" and event.anonymous_id is None
    assert event.ts == datetime(2013, 3, 25, 2, 3, 37, 342000, tzinfo=UTC)  # dvce_created
    assert event.properties == {
        "app_id": "CFe23a",
        "order_id": "order-123",
        "revenue": 8000.0,
        "tax": 200.0,
        "shipping": 50.0,
        "affiliation": "psychicbazaar",
        "url": "http://www.psychicbazaar.com/oracles/"
        "119-psycards-book-and-deck-starter-pack.html?view=print#detail",
    }


def test_enrichs_transaction_item_carries_the_item_and_is_no_second_purchase() -> None:
    event = read(ITEM_TSV)

    assert event.type == "custom" and event.name == "transaction_item"
    assert event.product == Product(
        sku="PBZ1001", name="Blue t-shirt", category="APPAREL", price=2000.0, quantity=2
    )
    assert event.properties["order_id"] == "order-123"


def test_an_order_and_its_item_in_a_file_are_one_purchase(tmp_path: Path) -> None:
    path = tmp_path / "order.tsv"
    path.write_text(f"{TRANSACTION_TSV}\n{ITEM_TSV}\n", encoding="utf-8")
    events = [item for item in read_events(path, "snowplow") if isinstance(item, Event)]

    assert [event.type for event in events] == ["purchase", "custom"]
    assert len({event.id for event in events}) == 2
    assert {event.properties["order_id"] for event in events} == {"order-123"}


def test_enrichs_structured_event_is_custom_named_by_its_action() -> None:
    event = read(STRUCT_TSV)

    assert event.type == "custom" and event.name == "add-to-basket"
    assert event.shopper_id == "9795bd0203804cd1"
    assert event.properties == {
        "app_id": "pbzsite",
        "se_category": "ecomm",
        "se_label": "Χαριτίνη",
        "se_property": "1",
        "se_value": 35708.23,
        "url": "http://www.psychicbazaar.com/oracles/"
        "119-psycards-book-and-deck-starter-pack.html?view=print#detail",
    }


# --- the ecommerce plugin ------------------------------------------------------------------


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize(
    ("action", "entities", "kind"),
    [
        ({"type": "product_view"}, [(PRODUCT, CABLE)], "product_view"),
        ({"type": "list_click", "name": "search"}, [(PRODUCT, CABLE)], "product_view"),
        ({"type": "add_to_cart"}, [(PRODUCT, CABLE), (CART, THE_CART)], "add_to_cart"),
        ({"type": "remove_from_cart"}, [(PRODUCT, CABLE), (CART, THE_CART)], "remove_from_cart"),
        ({"type": "checkout_step"}, [(CHECKOUT_STEP, {"step": 1}), (PRODUCT, CABLE)],
         "checkout_started"),
        ({"type": "checkout_step"}, [(CHECKOUT_STEP, {"step": 2}), (PRODUCT, CABLE)],
         "checkout_step"),
        ({"type": "transaction"}, [(TRANSACTION, ORDER), (PRODUCT, CABLE)], "purchase"),
        ({"type": "promo_click"}, [(PRODUCT, CABLE)], "ad_click"),
    ],
    ids=["product_view", "list_click", "add_to_cart", "remove_from_cart", "checkout_step_1",
         "checkout_step_2", "transaction", "promo_click"],
)  # fmt: skip
def test_each_ecommerce_action_maps_with_its_product(
    shape: str, action: dict[str, Any], entities: list[tuple[str, dict[str, Any]]], kind: str
) -> None:
    event = read(SHAPES[shape](action, *entities))

    assert event.type == kind and event.name is None
    assert event.product == Product(
        sku="CBL-USB-C",
        name="USB-C cable 2m",
        category="electronics/cables",
        price=19.9,
        quantity=1,
        variant="2m",
        brand="Acme",
    )
    assert event.properties["currency"] == "EUR"
    assert event.shopper_id == "jon.doe@email.com" and event.source == "snowplow"
    # one product is the event's own; a purchase lists its items even then
    assert ("items" in event.properties) == (kind == "purchase")


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_a_list_view_is_a_category_view_of_every_product(shape: str) -> None:
    event = read(SHAPES[shape]({"type": "list_view", "name": "cables"}, (PRODUCT, CABLE),
                               (PRODUCT, CHARGER)))  # fmt: skip

    assert event.type == "category_view"
    assert event.product is not None and event.product.sku == "CBL-USB-C"
    assert [item["id"] for item in event.properties["items"]] == ["CBL-USB-C", "CHG-65W"]
    assert event.properties["list"] == "cables"


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_a_transaction_is_a_purchase_with_the_order_and_its_items(shape: str) -> None:
    event = read(SHAPES[shape]({"type": "transaction"}, (TRANSACTION, ORDER), (PRODUCT, CABLE),
                               (PRODUCT, CHARGER)))  # fmt: skip

    assert event.type == "purchase"
    assert event.properties["order_id"] == "T-1001"
    assert event.properties["revenue"] == 58.9
    assert event.properties["payment_method"] == "card"
    assert event.properties["items"] == [CABLE, CHARGER]


def test_a_cart_change_carries_the_carts_value() -> None:
    event = read(ecommerce_tsv({"type": "add_to_cart"}, (PRODUCT, CABLE), (CART, THE_CART)))

    assert event.properties["cart_value"] == 19.9
    assert event.properties["cart_id"] == "cart-7"
    assert "items" not in event.properties  # one product: it is the event's product


@pytest.mark.parametrize("action", ["promo_view", "refund", "trns_error"])
def test_other_ecommerce_actions_are_custom_events_of_their_type(action: str) -> None:
    event = read(ecommerce_tsv({"type": action}, (PRODUCT, CABLE)))

    assert event.type == "custom" and event.name == action


def test_the_scala_sdks_nested_entities_are_read_too() -> None:
    obj = {key: value for key, value in SCALA_SDK_JSON.items() if not key.startswith("contexts_")}
    obj = {key: value for key, value in obj.items() if not key.startswith("unstruct_event_")}
    obj["event"] = "unstruct"
    obj["unstruct_event"] = json.loads(unstruct(ACTION, {"type": "add_to_cart"}))
    obj["contexts"] = json.loads(contexts((PRODUCT, CABLE)))
    obj["derived_contexts"] = {}  # what the Scala SDK writes for no entities

    event = read(json.dumps(obj))

    assert event.type == "add_to_cart" and event.product is not None
    assert event.product.sku == "CBL-USB-C"


@pytest.mark.parametrize("kind", ["add_to_cart", "remove_from_cart"])
def test_the_older_cart_events_map_with_their_product(kind: str) -> None:
    item = {"sku": "PBZ1001", "name": "Blue t-shirt", "category": "APPAREL", "unitPrice": 20,
            "quantity": 2, "currency": "GBP"}  # fmt: skip
    schema = f"iglu:com.snowplowanalytics.snowplow/{kind}/jsonschema/1-0-0"
    event = read(tsv(event="unstruct", event_name=kind, unstruct_event=unstruct(schema, item)))

    assert event.type == kind
    assert event.product == Product(
        sku="PBZ1001", name="Blue t-shirt", category="APPAREL", price=20.0, quantity=2
    )
    assert event.properties["currency"] == "GBP"


def test_a_site_search_is_a_search_of_its_terms() -> None:
    schema = "iglu:com.snowplowanalytics.snowplow/site_search/jsonschema/1-0-0"
    data = {"terms": ["usb", "cable"], "totalResults": 12}
    event = read(
        tsv(event="unstruct", event_name="site_search", unstruct_event=unstruct(schema, data))
    )

    assert event.type == "search" and event.properties["query"] == "usb cable"


# --- page views and other events -----------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "page_type"),
    [
        ("https://shop.example/returns", "returns"),
        ("https://shop.example/p/CBL-USB-C", "product"),
        ("https://shop.example/", "home"),
        ("https://shop.example/about-us", "other"),
    ],
)
def test_a_page_views_type_comes_from_its_url(url: str, page_type: str) -> None:
    event = read(tsv(page_url=url))

    assert event.page == Page(type=page_type, url=url)


def test_the_ecommerce_page_entity_names_the_page_type() -> None:
    url = "https://shop.example/usb-c-cable"
    event = read(tsv(page_url=url, contexts=contexts((ECOMMERCE_PAGE, {"type": "product"}))))

    assert event.page == Page(type="product", url=url)


def test_other_events_are_custom_events_of_their_name() -> None:
    ping = read(tsv(event="page_ping", event_name="page_ping"))
    link = read(tsv(event="unstruct"))  # the fixture's link_click

    assert (ping.type, ping.name) == ("custom", "page_ping")
    assert ping.properties["url"] == "http://www.snowplowanalytics.com" and ping.page is None
    assert (link.type, link.name) == ("custom", "link_click")


def test_an_email_capture_is_a_signup_as_from_the_other_sources() -> None:
    structured = read(tsv(event="struct", se_category="newsletter", se_action="Email Signup"))
    schema = "iglu:com.acme/newsletter_signup/jsonschema/1-0-0"
    described = read(tsv(event="unstruct", event_name="newsletter_signup",
                         unstruct_event=unstruct(schema, {"list": "weekly"})))  # fmt: skip

    assert (structured.type, structured.name) == ("signup", "Email Signup")
    assert (described.type, described.name) == ("signup", "newsletter_signup")
    assert structured.properties["channel"] == described.properties["channel"] == "email"


# --- time and identity ---------------------------------------------------------------------


def test_the_time_is_derived_else_device_created_else_collector() -> None:
    derived = read(PAGE_VIEW_TSV).ts
    created = read(tsv(derived_tstamp="")).ts
    collected = read(tsv(derived_tstamp="", dvce_created_tstamp="")).ts

    assert derived == datetime(2013, 11, 26, 0, 3, 57, 886000, tzinfo=UTC)
    assert created == datetime(2013, 11, 26, 0, 3, 57, 885000, tzinfo=UTC)
    assert collected == datetime(2013, 11, 26, 0, 2, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("changes", "shopper", "anonymous", "identified"),
    [
        ({}, "jon.doe@email.com", "bc2e92ec6c204a14", True),
        ({"user_id": ""}, "bc2e92ec6c204a14", None, None),
        ({"user_id": "", "domain_userid": ""}, "ecdff4d0-9175-40ac-a8bb-325c49733607", None, None),
        ({"domain_userid": ""}, "jon.doe@email.com", "ecdff4d0-9175-40ac-a8bb-325c49733607", True),
        ({"user_id": "bc2e92ec6c204a14"}, "bc2e92ec6c204a14", None, True),
    ],
    ids=["user-and-cookie", "cookie-only", "network-only", "user-and-network", "user-is-cookie"],
)  # fmt: skip
def test_the_shopper_is_the_known_id_and_the_anonymous_one_is_kept_beside_it(
    changes: dict[str, str], shopper: str, anonymous: str | None, identified: bool | None
) -> None:
    event = read(tsv(**changes))

    assert (event.shopper_id, event.anonymous_id) == (shopper, anonymous)
    assert event.identified is identified


def test_the_anonymous_id_is_part_of_the_canonical_event() -> None:
    event = read(PAGE_VIEW_TSV)
    again = decode_json(event.to_json(), "canonical")

    assert json.loads(event.to_json())["anonymous_id"] == "bc2e92ec6c204a14"
    assert again.anonymous_id == "bc2e92ec6c204a14"
    assert again.identified is True  # the intent.events hop keeps it too
    assert "anonymous_id" not in json.loads(read(tsv(user_id="")).to_json())


# --- malformed records ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "reason", "detail"),
    [
        ("a\tb", errors.MALFORMED_LINE, "expected 131 tab-separated fields, got 2"),
        (PAGE_VIEW_TSV + "\textra", errors.MALFORMED_LINE, "got 132"),
        ("\t".join(PAGE_VIEW_TSV.split("\t")[:-1]), errors.MALFORMED_LINE, "got 130"),
        ("2019-10-01 00:00:00 UTC,view,44600062", errors.MALFORMED_LINE, "got 1"),
        (tsv(contexts="{not json"), errors.MALFORMED_LINE, "contexts is not JSON"),
        (tsv(unstruct_event='{"data": {"schema": "link_click", "data": {}}}'),
         errors.MALFORMED_LINE, "unstruct_event is no {schema: iglu:..., data}"),
        (tsv(contexts='{"schema": "x", "data": {}}'), errors.MALFORMED_LINE,
         "contexts is no {schema, data: [...]}"),
        ('{"collector_tstamp": "2013-11-26', errors.MALFORMED_JSON, ""),
        ("[1, 2]", errors.NOT_AN_OBJECT, ""),
        (tsv(derived_tstamp="", dvce_created_tstamp="", collector_tstamp=""),
         errors.MISSING_TIMESTAMP, "none of derived_tstamp, dvce_created_tstamp, collector_tstamp"),
        (json.dumps({"event_id": "e-1", "domain_userid": "d-1", "event": "page_view"}),
         errors.MISSING_TIMESTAMP, ""),
        (tsv(derived_tstamp="last tuesday"), errors.INVALID_EVENT,
         "derived_tstamp 'last tuesday' is not a timestamp"),
        (tsv(user_id="", domain_userid="", network_userid=""), errors.MISSING_SHOPPER_ID,
         "none of user_id, domain_userid, network_userid"),
        (tsv(event="transaction", tr_total="lots"), errors.INVALID_EVENT, "tr_total 'lots'"),
        (ecommerce_tsv({"name": "no type"}), errors.INVALID_EVENT, "needs a type"),
    ],
    ids=["two-fields", "132-fields", "130-fields", "csv", "contexts-not-json",
         "unstruct-not-self-describing", "contexts-not-a-list", "bad-json", "json-list",
         "no-time", "json-no-time", "bad-time", "no-id", "bad-number", "action-without-type"],
)  # fmt: skip
def test_a_malformed_record_is_rejected_with_its_reason(
    line: str, reason: str, detail: str
) -> None:
    exc = rejected(line)

    assert exc.reason == reason
    assert detail in exc.detail


def test_a_field_past_the_bounds_is_out_of_bounds() -> None:
    exc = rejected(tsv(page_title="x" * (DEFAULT_BOUNDS.max_string_chars + 1)))

    assert exc.reason == errors.OUT_OF_BOUNDS and "page_title" in exc.detail


def test_tsv_is_not_json_in_the_other_formats() -> None:
    assert rejected(PAGE_VIEW_TSV, "canonical").reason == errors.MALFORMED_JSON


def test_json_with_tabs_around_it_is_still_json() -> None:
    raw = b'\t {"shopper_id":\t"s-1", "type": "cart_view", "ts": "2026-11-23T10:00:00Z"}\t'

    assert decode_json(raw).source == "canonical"


def test_a_tsv_record_that_is_not_utf8_is_a_malformed_line() -> None:
    with pytest.raises(InvalidEvent) as exc:
        decode_json(PAGE_VIEW_TSV.encode().replace(b"On Analytics", b"On \xff"))

    assert exc.value.reason == errors.MALFORMED_LINE and "not UTF-8" in exc.value.detail


# --- live input and the commands -----------------------------------------------------------


def test_the_sdks_json_is_told_from_ga4_by_its_collector_time() -> None:
    assert "event_name" in PYTHON_SDK_JSON  # as GA4 has
    assert detect(PYTHON_SDK_JSON) == detect(SCALA_SDK_JSON) == "snowplow"
    assert detect({"event_name": "page_view", "event_id": "e-1"}) == "ga4"


@pytest.mark.parametrize(
    "value",
    [PAGE_VIEW_TSV.encode(), json.dumps(PYTHON_SDK_JSON).encode()],
    ids=["tsv", "sdk-json"],
)
def test_a_live_record_in_either_shape_is_detected(value: bytes) -> None:
    now = PAGE_VIEW.ts + timedelta(minutes=1)

    assert ingest_one(RawRecord(value, b"k", "clickstream.events", 0, 7), now, IngestLimits()) == (
        PAGE_VIEW
    )


def test_snowplow_is_a_format_of_produce_replay_and_calibrate() -> None:
    from stream.cli.calibrate import calibrate
    from stream.cli.produce import produce
    from stream.cli.replay import replay

    for command in (produce, replay, calibrate):
        [option] = [param for param in command.params if param.name == "fmt"]
        assert "snowplow" in option.type.choices  # type: ignore[attr-defined]
    assert FORMATS["snowplow"].name == "snowplow" and FORMATS["snowplow"].json


def test_intent_replay_reads_a_snowplow_file(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from stream.cli import main

    path = tmp_path / "enriched.tsv"
    lines = [PAGE_VIEW_TSV, IOS_TSV, TRANSACTION_TSV, ITEM_TSV, STRUCT_TSV, "cut\tshort"]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")

    done = CliRunner().invoke(main, ["replay", str(path), "--format", "snowplow"])

    assert done.exit_code == 0, done.output
    assert "replayed 5 events of 4 shoppers" in done.output
    assert "1 unreadable line (malformed_line: 1)" in done.output


def test_a_snowplow_file_is_guessed_as_snowplow(tmp_path: Path) -> None:
    path = tmp_path / "enriched.tsv"
    path.write_text(f"{TRANSACTION_TSV}\n{ITEM_TSV}\n", encoding="utf-8")

    assert guess_formats(path) == ["auto", "snowplow"]
    assert not [item for item in read_events(path, "auto") if isinstance(item, LineError)]
