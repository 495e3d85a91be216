"""What ingest accepts: bounds on every input, so that whatever passes is safe for every
later stage (detection, scoring, serialisation, Redis).

Two checks, both pure:

- `loads` parses JSON text within bounds: no number beyond `max_number` (nor NaN or
  Infinity, which Python's parser takes), no string longer than `max_string_chars`, no
  list longer than `max_list_items`, no nesting deeper than `max_depth`. A lone UTF-16
  surrogate (`"\\ud800"`, valid JSON text but not Unicode) is *replaced* with U+FFFD,
  not rejected: one broken character in a product name must not lose a purchase, and
  the same input always gives the same replacement, so ids stay deterministic.
- `check_event` bounds the canonical event itself, whatever format it came from: the
  product's quantity and price, the lengths of its strings, and a floor on its time.

Each bound is a setting (`INTENT_MAX_*`, `INTENT_MIN_EVENT_TIME`); `DEFAULT_BOUNDS`
holds the defaults. A record past a bound is rejected with reason `out_of_bounds`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from schemas import errors
from schemas.errors import InvalidEvent

if TYPE_CHECKING:
    from schemas.events import Event

_SURROGATE: Final = re.compile("[\ud800-\udfff]")
# a \u escape of a surrogate in JSON text; pairs decode to one character, lone ones stay
_SURROGATE_ESCAPE: Final = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE_ESCAPE_TEXT: Final = re.compile(r"\\u[dD][89a-fA-F]")


@dataclass(frozen=True, slots=True)
class Bounds:
    max_depth: int = 20
    max_string_chars: int = 8192
    max_list_items: int = 1000
    max_number: float = 1e18
    max_quantity: int = 100_000
    max_price: float = 1e10
    min_time: datetime = datetime(2000, 1, 1, tzinfo=UTC)


DEFAULT_BOUNDS: Final = Bounds()


def out_of_bounds(detail: str) -> InvalidEvent:
    return InvalidEvent(errors.OUT_OF_BOUNDS, detail)


def loads(raw: bytes | str, bounds: Bounds = DEFAULT_BOUNDS) -> Any:
    """JSON text to Python values, within `bounds`. Raises `InvalidEvent`:
    `malformed_json` for text that is not JSON, `out_of_bounds` past a bound."""
    limit = bounds.max_number

    def number(text: str) -> float | int:
        value = float(text)
        if not math.isfinite(value) or abs(value) > limit:
            raise out_of_bounds(f"the number {text[:40]} is beyond ±{limit:g}")
        return int(text) if _is_int(text) else value

    def constant(name: str) -> Any:
        raise out_of_bounds(f"{name} is not a number JSON allows")

    try:
        obj = json.loads(raw, parse_float=number, parse_int=number, parse_constant=constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidEvent(errors.MALFORMED_JSON, str(exc)) from exc
    except RecursionError:
        raise out_of_bounds(f"nested deeper than {bounds.max_depth}") from None
    except ValueError as exc:  # an integer past the interpreter's digit limit
        raise out_of_bounds(str(exc)[:200]) from None
    if _needs_walk(raw, bounds):
        obj = _walk(obj, bounds, 1)
    return obj


def _is_int(text: str) -> bool:
    return not any(c in text for c in ".eE")


def _needs_walk(raw: bytes | str, bounds: Bounds) -> bool:
    """Whether the text can break a bound the number hooks do not check. Most records
    are small and flat: they cannot hold a string longer than themselves, more list
    items than they have commas, or more levels than they have brackets."""
    if isinstance(raw, str):  # a file's line, checked as it is (no encoding per line)
        commas, brackets = raw.count(","), raw.count("{") + raw.count("[")
        surrogate = bool(_SURROGATE_ESCAPE_TEXT.search(raw) or _SURROGATE.search(raw))
    else:  # a record off the wire, checked as bytes (no decoding per record)
        commas, brackets = raw.count(b","), raw.count(b"{") + raw.count(b"[")
        surrogate = _SURROGATE_ESCAPE.search(raw) is not None
    return (
        len(raw) > bounds.max_string_chars
        or commas + 1 > bounds.max_list_items
        or brackets > bounds.max_depth
        or surrogate
    )


def _walk(value: Any, bounds: Bounds, depth: int) -> Any:
    """`value` checked against the bounds, with lone surrogates replaced."""
    if isinstance(value, str):
        if len(value) > bounds.max_string_chars:
            raise out_of_bounds(
                f"a string of {len(value)} characters is over {bounds.max_string_chars}"
            )
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict | list):
        if depth > bounds.max_depth:
            raise out_of_bounds(f"nested deeper than {bounds.max_depth}")
        if isinstance(value, list):
            if len(value) > bounds.max_list_items:
                raise out_of_bounds(f"a list of {len(value)} items is over {bounds.max_list_items}")
            return [_walk(item, bounds, depth + 1) for item in value]
        return {
            _walk(key, bounds, depth): _walk(item, bounds, depth + 1) for key, item in value.items()
        }
    return value


def check_event(event: Event, bounds: Bounds = DEFAULT_BOUNDS) -> Event:
    """`event` if it is within `bounds`; raises `InvalidEvent` (`out_of_bounds`)."""
    if event.ts < bounds.min_time:
        raise out_of_bounds(
            f"ts {event.ts.isoformat()} is before the floor {bounds.min_time.isoformat()}"
        )
    product = event.product
    if product is not None:
        if product.quantity is not None and product.quantity > bounds.max_quantity:
            raise out_of_bounds(
                f"product.quantity {product.quantity} is over {bounds.max_quantity}"
            )
        if product.price is not None and not product.price <= bounds.max_price:
            raise out_of_bounds(f"product.price {product.price:g} is over {bounds.max_price:g}")
        for name in ("category", "variant", "brand", "name"):
            _check_text(f"product.{name}", getattr(product, name), bounds)
    if event.page is not None:
        _check_text("page.url", event.page.url, bounds)
    _check_text("name", event.name, bounds)
    return event


def _check_text(name: str, text: str | None, bounds: Bounds) -> None:
    if text is not None and len(text) > bounds.max_string_chars:
        raise out_of_bounds(f"{name} of {len(text)} characters is over {bounds.max_string_chars}")
