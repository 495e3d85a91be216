"""Snowplow enriched events, as Enrich writes them (TSV) or the analytics SDKs turn them
into JSON (`schemas.adapters.snowplow_record` reads both into one record).

What each event becomes:

- `page_view`: a `page_view` of `page_url`, its page type from the URL (or from the
  ecommerce `page` entity's type).
- the ecommerce plugin's `snowplow_ecommerce_action`, by its `type` (`ECOMMERCE_ACTIONS`),
  with the product from the first `product` entity (every one in `properties.items` when
  there are several, and always for a transaction), the order from the `transaction`
  entity, the cart's value from the `cart` entity; a checkout step 1 is
  `checkout_started`, a later one `checkout_step`.
- the older `add_to_cart` and `remove_from_cart` events, and `site_search` (`search`).
- `transaction` (the `tr_` fields): one `purchase` per order, with no product, since
  the order's items come as events of their own.
- `transaction_item` (the `ti_` fields): a `custom` event named `transaction_item` that
  carries the item as its product and the order id, never a second purchase of the order.
- any other event (`struct` ones named by `se_action`, other self-describing ones by
  `event_name`, `page_ping`): `custom` with that name, or `signup` for an email or SMS
  capture, as the other adapters do (`schemas.adapters.leads`).

The shopper is `user_id` (`identified`), else `domain_userid`, else `network_userid`;
with a `user_id`, `anonymous_id` keeps the cookie id beside it (docs/identity.md). The
time is `derived_tstamp`, else `dvce_created_tstamp`, else `collector_tstamp`. The
session is `domain_sessionid`, else (the mobile trackers) the `client_session` entity's
`sessionId`.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Final

from schemas import errors
from schemas.adapters.common import build, first, product_from
from schemas.adapters.leads import SIGNUP, lead_channel, unmapped_type
from schemas.adapters.pages import infer_page_type
from schemas.adapters.snowplow_record import UNSTRUCT_PREFIX, entities, from_json, from_tsv
from schemas.bounds import Bounds
from schemas.errors import InvalidEvent
from schemas.events import CUSTOM, Event

_ECOMMERCE: Final = "com_snowplowanalytics_snowplow_ecommerce"
ECOMMERCE_ACTION: Final = f"unstruct_event_{_ECOMMERCE}_snowplow_ecommerce_action_1"
PRODUCTS: Final = f"contexts_{_ECOMMERCE}_product_1"
TRANSACTION: Final = f"contexts_{_ECOMMERCE}_transaction_1"
CART: Final = f"contexts_{_ECOMMERCE}_cart_1"
CHECKOUT_STEP: Final = f"contexts_{_ECOMMERCE}_checkout_step_1"
ECOMMERCE_PAGE: Final = f"contexts_{_ECOMMERCE}_page_1"
CLIENT_SESSION: Final = "contexts_com_snowplowanalytics_snowplow_client_session_1"
OLD_CART_EVENTS: Final = {
    "unstruct_event_com_snowplowanalytics_snowplow_add_to_cart_1": "add_to_cart",
    "unstruct_event_com_snowplowanalytics_snowplow_remove_from_cart_1": "remove_from_cart",
}
SITE_SEARCH: Final = "unstruct_event_com_snowplowanalytics_snowplow_site_search_1"

# snowplow_ecommerce_action `type` -> canonical type; any other (promo_view, refund,
# trns_error) is a custom event of that name.
ECOMMERCE_ACTIONS: Final[dict[str, str]] = {
    "product_view": "product_view",
    "list_click": "product_view",
    "list_view": "category_view",
    "add_to_cart": "add_to_cart",
    "remove_from_cart": "remove_from_cart",
    "checkout_step": "checkout_step",  # step 1: checkout_started
    "transaction": "purchase",
    "promo_click": "ad_click",
}
FIRST_CHECKOUT_STEP: Final = 1
_HEAD: Final = 64  # characters looked at for a JSON opening (past any leading whitespace)
TIME_FIELDS: Final = ("derived_tstamp", "dvce_created_tstamp", "collector_tstamp")
TRANSACTION_ITEM: Final = "transaction_item"
# transaction entity field -> property (the rest keep their names)
_ORDER_KEYS: Final = {"transaction_id": "order_id"}


def looks_like_snowplow(obj: dict[str, Any]) -> bool:
    """The SDK's JSON: Enrich sets `collector_tstamp`, `event_id` and its versions on every
    event, and no other accepted shape has a `collector_tstamp`."""
    return "collector_tstamp" in obj and any(k in obj for k in ("event_id", "v_collector", "v_etl"))


def reads_as_tsv(raw: bytes | str, fmt: str) -> bool:
    """Whether a payload is read as an enriched TSV line rather than JSON: in format
    `snowplow` when it opens no JSON object or list, in `auto` when it has a tab too."""
    if fmt not in ("snowplow", "auto"):
        return False
    if raw[:_HEAD].lstrip()[:1] in (b"{", b"[", "{", "["):
        return False  # JSON: the common case, told without reading the whole payload
    return fmt == "snowplow" or (b"\t" in raw if isinstance(raw, bytes) else "\t" in raw)


def from_snowplow(obj: dict[str, Any]) -> Event:
    """An event from the analytics SDK's JSON."""
    return from_record(from_json(obj))


