"""Fuzzed clickstream records: valid canonical, Segment and GA4 events, and those shapes
mutated at three levels (the JSON tree, the JSON text, the raw bytes), plus random bytes.

Everything draws from a `random.Random`, so the same seed gives the same records: the
property test hands in Hypothesis's (`st.randoms()`, which it can shrink), and the
integration test a seeded one.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

SHOPPERS = 12  # few shoppers: their events meet in one batch and build up state
SKUS = ("CBL-USB-C", "TEE-ORG", "MUG-1", "x" * 200, "sku/\u00e9\u4e2d", "")
TYPES = (
    "page_view", "product_view", "add_to_cart", "remove_from_cart", "checkout_started",
    "purchase", "search", "opt_out", "consent_update", "wishlist_add", "email_click",
)  # fmt: skip
SEGMENT_NAMES = (
    "Product Viewed", "Product Added", "Product Removed", "Checkout Started",
    "Order Completed", "Products Searched", "Unsubscribed", "Cart Viewed",
)  # fmt: skip
GA4_NAMES = ("view_item", "add_to_cart", "begin_checkout", "purchase", "page_view", "search")
# values a field may be swapped for: wrong types, extremes, odd text
ODD_VALUES: tuple[Any, ...] = (
    None, True, False, 0, -1, 1.5, -0.0, 2**63, -(2**63), 10**400, 1e308, 1e-308,
    "", " ", "\u0000", "x\ud800y", "\udfff", "\U0001f600", "9" * 400, "x" * 70_000,
    [], {}, [None], {"": None}, [[[[[]]]]], "1e400", "NaN", "-Infinity",
    "1970-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "2026-13-45T99:99:99Z",
    "1999-12-31T23:59:59Z", 1e18, -1e18, 253402300800000,
)  # fmt: skip
JSON_TOKENS = (
    "NaN", "Infinity", "-Infinity", "1e999", "9" * 500, '"\\ud800"', '"\\udc00\\ud800"',
    "[" * 40, "{", "}", ",", ":", "null", '"\\u0000"', "\x00", "\\", '"',
)  # fmt: skip


def when(rng: random.Random, now: datetime) -> datetime:
    """Within the last two hours, some a little ahead (up to the allowed clock skew)."""
    return now - timedelta(seconds=rng.uniform(-240, 7200))


def canonical(rng: random.Random, now: datetime) -> dict[str, Any]:
    body: dict[str, Any] = {
        "shopper_id": f"fz-{rng.randrange(SHOPPERS)}",
        "type": rng.choice(TYPES),
        "ts": when(rng, now).isoformat(),
    }
    if rng.random() < 0.8:
        body["product"] = {
            "sku": rng.choice(SKUS),
            "price": rng.choice((0, 9.99, 1e10, 123456.78)),
            "quantity": rng.choice((1, 2, 0, 100_000)),
            "category": rng.choice(("electronics/cables", "apparel", "", None)),
            "name": rng.choice(("mug", "x\ud800y", "\U0001f600", None)),
        }
    if rng.random() < 0.3:
        body["page"] = {"type": rng.choice(("returns", "pricing", "bogus")), "url": "/x"}
    if rng.random() < 0.3:
        body["session_id"] = f"v-{rng.randrange(4)}"
    if rng.random() < 0.2:
        body["properties"] = {"channel": rng.choice(("email", "sms", 7)), "q": "usb"}
    return body


def segment(rng: random.Random, now: datetime) -> dict[str, Any]:
    shopper = f"fz-{rng.randrange(SHOPPERS)}"
    call: dict[str, Any] = {
        "type": rng.choice(("track", "track", "track", "page", "identify")),
        "event": rng.choice(SEGMENT_NAMES),
        "messageId": f"m-{rng.randrange(10**9)}",
        "timestamp": when(rng, now).isoformat(),
        "properties": {
            "product_id": rng.choice(SKUS),
            "price": rng.choice((19.9, 0, 5e9)),
            "quantity": rng.choice((1, 3)),
            "products": [{"sku": rng.choice(SKUS), "price": 1.0, "quantity": 1}],
        },
        "context": {"sessionId": rng.randrange(3), "page": {"url": "https://shop.example/p"}},
    }
    call["userId" if rng.random() < 0.5 else "anonymousId"] = shopper
    return call


def ga4(rng: random.Random, now: datetime) -> dict[str, Any]:
    micros = int(when(rng, now).timestamp() * 1_000_000)
    item = {"item_id": rng.choice(SKUS), "price": 19.9, "quantity": rng.choice((1, 2))}
    if rng.random() < 0.5:
        return {
            "event_name": rng.choice(GA4_NAMES),
            "event_timestamp": str(micros),
            "user_pseudo_id": f"fz-{rng.randrange(SHOPPERS)}",
            "event_params": [
                {"key": "ga_session_id", "value": {"int_value": rng.randrange(5)}},
                {"key": "page_location", "value": {"string_value": "https://shop.example/x"}},
            ],
            "items": [item],
        }
    return {
        "client_id": f"fz-{rng.randrange(SHOPPERS)}",
        "event_name": rng.choice(GA4_NAMES),
        "timestamp_micros": micros,
        "params": {"ga_session_id": str(rng.randrange(5)), "items": [item]},
    }


SHAPES: tuple[Callable[[random.Random, datetime], dict[str, Any]], ...] = (canonical, segment, ga4)


def _paths(tree: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(tree, dict):
        for key, value in tree.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            out += _paths(value, (*prefix, index))
    return out


def mutate_tree(rng: random.Random, tree: dict[str, Any]) -> Any:
    """Swap, delete or nest a random field of a JSON tree."""
    tree = copy.deepcopy(tree)
    for _ in range(rng.randint(1, 3)):
        paths = [p for p in _paths(tree) if p]
        if not paths:
            return copy.deepcopy(rng.choice(ODD_VALUES))
        path = rng.choice(paths)
        parent = tree
        for step in path[:-1]:
            parent = parent[step]
        action = rng.random()
        if action < 0.6:
            parent[path[-1]] = copy.deepcopy(rng.choice(ODD_VALUES))
        elif action < 0.8 and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            deep: Any = parent[path[-1]]
            for _ in range(rng.choice((2, 30, 250))):  # the text goes deeper (JSON_TOKENS)
                deep = {"n": deep} if rng.random() < 0.5 else [deep]
            parent[path[-1]] = deep
    return tree


def mutate_text(rng: random.Random, text: str) -> str:
    """Insert JSON tokens, or cut the text short."""
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(text) + 1)
        tail = text[at:] if rng.random() < 0.7 else ""  # else cut short there
        text = text[:at] + (rng.choice(JSON_TOKENS) if tail else "") + tail
    return text


def mutate_bytes(rng: random.Random, raw: bytes) -> bytes:
    """Flip, drop or insert bytes (invalid UTF-8 among them)."""
    data = bytearray(raw)
    for _ in range(rng.randint(1, 8)):
        at = rng.randrange(len(data) + 1)
        choice = rng.random()
        if choice < 0.4 and at < len(data):
            data[at] = rng.randrange(256)
        elif choice < 0.7:
            data[at:at] = bytes([rng.choice((0x80, 0xC0, 0xFF, 0xED, 0x00, 0x22, 0x5C))])
        else:
            del data[at : at + rng.randint(1, 16)]
    return bytes(data)


def record(rng: random.Random, now: datetime) -> bytes:
    """One fuzzed record value: a third valid, the rest mutated or noise."""
    tree = rng.choice(SHAPES)(rng, now)
    kind = rng.random()
    if kind < 0.35:
        return json.dumps(tree).encode()
    if kind < 0.65:
        return json.dumps(mutate_tree(rng, tree)).encode()
    if kind < 0.8:
        return mutate_text(rng, json.dumps(tree)).encode("utf-8", "surrogatepass")
    if kind < 0.95:
        return mutate_bytes(rng, json.dumps(tree).encode())
    return rng.randbytes(rng.randrange(0, 300))


def key(rng: random.Random, value: bytes) -> bytes | None:
    """Keys as producers set them: the shopper, none, or junk."""
    choice = rng.random()
    if choice < 0.6:
        return f"fz-{rng.randrange(SHOPPERS)}".encode()
    if choice < 0.9:
        return None
    return rng.randbytes(rng.randrange(0, 40))


def now_utc() -> datetime:
    return datetime.now(UTC)
