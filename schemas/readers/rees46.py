"""REES46 "eCommerce behavior data from multi category store" CSV.

`event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session`
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

from schemas import errors
from schemas.adapters.common import build
from schemas.errors import InvalidEvent
from schemas.events import Event
from schemas.readers.csvline import fields

REES46_HEADER: Final = "event_time,"
EVENT_TYPES: Final = {
    "view": "product_view",
    "cart": "add_to_cart",
    "remove_from_cart": "remove_from_cart",
    "purchase": "purchase",
}
_TIME_FORMAT: Final = "%Y-%m-%d %H:%M:%S %Z"


def parse_rees46(line: str) -> list[Event]:
    when, kind, product_id, category_id, category_code, brand, price, user, session = fields(
        line, 9, "rees46"
    )
    if kind not in EVENT_TYPES:
        raise InvalidEvent(errors.UNSUPPORTED_EVENT_TYPE, f"rees46: event_type {kind!r}")
    try:
        ts = datetime.strptime(when.replace(" UTC", " +0000"), "%Y-%m-%d %H:%M:%S %z")
    except ValueError as exc:
        raise InvalidEvent(errors.MALFORMED_LINE, f"rees46: bad event_time {when!r}") from exc
    return [
        build(
            {
                "shopper_id": user,
                "session_id": session or None,
                "type": EVENT_TYPES[kind],
                "ts": ts,
                "product": {
                    "sku": product_id,
                    # category_code is a readable path ("electronics.smartphone") but is
                    # often empty; the numeric id is the fallback.
                    "category": category_code.replace(".", "/") or category_id or None,
                    "brand": brand or None,
                    "price": price or None,
                },
                "source": "rees46",
            }
        )
    ]
