"""Page type from a URL or a page name, for sources that do not say it (Segment page calls, GA4)."""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import urlsplit

from schemas.events import PAGE_TYPES, PageType

# First match wins, so the more specific kinds come first ("/products/returns" is returns).
# URL paths are matched by substring ("/p/" is a product path).
_URL_KEYWORDS: Final[tuple[tuple[PageType, tuple[str, ...]], ...]] = (
    ("returns", ("return", "refund", "exchange")),
    ("shipping", ("shipping", "delivery")),
    ("size_guide", ("size-guide", "size_guide", "sizeguide", "size-chart")),
    ("spec_sheet", ("spec-sheet", "specs", "datasheet", "specification")),
    ("faq", ("faq", "help", "support")),
    ("pricing", ("pricing", "plans", "price-list")),
    ("blog", ("blog", "journal", "article", "/news", "stories")),
    ("landing", ("/lp/", "landing")),
    ("product", ("/product", "/p/", "/item", "/dp/")),
    ("category", ("/category", "/categories", "/c/", "/collection", "/shop/", "/department")),
)
# Page names ("Returns Policy", "Home Page") are matched by whole words.
_NAME_KEYWORDS: Final[tuple[tuple[PageType, tuple[str, ...]], ...]] = (
    ("returns", ("return", "returns", "refund", "refunds", "exchange", "exchanges")),
    ("shipping", ("shipping", "delivery")),
    ("size_guide", ("size guide", "size chart", "sizing")),
    ("spec_sheet", ("spec", "specs", "spec sheet", "datasheet", "specification", "specifications")),
    ("faq", ("faq", "faqs", "help", "support")),
    ("pricing", ("pricing", "plans", "price list")),
    ("blog", ("blog", "journal", "article", "news", "stories")),
    ("landing", ("landing", "landing page")),
    ("home", ("home", "homepage", "home page", "index")),
    ("product", ("product", "product page", "product detail", "pdp")),
    ("category", ("category", "collection", "collections", "department", "plp")),
)


def _words(text: str) -> str:
    return " " + " ".join(re.findall(r"[a-z0-9]+", text.lower())) + " "


def infer_page_type(url: object = None, hint: object = None) -> PageType:
    """Classify a page. `hint` is an explicit type or a page name ("Returns Policy").
    Either, when it is not text (a producer's bad value), is not used."""
    if not isinstance(url, str):
        url = None
    if not isinstance(hint, str):
        hint = None
    if hint:
        text = hint.strip().lower().replace(" ", "_").replace("-", "_")
        if text in PAGE_TYPES:
            return text  # type: ignore[return-value]  # checked membership of the Literal
        words = _words(hint)
        for kind, names in _NAME_KEYWORDS:
            if any(f" {name} " in words for name in names):
                return kind
    if url:
        path = _path(url)
        if path in {"", "/", "/index.html", "/home"}:
            return "home"
        for kind, keywords in _URL_KEYWORDS:
            if any(word in path for word in keywords):
                return kind
    return "other"


def _path(url: str) -> str:
    """The URL's path, lower case; the whole text when it is no URL that splits (a "["
    that opens no IPv6 address)."""
    if "://" not in url:
        return url.lower()
    try:
        return urlsplit(url).path.lower()
    except ValueError:
        return url.lower()
