"""Taobao UserBehavior CSV, no header: `user_id,item_id,category_id,behavior_type,timestamp` (s)."""

from __future__ import annotations

from typing import Final

from schemas import errors
from schemas.adapters.common import build
from schemas.errors import InvalidEvent
from schemas.events import Event
from schemas.readers.csvline import epoch, fields

EVENT_TYPES: Final = {
    "pv": "product_view",
    "cart": "add_to_cart",
    "fav": "wishlist_add",
    "buy": "purchase",
}


def parse_taobao(line: str) -> list[Event]:
    user, item, category, kind, ts = fields(line, 5, "taobao")
    if kind not in EVENT_TYPES:
        raise InvalidEvent(errors.UNSUPPORTED_EVENT_TYPE, f"taobao: behavior_type {kind!r}")
    return [
        build(
            {
                "shopper_id": user,
                "type": EVENT_TYPES[kind],
                "ts": epoch(ts, "taobao"),
                "product": {"sku": item, "category": category or None},
                "source": "taobao",
            }
        )
    ]
