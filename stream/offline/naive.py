"""The naive rule: the tiers an analyst writes first, the yardstick the backtest report
sets the rules against.

"A cart add puts a shopper in high, three product views in mid." Exactly, over a
shopper's events in the file, taken in event-time order (events of one instant in the
order the file lists them), each event id once (a repeated event counts once, as it does
for the rules):

- low: reached at the shopper's first event, whatever it is: one product view, or any
  other event, puts a shopper in low;
- mid: reached at their third product view (a `product_view`, or a `page_view` of a page
  of type `product`), or at their first cart add if that comes first;
- high: reached at their first cart add (an `add_to_cart` event).

A tier is reached at the time of the event that qualifies. Every event of the file
counts: there is no decay, no visit, no allowed lateness (a late event counts) and no
reset at a purchase, so a shopper never leaves a tier. The report uses only the moment
each tier (or a higher one) was first reached, as it does for the rules' tiers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from schemas.events import Event

RULE: Final = (
    "a cart add puts a shopper in high, their third product view in mid, any first event in low"
)
PRODUCT_VIEWS_FOR_MID: Final = 3  # "three product views in mid"
CART_ADD: Final = "add_to_cart"


def is_product_view(event: Event) -> bool:
    return event.type == "product_view" or (
        event.type == "page_view" and event.page is not None and event.page.type == "product"
    )


def reached(events: Iterable[Event]) -> dict[str, float]:
    """Tier -> when the shopper first reached it or a higher one (epoch seconds), for the
    tiers they reached; `events` are one shopper's, in any order."""
    out: dict[str, float] = {}
    views = 0
    seen: set[str] = set()
    for event in sorted(events, key=lambda e: e.ts):  # stable: one instant in file order
        if event.id in seen:
            continue
        seen.add(event.id)
        at = event.ts.timestamp()
        out.setdefault("low", at)
        if event.type == CART_ADD:
            out.setdefault("mid", at)
            out.setdefault("high", at)
            break  # every tier is reached
        if is_product_view(event):
            views += 1
            if views == PRODUCT_VIEWS_FOR_MID:
                out.setdefault("mid", at)
    return out
