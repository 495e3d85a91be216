"""OTTO recsys JSON Lines, a session a line: `{"session", "events": [{"aid", "ts", "type"}]}`."""

from __future__ import annotations

import json
from typing import Any, Final

from schemas import errors
from schemas.adapters.common import build
from schemas.errors import InvalidEvent
from schemas.events import Event
from schemas.readers.csvline import epoch

EVENT_TYPES: Final = {"clicks": "product_view", "carts": "add_to_cart", "orders": "purchase"}
MS_PER_SECOND: Final = 1000


def parse_otto(line: str) -> list[Event]:
    try:
        obj: Any = json.loads(line)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, or past the digit limit
        raise InvalidEvent(errors.MALFORMED_LINE, f"otto: not JSON ({exc})") from exc
    if not isinstance(obj, dict) or "session" not in obj or not isinstance(obj.get("events"), list):
        raise InvalidEvent(errors.MALFORMED_LINE, "otto: expected {'session', 'events': [...]}")
    # An OTTO "session" is one anonymous shopper over four weeks; visits inside it are
    # cut by the inactivity gap downstream, so no session id is set here.
    shopper = obj["session"]
    events: list[Event] = []
    for index, item in enumerate(obj["events"]):
        if not isinstance(item, dict) or item.get("type") not in EVENT_TYPES:
            raise InvalidEvent(errors.MALFORMED_LINE, f"otto: event {index} is not aid/ts/type")
        events.append(
            build(
                {
                    "shopper_id": shopper,
                    "type": EVENT_TYPES[item["type"]],
                    "ts": epoch(str(item.get("ts")), "otto", scale=MS_PER_SECOND),
                    "product": {"sku": item.get("aid")},
                    "source": "otto",
                }
            )
        )
    return events