def from_snowplow_tsv(raw: bytes | str, bounds: Bounds) -> Event:
    """An event from an enriched TSV line, its JSON fields within `bounds`."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidEvent(errors.MALFORMED_LINE, f"snowplow: not UTF-8 ({exc})") from exc
    return from_record(from_tsv(raw, bounds))


def from_record(record: dict[str, Any]) -> Event:
    user = first(record, "user_id")
    cookie = first(record, "domain_userid", "network_userid")
    if user is None and cookie is None:
        raise InvalidEvent(
            errors.MISSING_SHOPPER_ID,
            "snowplow: none of user_id, domain_userid, network_userid is set",
        )
    sessions = entities(record, CLIENT_SESSION)
    fields: dict[str, Any] = {
        "event_id": first(record, "event_id"),
        "shopper_id": user if user is not None else cookie,
        "anonymous_id": cookie if user is not None and cookie != user else None,
        "identified": True if user is not None else None,
        "session_id": first(record, "domain_sessionid")
        or (first(sessions[0], "sessionId") if sessions else None),
        "ts": _event_time(record),
        "source": "snowplow",
    }
    props: dict[str, Any] = {"app_id": record.get("app_id")}
    kind, name = _classify(record, fields, props)
    url = record.get("page_url")
    if kind == "page_view":
        pages = entities(record, ECOMMERCE_PAGE)
        hint = pages[0].get("type") if pages else None
        fields["page"] = {"type": infer_page_type(url, hint), "url": url}
    elif url is not None:
        props["url"] = url
    fields["type"] = kind
    if kind in (SIGNUP, CUSTOM):
        fields["name"] = name
    if kind == SIGNUP:
        props["channel"] = lead_channel(props, name)
    fields["properties"] = {k: v for k, v in props.items() if v is not None}
    return build({k: v for k, v in fields.items() if v is not None})


def _event_time(record: dict[str, Any]) -> datetime:
    for name in TIME_FIELDS:
        value = record.get(name)
        if value is None:
            continue
        try:  # TSV: 2013-11-26 00:03:57.885 (UTC); the SDKs' JSON: 2013-11-26T00:03:57.885Z
            return datetime.fromisoformat(value)
        except (TypeError, ValueError) as exc:
            detail = f"snowplow: {name} {value!r} is not a timestamp"
            raise InvalidEvent(errors.INVALID_EVENT, detail) from exc
    raise InvalidEvent(
        errors.MISSING_TIMESTAMP, f"snowplow: none of {', '.join(TIME_FIELDS)} is set"
    )


def _classify(
    record: dict[str, Any], fields: dict[str, Any], props: dict[str, Any]
) -> tuple[str, str]:
    """The event's canonical type and source name; sets its product and properties."""
    event = first(record, "event", "event_name")
    if event == "page_view":
        return "page_view", event
    if event == "transaction":
        props.update(
            order_id=record.get("tr_orderid"),
            revenue=_number(record, "tr_total"),
            tax=_number(record, "tr_tax"),
            shipping=_number(record, "tr_shipping"),
            currency=record.get("tr_currency"),
            affiliation=record.get("tr_affiliation"),
        )
        return "purchase", event
    if event == TRANSACTION_ITEM:
        item = {
            "sku": record.get("ti_sku"),
            "name": record.get("ti_name"),
            "category": record.get("ti_category"),
            "price": record.get("ti_price"),
            "quantity": record.get("ti_quantity"),
        }
        fields["product"] = product_from({k: v for k, v in item.items() if v is not None})
        props.update(order_id=record.get("ti_orderid"), currency=record.get("ti_currency"))
        return CUSTOM, TRANSACTION_ITEM
    if event == "struct":
        props.update({key: record.get(key) for key in ("se_category", "se_label", "se_property")})
        props["se_value"] = _number(record, "se_value")
        name = first(record, "se_action", "se_category") or event
        return unmapped_type(name), name
    unstruct = next((key for key in record if key.startswith(UNSTRUCT_PREFIX)), None)
    if unstruct is not None:
        data = record[unstruct]
        if not isinstance(data, dict):
            raise InvalidEvent(errors.INVALID_EVENT, f"snowplow: {unstruct} must be an object")
        if unstruct == ECOMMERCE_ACTION:
            return _ecommerce(record, data, fields, props)
        if unstruct in OLD_CART_EVENTS:
            product = product_from({**data, "price": first(data, "unitPrice", "price")})
            fields["product"] = product
            props["currency"] = data.get("currency")
            return OLD_CART_EVENTS[unstruct], unstruct
        if unstruct == SITE_SEARCH:
            terms = data.get("terms")
            words = terms if isinstance(terms, list) else [terms]
            props["query"] = " ".join(str(word) for word in words if word is not None)
            return "search", unstruct
        event = first(record, "event_name") or unstruct.removeprefix(UNSTRUCT_PREFIX)
    if not isinstance(event, str):
        raise InvalidEvent(errors.INVALID_EVENT, "snowplow: the event has no event or event_name")
    return unmapped_type(event), event


