"""Helpers shared by the adapters: the one place that turns a dict into an `Event`."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from schemas import errors
from schemas.errors import InvalidEvent
from schemas.events import Event

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


def build(fields: dict[str, Any]) -> Event:
    """Validate a canonical dict; map pydantic's error onto `invalid_event` with the field path."""
    require(fields.get("shopper_id"), errors.MISSING_SHOPPER_ID, "no shopper id in the event")
    require(fields.get("ts"), errors.MISSING_TIMESTAMP, "no timestamp in the event")
    try:
        return Event.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<event>'}: {err['msg']}"
            for err in exc.errors()[:5]
        )
        raise InvalidEvent(errors.INVALID_EVENT, problems) from exc
    except TypeError as exc:  # a value of a type the validators cannot even compare
        raise InvalidEvent(errors.INVALID_EVENT, f"a field has the wrong type ({exc})") from exc


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
