"""Page type from a URL or a page name, for sources that do not say it (Segment page calls, GA4)."""

from __future__ import annotations

from typing import Final
from urllib.parse import urlsplit

from schemas.events import PAGE_TYPES, PageType

# First match wins, so the more specific kinds come first ("/products/returns" is returns).
_KEYWORDS: Final[tuple[tuple[PageType, tuple[str, ...]], ...]] = (
    ("returns", ("return", "refund", "exchange")),
    ("shipping", ("shipping", "delivery")),
    ("size_guide", ("size-guide", "size_guide", "sizeguide", "size-chart", "size guide")),
    ("spec_sheet", ("spec-sheet", "specs", "datasheet", "spec sheet", "specification")),
    ("faq", ("faq", "help", "support")),
    ("pricing", ("pricing", "plans", "price-list")),
    ("blog", ("blog", "journal", "article", "/news", "stories")),
    ("landing", ("/lp/", "landing")),
    ("product", ("/product", "/p/", "/item", "/dp/")),
    ("category", ("/category", "/categories", "/c/", "/collection", "/shop/", "/department")),
)


def infer_page_type(url: str | None = None, hint: str | None = None) -> PageType:
    """Classify a page. `hint` is an explicit type or a page name ("Returns Policy")."""
    if hint:
        text = hint.strip().lower().replace(" ", "_")
        if text in PAGE_TYPES:
            return text  # type: ignore[return-value]  # checked membership of the Literal
        for kind, words in _KEYWORDS:
            if any(word.strip("/") in hint.lower() for word in words):
                return kind
        if text in {"home", "homepage", "home_page", "index"}:
            return "home"
    if url:
        path = urlsplit(url).path.lower() if "://" in url else url.lower()
        if path in {"", "/", "/index.html", "/home"}:
            return "home"
        for kind, words in _KEYWORDS:
            if any(word in path for word in words):
                return kind
    return "other"
