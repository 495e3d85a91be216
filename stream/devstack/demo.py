"""Demo traffic: shoppers walking through the scenarios the default rules must get right
(returns risk, size help, a subscription, an abandoned checkout, a blog reader, an opt-out,
a buyer, an anonymous visitor who signs in and abandons the checkout), live.

Journeys interleave, each step a few seconds apart, in all three JSON shapes the
processor accepts (canonical, Segment, GA4), with a little bad input mixed in so the
dead-letter path shows too. Deterministic for a given seed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

# (type, page type, product, properties) steps of each scenario.
Step = tuple[str, str | None, dict[str, Any] | None, dict[str, Any]]
CABLE: Final = {
    "sku": "CBL-USB-C",
    "category": "electronics/cables",
    "price": 19.9,
    "variant": "2m",
}
TEE: Final = {"sku": "TEE-ORG", "category": "apparel/tops", "price": 29.0}
PLAN: Final = {"sku": "BOX-MONTHLY", "category": "subscriptions/coffee", "price": 24.0}
JACKET: Final = {"sku": "JKT-RAIN", "category": "apparel/outerwear", "price": 149.0}
BOOTS: Final = {"sku": "BT-HIKE", "category": "footwear/boots", "price": 119.0}
IDENTIFY: Final = "identify"  # the step where the anonymous visitor signs in

SCENARIOS: Final[dict[str, list[Step]]] = {
    "returns_risk": [
        ("product_view", None, CABLE, {}),
        ("page_view", "returns", None, {}),
    ],
    "apparel_size_help": [
        ("page_view", "size_guide", None, {}),
        ("product_view", None, TEE, {}),
        ("variant_selected", None, {**TEE, "variant": "M"}, {}),
        ("wishlist_add", None, {**TEE, "variant": "M"}, {}),
    ],
    "subscription": [
        ("category_view", None, None, {"category": "subscriptions/coffee"}),
        ("product_view", None, PLAN, {}),
        ("page_view", "returns", None, {}),
        ("variant_selected", None, {**PLAN, "variant": "annual"}, {}),
    ],
    "checkout_abandon": [
        ("product_view", None, JACKET, {}),
        ("add_to_cart", None, JACKET, {}),
        ("cart_view", None, None, {}),
        ("checkout_started", None, JACKET, {"cart_value": 149.0}),
    ],
    "blog_reader": [
        ("page_view", "blog", None, {}),
        ("page_view", "blog", None, {}),
    ],
    "opt_out": [
        ("email_open", None, None, {}),
        ("opt_out", None, None, {"channel": "email"}),
    ],
    # Browses anonymously, signs in (the known id is `customer-<n>`), then abandons the
    # checkout: the cart recovery goes to the known customer, with the anonymous cart.
    "signs_in": [
        ("product_view", None, BOOTS, {}),
        ("add_to_cart", None, BOOTS, {}),
        (IDENTIFY, None, None, {}),
        ("checkout_started", None, BOOTS, {"cart_value": 119.0}),
    ],
    "buyer": [
        ("product_view", None, CABLE, {}),
        ("add_to_cart", None, CABLE, {}),
        ("checkout_started", None, CABLE, {}),
        ("purchase", None, CABLE, {"order_id": "o-1"}),
    ],
}
SEGMENT_NAMES: Final = {
    "product_view": "Product Viewed",
    "add_to_cart": "Product Added",
    "cart_view": "Cart Viewed",
    "checkout_started": "Checkout Started",
    "purchase": "Order Completed",
    "wishlist_add": "Product Added to Wishlist",
}
GA4_NAMES: Final = {
    "product_view": "view_item",
    "add_to_cart": "add_to_cart",
    "cart_view": "view_cart",
    "checkout_started": "begin_checkout",
    "purchase": "purchase",
    "wishlist_add": "add_to_wishlist",
}
BAD_INPUT: Final = (
    b'{"shopper_id": "s-x", "type": "page_view", "ts": ',
    b'{"type": "product_view"}',
)
BAD_INPUT_SHARE: Final = 0.03
STEP_GAP_SECONDS: Final = (1.0, 6.0)  # a shopper's next step comes this long after the last
# Abandoned checkouts are stamped 40 minutes in the past, so the 30-minute absence (and
# its cart-recovery trigger) fires while you watch instead of half an hour later.
BACKDATE_SECONDS: Final = {"checkout_abandon": 2400.0, "signs_in": 2400.0}


@dataclass
class Journey:
    shopper: str
    session: str
    steps: list[Step]
    due: float  # seconds since the generator started
    backdate: float = 0.0  # seconds its timestamps lie in the past


def known_id(shopper: str) -> str:
    """The id a demo visitor signs in as."""
    return "customer-" + shopper.removeprefix("demo-")


def encode(step: Step, shopper: str, session: str, ts: datetime, rng: random.Random) -> bytes:
    kind, page, product, props = step
    shape = rng.random()
    iso = ts.isoformat().replace("+00:00", "Z")
    if kind == IDENTIFY and shape < 0.5:
        body: dict[str, Any] = {"type": "identify", "userId": known_id(shopper),
                                "anonymousId": shopper, "timestamp": iso}  # fmt: skip
    elif kind == IDENTIFY:
        body = {"shopper_id": known_id(shopper), "anonymous_id": shopper, "type": kind,
                "session_id": session, "ts": iso}  # fmt: skip
    elif kind in SEGMENT_NAMES and shape < 0.25:
        seg_props = {**(product or {}), **props, "session_id": session}
        if product:
            seg_props["product_id"] = seg_props.pop("sku")
        body = {
            "type": "track", "event": SEGMENT_NAMES[kind], "anonymousId": shopper,
            "timestamp": iso, "properties": seg_props,
        }  # fmt: skip
    elif kind in GA4_NAMES and shape < 0.5:
        item = {"item_id": product["sku"], "item_category": product.get("category"),
                "price": product.get("price")} if product else None  # fmt: skip
        body = {
            "event_name": GA4_NAMES[kind], "user_pseudo_id": shopper,
            "event_timestamp": int(ts.timestamp() * 1_000_000),
            "event_params": [{"key": "ga_session_id", "value": {"string_value": session}}]
            + [{"key": k, "value": {"string_value": str(v)}} for k, v in props.items()],
            "items": [item] if item else [],
        }  # fmt: skip
    else:
        body = {"shopper_id": shopper, "session_id": session, "type": kind, "ts": iso,
                "properties": props}  # fmt: skip
        if page:
            body["page"] = {"type": page, "url": f"https://shop.example/{page.replace('_', '-')}"}
        if product:
            body["product"] = product
    return json.dumps(body).encode()


def traffic(
    rate: float, start: datetime, seed: int = 7
) -> Iterator[tuple[float, bytes | None, bytes]]:
    """(seconds after `start`, key, value): an endless schedule at about `rate` events/s.

    Each event is stamped `start + offset`, so a caller that sends it at that moment
    produces live traffic, and the same seed and start give the same bytes.
    """
    rng = random.Random(seed)
    names = sorted(SCENARIOS)
    active: list[Journey] = []
    serial = 0
    mean_steps = sum(len(s) for s in SCENARIOS.values()) / len(SCENARIOS)
    new_every = mean_steps / max(rate, 0.1)
    next_new = 0.0
    while True:
        if not active or next_new <= min(j.due for j in active):
            serial += 1
            name = rng.choice(names)
            active.append(Journey(f"demo-{serial}", f"sess-{serial}", list(SCENARIOS[name]),
                                  next_new, BACKDATE_SECONDS.get(name, 0.0)))  # fmt: skip
            next_new += rng.expovariate(1 / new_every)
            continue
        journey = min(active, key=lambda j: j.due)
        at = journey.due
        if rng.random() < BAD_INPUT_SHARE:
            yield at, None, rng.choice(BAD_INPUT)
        step = journey.steps.pop(0)
        ts = start + timedelta(seconds=at - journey.backdate)
        key = known_id(journey.shopper) if step[0] == IDENTIFY else journey.shopper
        yield at, key.encode(), encode(step, journey.shopper, journey.session, ts, rng)
        if journey.steps:
            journey.due = at + rng.uniform(*STEP_GAP_SECONDS)
        else:
            active.remove(journey)
