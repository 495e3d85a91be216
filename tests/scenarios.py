"""The six scenarios the default rules must get right, as event scripts, with the signals
that must fire and the ones that must not. Shared by the pure engine tests and the
integration tests."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from schemas.events import Event

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def ev(
    shopper: str,
    minutes: float,
    type_: str,
    *,
    session: str | None = None,
    page: str | None = None,
    sku: str | None = None,
    category: str | None = None,
    variant: str | None = None,
    start: datetime = T0,
    **props: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "shopper_id": shopper,
        "type": type_,
        "ts": (start + timedelta(minutes=minutes)).isoformat(),
        "properties": props,
    }
    if session:
        body["session_id"] = session
    if page:
        body["page"] = {"type": page, "url": f"https://shop.example/{page}"}
    if sku:
        body["product"] = {"sku": sku, "category": category, "price": 20.0}
        if variant:
            body["product"]["variant"] = variant
    return body


@dataclass
class Scenario:
    name: str
    events: list[dict[str, Any]]
    fires: list[str]  # rule ids, in the order of their signals' times
    never: set[str] = field(default_factory=set)
    flush: bool = True  # let deadlines pass after the script (absence, visit end)


# The same shop's categories as three other shops spell them: the scenarios must come out
# the same under each (the default rules take categories from lists, matched on any part
# of the path, in any case).
TAXONOMIES: dict[str, dict[str, str]] = {
    "coffee/subscriptions": {
        "electronics/cables": "accessories/electronics/cables",
        "apparel/tops": "women/apparel/tops",
        "subscriptions/coffee": "coffee/subscriptions",
        "apparel/outerwear": "women/apparel/outerwear",
    },
    "Subscriptions > Coffee": {
        "electronics/cables": "Tech > Consumer Electronics > USB Cables",
        "apparel/tops": "Clothing > Tops",
        "subscriptions/coffee": "Subscriptions > Coffee",
        "apparel/outerwear": "Clothing > Outerwear",
    },
    "subscription-boxes": {
        "electronics/cables": "electronics-and-cables",
        "apparel/tops": "mens-apparel",
        "subscriptions/coffee": "subscription-boxes",
        "apparel/outerwear": "rain-jackets",
    },
}


def scenarios(
    prefix: str = "", start: datetime = T0, taxonomy: str | None = None
) -> list[Scenario]:
    """The scenarios, with categories as this project's own examples spell them, or as
    one of `TAXONOMIES` does."""
    names = TAXONOMIES[taxonomy] if taxonomy is not None else {}

    def e(shopper: str, *args: Any, **kw: Any) -> dict[str, Any]:
        if "category" in kw:
            kw["category"] = names.get(kw["category"], kw["category"])
        return ev(prefix + shopper, *args, start=start, **kw)

    cable = {"sku": "CBL-USB-C", "category": "electronics/cables"}
    tee = {"sku": "TEE-ORG", "category": "apparel/tops"}
    plan = {"sku": "BOX-MONTHLY", "category": "subscriptions/coffee"}
    plan2 = {"sku": "BOX-WEEKLY", "category": "subscriptions/coffee"}
    plan3 = {"sku": "BOX-ANNUAL", "category": "subscriptions/coffee"}
    jacket = {"sku": "JKT-RAIN", "category": "apparel/outerwear"}
    return [
        Scenario(
            "1 returns-risk electronics",
            [e("s1", 0, "product_view", session="v1", **cable),
             e("s1", 3, "page_view", session="v1", page="returns")],
            fires=["product_viewed", "product_then_returns"],
            never={"checkout_abandoned", "blog_only_visit", "single_page_visit"},
        ),
        Scenario(
            "2 apparel size help",
            [e("s2", 0, "page_view", session="v1", page="size_guide"),
             e("s2", 1, "product_view", session="v1", **tee),
             e("s2", 2, "variant_selected", session="v1", variant="M", **tee),
             e("s2", 3, "wishlist_add", session="v1", variant="M", **tee)],
            fires=["help_pages_read", "product_viewed", "variant_selected", "wishlist_add"],
            never={"plan_selected", "discount_applied", "product_then_returns"},
        ),
        Scenario(
            "3 subscription over several visits",
            [e("s3", 0, "category_view", session="v1", category="subscriptions/coffee"),
             e("s3", 1, "product_view", session="v1", **plan),
             e("s3", 2, "product_view", session="v1", **plan2),
             e("s3", 300, "product_view", session="v2", **plan),
             e("s3", 302, "page_view", session="v2", page="returns"),
             e("s3", 1440, "product_view", session="v3", **plan3),
             e("s3", 1442, "variant_selected", session="v3", variant="annual", **plan3)],
            fires=["category_then_product", "product_viewed", "product_viewed",
                   "product_viewed", "three_product_views", "repeat_product_views",
                   "product_viewed",
                   "repeat_collection_views", "plan_selected",
                   "variant_selected"],
            never={"product_then_returns", "checkout_abandoned"},
        ),
        Scenario(
            "4 checkout abandoned",
            [e("s4", 0, "product_view", session="v1", **jacket),
             e("s4", 1, "add_to_cart", session="v1", **jacket),
             e("s4", 2, "cart_view", session="v1"),
             e("s4", 3, "checkout_started", session="v1", **jacket)],
            fires=["product_viewed", "added_to_cart", "checkout_started", "checkout_abandoned"],
            never={"cart_viewed_without_checkout", "purchased_in_category"},
        ),
        Scenario(
            "5 blog-only reader",
            [e("s5", 0, "page_view", session="v1", page="blog"),
             e("s5", 4, "page_view", session="v1", page="blog"),
             e("s5", 9, "page_view", session="v1", page="blog")],
            fires=["blog_only_visit"],
            never={"product_viewed", "single_page_visit", "navigation_only_visit"},
        ),
        Scenario(
            "6 opt-out, spam complaint, purchase in the category",
            [e("s6", 0, "email_open"),
             e("s6", 1, "opt_out", channel="email"),
             e("s6b", 0, "spam_complaint"),
             e("s6c", 0, "product_view", session="v1", **cable),
             e("s6c", 1, "add_to_cart", session="v1", **cable),
             e("s6c", 2, "checkout_started", session="v1", **cable),
             e("s6c", 4, "purchase", session="v1", **cable)],
            fires=["opted_out", "spam_complaint", "product_viewed", "added_to_cart",
                   "checkout_started", "purchased_in_category", "email_opened_without_click"],
            never={"checkout_abandoned"},
        ),
    ]  # fmt: skip


GENERATED_TYPES = ["product_view"] * 4 + ["page_view"] * 2 + [
    "add_to_cart", "cart_view", "checkout_started", "purchase", "search", "email_open",
    "email_click", "category_view", "variant_selected", "wishlist_add",
]  # fmt: skip
# now and then: suppressions (a channel, everything), bounces and the rarer signals
RARE_TYPES = ["opt_out", "spam_complaint", *["email_bounce"] * 4, "consent_update",
              "discount_applied", "ad_click", "sms_click", "support_chat_started"]  # fmt: skip
PAGES = ["faq", "returns", "home", "blog", "category", "pricing", "product", "shipping",
         "size_guide", "spec_sheet"]  # fmt: skip
PRODUCT_TYPES = ("product_view", "add_to_cart", "variant_selected", "wishlist_add")
# Seconds to a generated shopper's next event: the same instant, around the 30-minute
# absence windows and their 5 minutes of lateness, and back in time (within the lateness).
IN_ORDER_STEPS = [0, 0, 1, 30, 120, 600, 1500, 1800, 1900, 2100, 2400, 7200]
STEPS = [*IN_ORDER_STEPS, -60, -200]


def generated_shopper(
    rng: random.Random, name: str, start: datetime, steps: list[int] = STEPS
) -> list[Event]:
    """2-24 random events of one shopper in its first hour after `start` and on: product
    and category views, variants, wishlists, carts, checkouts, purchases (half of them
    of a product: its category is suppressed), pages of every type the rules name,
    searches and emails; now and then an opt-out, a consent update, a spam complaint, a
    bounce, a discount, an ad or SMS click, a support chat. With the default rules, all
    but `repeated_bounces` fire among 600 of them, absences and suppressions included.
    In the order they arrive. Half the shoppers have session ids: a new one after a long
    gap or now and then, and now and then the one before (a second tab)."""
    ts = start + timedelta(seconds=rng.randrange(3600))
    events = []
    sessions = [f"{name}-a"] if rng.random() < 0.5 else []
    for i in range(rng.randrange(2, 25)):
        step = rng.choice(steps)
        ts += timedelta(seconds=step)
        kind = rng.choice(RARE_TYPES if rng.random() < 0.04 else GENERATED_TYPES)
        body: dict[str, Any] = {
            "event_id": f"{name}-{i}", "shopper_id": name, "type": kind, "ts": ts.isoformat(),
            "source": "test",
        }  # fmt: skip
        if sessions and not kind.startswith(("email", "opt_out", "spam")):
            if step >= 1800 or rng.random() < 0.1:
                sessions.append(f"{name}-{len(sessions)}")
            tab = -2 if len(sessions) > 1 and rng.random() < 0.1 else -1
            body["session_id"] = sessions[tab]
        if kind in PRODUCT_TYPES or (kind == "purchase" and rng.random() < 0.5):
            body["product"] = {
                "sku": f"sku-{rng.randrange(3)}",
                "category": rng.choice(["electronics/cables", "apparel/tops", "subscriptions/box"]),
                "price": 10.0,
            }  # fmt: skip
        if kind == "email_click":
            body["properties"] = {
                "url": rng.choice(["https://shop.example/p/1", "https://shop.example/"])
            }
        if kind == "support_chat_started":
            body["properties"] = {"topic": rng.choice(["sizing", "billing"])}
        if kind == "consent_update":
            body["properties"] = {"status": rng.choice(["granted", "withdrawn"])}
        if kind == "opt_out":
            body["properties"] = {"channel": rng.choice(["email", "sms"])}
        if kind == "page_view":
            body["page"] = {"type": rng.choice(PAGES)}
        if kind == "search":
            body["properties"] = {"query": rng.choice(["how to pick one", "buy cheap"])}
        events.append(Event.model_validate(body))
    return events


def generated_file(folder: Path, seed: int, shoppers: int) -> Path:
    """`generated.jsonl` in `folder`: that many generated shoppers (`STEPS`: now and then
    back in time), one after the other, from 2026-01-01."""
    rng = random.Random(seed)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    events = [e for i in range(shoppers) for e in generated_shopper(rng, f"g{i}", start)]
    path = folder / "generated.jsonl"
    path.write_bytes(b"".join(e.to_json() + b"\n" for e in events))
    return path
