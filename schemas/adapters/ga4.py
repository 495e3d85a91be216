"""GA4 events as exported to BigQuery (`event_params` list) or sent by the Measurement
Protocol / gtag (`params` dict), with their `items`.

The shopper is `user_id` (`identified`), else `user_pseudo_id`, else `client_id`; beside
a `user_id`, the pseudo or client id is kept as `anonymous_id` (docs/identity.md)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from schemas import errors
from schemas.adapters.common import beside, build, first, product_from
from schemas.adapters.leads import SIGNUP, lead_channel, unmapped_type
from schemas.adapters.pages import infer_page_type
from schemas.errors import InvalidEvent
from schemas.events import CUSTOM, Event

# GA4 recommended event name -> canonical type. Any other name is `unmapped_type`'s: a
# `custom` event with that name, or a `signup` for an email or SMS capture
# (`newsletter_signup`).
GA4_EVENTS: Final[dict[str, str]] = {
    "page_view": "page_view",
    "view_item": "product_view",
    "select_item": "product_view",
    "view_item_list": "category_view",
    "add_to_cart": "add_to_cart",
    "remove_from_cart": "remove_from_cart",
    "view_cart": "cart_view",
    "begin_checkout": "checkout_started",
    "add_shipping_info": "checkout_step",
    "add_payment_info": "checkout_step",
    "purchase": "purchase",
    "add_to_wishlist": "wishlist_add",
    "search": "search",
    "view_search_results": "search",
    "sign_up": "signup",
    "generate_lead": "signup",
    "select_promotion": "ad_click",
}

_VALUE_KEYS: Final = ("string_value", "int_value", "double_value", "float_value")
MICROS_PER_SECOND: Final = 1_000_000


def looks_like_ga4(obj: dict[str, Any]) -> bool:
    return "event_name" in obj


def _params(obj: dict[str, Any]) -> dict[str, Any]:
    raw = obj.get("event_params", obj.get("params"))
    if isinstance(raw, dict):
        return dict(raw)
    params: dict[str, Any] = {}
    if isinstance(raw, list):  # BigQuery export: [{"key": k, "value": {"string_value": v}}]
        for entry in raw:
            if isinstance(entry, dict) and "key" in entry:
                value = entry.get("value")
                if isinstance(value, dict):
                    value = first(value, *_VALUE_KEYS)
                params[str(entry["key"])] = value
    elif raw is not None:
        raise InvalidEvent(errors.INVALID_EVENT, "event_params must be a list or an object")
    return params


def _timestamp(obj: dict[str, Any]) -> Any:
    micros = first(obj, "event_timestamp", "timestamp_micros")
    if micros is None:
        return first(obj, "ts", "timestamp")
    try:
        return datetime.fromtimestamp(int(micros) / MICROS_PER_SECOND, tz=UTC)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidEvent(
            errors.INVALID_EVENT, f"event_timestamp {micros!r} is not micros"
        ) from exc


def from_ga4(obj: dict[str, Any]) -> Event:
    name = obj.get("event_name")
    if not isinstance(name, str) or not name.strip():
        raise InvalidEvent(errors.INVALID_EVENT, f"a GA4 event needs an event_name, not {name!r}")
    kind = GA4_EVENTS.get(name) or unmapped_type(name)
    params = _params(obj)
    session = params.pop("ga_session_id", None)
    user = first(obj, "user_id")
    fields: dict[str, Any] = {
        "event_id": first(obj, "event_id", "insert_id"),
        "shopper_id": first(obj, "user_id", "user_pseudo_id", "client_id"),
        "identified": True if user is not None else None,
        "ts": _timestamp(obj),
        "session_id": session,
        "type": kind,
        "source": "ga4",
    }
    items = obj.get("items") or params.pop("items", None)
    if isinstance(items, list) and items and isinstance(items[0], dict):
        product = product_from(items[0])
        if product is not None:
            fields["product"] = product
        if len(items) > 1 or kind in {"purchase", "begin_checkout", "view_cart"}:
            params["items"] = items
    url = params.pop("page_location", None)
    if kind == "page_view":
        fields["page"] = {"type": infer_page_type(url, params.pop("page_type", None)), "url": url}
    elif url is not None:
        params["url"] = url
    if kind == "search":
        params["query"] = params.pop("search_term", None)
    if kind in (SIGNUP, CUSTOM):
        fields["name"] = name
    if kind == SIGNUP:
        params["channel"] = lead_channel(params, name) or params.get("channel")
    fields["properties"] = {k: v for k, v in params.items() if v is not None}
    anonymous = beside(user, first(obj, "user_pseudo_id", "client_id"))
    return build({k: v for k, v in fields.items() if v is not None}, anonymous)
