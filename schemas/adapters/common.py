"""Helpers shared by the adapters: the one place that turns a dict into an `Event`."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from schemas import errors
from schemas.errors import InvalidEvent
from schemas.events import ID_MAX_LENGTH, Event, as_id

PRODUCT_FIELDS = ("sku", "category", "price", "variant", "brand", "name", "quantity")


def first(mapping: dict[str, Any], *names: str) -> Any:
    """The first of `names` with a non-empty value in `mapping`, else None."""
    for name in names:
        value = mapping.get(name)
        if value is not None and value != "":
            return value
    return None


def require(value: Any, reason: str, detail: str) -> Any:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InvalidEvent(reason, detail)
    return value


def mapping(obj: dict[str, Any], name: str) -> dict[str, Any]:
    """The object at `obj[name]`: {} when it is missing or null, `invalid_event` when it
    is anything but an object (a producer's `"properties": "n/a"`)."""
    value = obj.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidEvent(
            errors.INVALID_EVENT, f"{name} must be an object, not {type(value).__name__}"
        )
    return value


def beside(known: Any, anonymous: Any) -> str | None:
    """The anonymous id a source gave beside its known user id, to keep as `anonymous_id`
    on an ordinary event: None without a known id, when it is the known id itself, or
    when it is no usable id (blank, too long, neither a string nor a number), since an
    event is never refused for the id it merely carries beside its shopper's."""
    if known is None:
        return None
    anonymous = as_id(anonymous)
    if not isinstance(anonymous, str) or not 0 < len(anonymous) <= ID_MAX_LENGTH:
        return None
    return None if anonymous == as_id(known) else anonymous


def build(fields: dict[str, Any], anonymous: str | None = None) -> Event:
    """Validate a canonical dict; map pydantic's error onto `invalid_event` with the field
    path (an error of the whole event, such as a custom event without a name, is its
    message alone).

    `anonymous` (from `beside`) becomes `anonymous_id` after the event id is derived, so
    an ordinary event's id is the same whether or not its source sent the anonymous id
    beside the known one."""
    require(fields.get("shopper_id"), errors.MISSING_SHOPPER_ID, "no shopper id in the event")
    require(fields.get("ts"), errors.MISSING_TIMESTAMP, "no timestamp in the event")
    try:
        event = Event.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
            if err["loc"]
            else err["msg"].removeprefix("Value error, ")
            for err in exc.errors()[:5]
        )
        raise InvalidEvent(errors.INVALID_EVENT, problems) from exc
    except TypeError as exc:  # a value of a type the validators cannot even compare
        raise InvalidEvent(errors.INVALID_EVENT, f"a field has the wrong type ({exc})") from exc
    if anonymous is None:
        return event
    return event.model_copy(update={"anonymous_id": anonymous})


def product_from(source: dict[str, Any]) -> dict[str, Any] | None:
    """A canonical product dict from Segment/GA4-style product properties, or None without an id."""
    sku = first(source, "sku", "product_id", "item_id", "id")
    if sku is None:
        return None
    product: dict[str, Any] = {"sku": sku}
    for canonical, names in (
        ("category", ("category", "item_category")),
        ("price", ("price",)),
        ("variant", ("variant", "item_variant")),
        ("brand", ("brand", "item_brand")),
        ("name", ("name", "item_name")),
        ("quantity", ("quantity",)),
    ):
        value = first(source, *names)
        if value is not None:
            product[canonical] = value
    return product