def _ecommerce(
    record: dict[str, Any], action: dict[str, Any], fields: dict[str, Any], props: dict[str, Any]
) -> tuple[str, str]:
    action_type = action.get("type")
    if not isinstance(action_type, str) or not action_type.strip():
        raise InvalidEvent(errors.INVALID_EVENT, "snowplow: an ecommerce action needs a type")
    kind = ECOMMERCE_ACTIONS.get(action_type) or unmapped_type(action_type)
    products = entities(record, PRODUCTS)
    if products:
        fields["product"] = product_from(products[0])
        props["currency"] = products[0].get("currency")
        if len(products) > 1 or kind == "purchase":
            props["items"] = products
    for order in entities(record, TRANSACTION)[:1]:
        props.update({_ORDER_KEYS.get(key, key): value for key, value in order.items()})
    for cart in entities(record, CART)[:1]:
        props.update(cart_id=cart.get("cart_id"), cart_value=cart.get("total_value"))
        props["currency"] = props.get("currency") or cart.get("currency")
    for step in entities(record, CHECKOUT_STEP)[:1]:
        props["step"] = step.get("step")
    if kind == "checkout_step" and props.get("step") in (None, FIRST_CHECKOUT_STEP):
        kind = "checkout_started"
    if action_type in ("list_view", "list_click"):
        props["list"] = action.get("name")
    return kind, action_type


def _number(record: dict[str, Any], name: str) -> float | None:
    """A number field (text in the TSV, a number in the SDK's JSON); None when unset."""
    value = record.get(name)
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise InvalidEvent(errors.INVALID_EVENT, f"snowplow: {name} {value!r} is no number")
    return number
