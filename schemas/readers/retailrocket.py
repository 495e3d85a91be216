"""RetailRocket `events.csv`: `timestamp,visitorid,event,itemid,transactionid` (ms)."""

from __future__ import annotations

from typing import Any, Final

from schemas import errors
from schemas.adapters.common import build
from schemas.errors import InvalidEvent
from schemas.events import Event
from schemas.readers.csvline import epoch, fields

RETAILROCKET_HEADER: Final = "timestamp,"
EVENT_TYPES: Final = {"view": "product_view", "addtocart": "add_to_cart", "transaction": "purchase"}
MS_PER_SECOND: Final = 1000


def parse_retailrocket(line: str) -> list[Event]:
    ts, visitor, kind, item, transaction = fields(line, 5, "retailrocket")
    if kind not in EVENT_TYPES:
        raise InvalidEvent(errors.UNSUPPORTED_EVENT_TYPE, f"retailrocket: event {kind!r}")
    props: dict[str, Any] = {"transaction_id": transaction} if transaction else {}
    return [
        build(
            {
                "shopper_id": visitor,
                "type": EVENT_TYPES[kind],
                "ts": epoch(ts, "retailrocket", scale=MS_PER_SECOND),
                "product": {"sku": item},
                "properties": props,
                "source": "retailrocket",
            }
        )
    ]
