"""Control records on intent.events: requests the owner of a shopper applies in order
with the shopper's events. A canonical event's JSON always starts with `{"event_id":`;
a control record starts with its own field name, so the two never mix.

- `forget` (from `intent forget`): erase the shopper (`Pipeline._forget`);
- `merge`, `handover`, `handback`, `forwarded`: identity merges (`stream.worker.identity`).
"""

from __future__ import annotations

from typing import Final

import orjson

FORGET_PREFIX: Final = b'{"forget":'
FORGET_HEADERS: Final = [("intent-kind", b"forget")]
IDENTITY_PREFIXES: Final = (b'{"merge":', b'{"handover":', b'{"handback":', b'{"forwarded":')
PREFIXES: Final = (FORGET_PREFIX, *IDENTITY_PREFIXES)


def forget_request(shopper: str, at: float) -> bytes:
    """The record `intent forget` puts on intent.events, keyed by the shopper."""
    return orjson.dumps({"forget": shopper, "at": at})
