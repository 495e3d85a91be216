"""Segment track and page calls, Ecommerce v2 and Email spec names, taken as they are,
and the identify and alias calls that link a shopper's ids (docs/identity.md).

A track call outside the spec is a `custom` event named as the call is, except an email
or SMS capture (`schemas.adapters.leads`), which is a `signup`. The shopper is `userId`
(`identified`), else `anonymousId`; beside a `userId`, `anonymousId` is kept as
`anonymous_id`. An identify with both ids is an `identify` event; an alias is an `alias`
event that merges `previousId` into `userId`. Screen and group calls are not events."""

from __future__ import annotations

from typing import Any, Final

from schemas import errors
from schemas.adapters.common import beside, build, first, mapping, product_from
from schemas.adapters.leads import SIGNUP, lead_channel, unmapped_type
from schemas.adapters.pages import infer_page_type
from schemas.errors import InvalidEvent
from schemas.events import ALIAS, CUSTOM, IDENTIFY, IDENTITY_TYPES, Event

# Segment spec event name -> canonical type (exact names; any other is `unmapped_type`'s).
TRACK_EVENTS: Final[dict[str, str]] = {
    "Products Searched": "search",
    "Product List Viewed": "category_view",
    "Product List Filtered": "category_view",
    "Product Clicked": "product_view",
    "Product Viewed": "product_view",
    "Product Added": "add_to_cart",
    "Product Removed": "remove_from_cart",
    "Cart Viewed": "cart_view",
    "Checkout Started": "checkout_started",
    "Checkout Step Viewed": "checkout_step",
    "Checkout Step Completed": "checkout_step",
    "Payment Info Entered": "checkout_step",
    "Order Completed": "purchase",
    "Coupon Applied": "discount_applied",
    "Product Added to Wishlist": "wishlist_add",
    "Promotion Clicked": "ad_click",
    "Product Variant Selected": "variant_selected",
    "Variant Selected": "variant_selected",
    "Signed Up": "signup",
    "Live Chat Conversation Started": "support_chat_started",
    "Email Opened": "email_open",
    "Email Link Clicked": "email_click",
    "Email Bounced": "email_bounce",
    "Email Marked as Spam": "spam_complaint",
    "Unsubscribed": "opt_out",
    "SMS Link Clicked": "sms_click",
    "Consent Updated": "consent_update",
}

_SESSION_KEYS: Final = ("session_id", "sessionId")
SEGMENT_CALLS: Final = frozenset({"track", "page", "identify", "screen", "group", "alias"})
_SEGMENT_IDS: Final = ("userId", "anonymousId", "previousId")


def looks_like_segment(obj: dict[str, Any]) -> bool:
    call = obj.get("type")
    if not isinstance(call, str) or call not in SEGMENT_CALLS:
        return False
    if call in IDENTITY_TYPES:  # canonical types too; a Segment call has camelCase ids
        return any(key in obj for key in _SEGMENT_IDS)
    return "userId" in obj or "anonymousId" in obj or "event" in obj or "messageId" in obj


def from_segment(obj: dict[str, Any]) -> Event:
    call = obj.get("type")
    props = dict(mapping(obj, "properties"))
    context = mapping(obj, "context")
    user = first(obj, "userId")
    fields: dict[str, Any] = {
        "event_id": obj.get("messageId"),
        "shopper_id": first(obj, "userId", "anonymousId"),
        "identified": True if user is not None else None,
        "ts": first(obj, "timestamp", "originalTimestamp", "sentAt", "receivedAt"),
        "session_id": first(props, *_SESSION_KEYS) or first(context, *_SESSION_KEYS),
        "source": "segment",
    }
    anonymous = beside(user, obj.get("anonymousId"))
    if call in IDENTITY_TYPES:
        fields.update(_identity(obj, call))
        anonymous = None  # the event's own anonymous_id, part of its id
    elif call == "page":
        page_ctx = mapping(context, "page")
        url = first(props, "url", "path") or first(page_ctx, "url", "path")
        hint = first(props, "page_type") or obj.get("name") or obj.get("category")
        fields["type"] = "page_view"
        fields["page"] = {"type": infer_page_type(url, hint), "url": url}
    elif call == "track":
        name = obj.get("event")
        if not isinstance(name, str) or not name.strip():
            raise InvalidEvent(
                errors.INVALID_EVENT, f"a Segment track call needs an event name, not {name!r}"
            )
        kind = TRACK_EVENTS.get(name) or unmapped_type(name)
        fields["type"] = kind
        if kind in (SIGNUP, CUSTOM):
            fields["name"] = name
        fields.update(_track_details(kind, name, props))
    else:
        raise InvalidEvent(errors.UNSUPPORTED_EVENT_TYPE, f"Segment {call!r} calls are not events")
    for key in ("session_id", "sessionId", "product_id", "sku", "url", "path", "page_type"):
        props.pop(key, None)
    fields["properties"] = {**props, **fields.get("properties", {})}
    return build({k: v for k, v in fields.items() if v is not None}, anonymous)


def _identity(obj: dict[str, Any], call: str) -> dict[str, Any]:
    """The ids of an identify or alias call; its traits (an email, a name) are not kept."""
    user = _given(obj, "userId")
    if call == IDENTIFY:
        anonymous = _given(obj, "anonymousId")
        if user is None or anonymous is None:
            missing = "userId" if user is None else "anonymousId"
            raise InvalidEvent(
                errors.UNSUPPORTED_EVENT_TYPE, f"a Segment identify without {missing} links nothing"
            )
        return {"type": IDENTIFY, "shopper_id": user, "anonymous_id": anonymous}
    previous = _given(obj, "previousId")
    if previous is None:
        raise InvalidEvent(
            errors.INVALID_EVENT,
            "a Segment alias call needs a previousId, the id it merges into userId",
        )
    if user is None:
        raise InvalidEvent(
            errors.MISSING_SHOPPER_ID,
            "a Segment alias call needs a userId, the id it merges previousId into",
        )
    return {"type": ALIAS, "shopper_id": user, "anonymous_id": previous}


def _given(obj: dict[str, Any], key: str) -> Any:
    """`obj[key]`, None when it is missing, null or blank."""
    value = obj.get(key)
    return None if value is None or (isinstance(value, str) and not value.strip()) else value


def _track_details(kind: str, name: str, props: dict[str, Any]) -> dict[str, Any]:
    details: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    product = product_from(props)
    products = props.get("products")
    if (
        product is None
        and isinstance(products, list)
        and products
        and isinstance(products[0], dict)
    ):
        product = product_from(products[0])
    if product is not None:
        details["product"] = product
    if kind == "search":
        extra["query"] = first(props, "query", "search_term")
    elif kind == "email_click":
        extra["url"] = first(props, "link_url", "url")
    elif kind == SIGNUP:
        extra["channel"] = lead_channel(props, name)
    elif kind == "opt_out":
        extra["channel"] = first(props, "channel") or "email"
    elif kind == "ad_click":
        extra["campaign"] = first(props, "campaign", "promotion_id", "name")
    elif kind == "category_view" and product is None:
        extra["category"] = first(props, "category", "list_id")
    details["properties"] = {k: v for k, v in extra.items() if v is not None}
    return details
