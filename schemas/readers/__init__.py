"""Line parsers for the historical formats users have lying around.

Each format turns one line into zero or more canonical events, or raises
`InvalidEvent` (reason `malformed_line` or the adapter's reason). Reading files,
decompression, header skipping and counting live in `stream.files`; these are pure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from schemas.adapters import decode_json
from schemas.events import Event
from schemas.readers.otto import parse_otto
from schemas.readers.rees46 import REES46_HEADER, parse_rees46
from schemas.readers.retailrocket import RETAILROCKET_HEADER, parse_retailrocket
from schemas.readers.taobao import parse_taobao


@dataclass(frozen=True)
class Format:
    name: str
    parse: Callable[[str], list[Event]]
    header: str | None = None  # a first line starting with this is skipped
    description: str = ""


def _jsonl(fmt: str) -> Callable[[str], list[Event]]:
    def parse(line: str) -> list[Event]:
        return [decode_json(line, fmt)]  # type: ignore[arg-type]  # fmt is one of the JSON formats

    return parse


FORMATS: Final[dict[str, Format]] = {
    "canonical": Format("canonical", _jsonl("canonical"), None, "canonical events, JSON Lines"),
    "segment": Format("segment", _jsonl("segment"), None, "Segment track/page calls, JSON Lines"),
    "ga4": Format("ga4", _jsonl("ga4"), None, "GA4 events (BigQuery export or gtag), JSON Lines"),
    "auto": Format("auto", _jsonl("auto"), None, "any mix of the three JSON shapes, JSON Lines"),
    "rees46": Format("rees46", parse_rees46, REES46_HEADER, "REES46 ecommerce behaviour CSV"),
    "retailrocket": Format(
        "retailrocket", parse_retailrocket, RETAILROCKET_HEADER, "RetailRocket events.csv"
    ),
    "taobao": Format("taobao", parse_taobao, None, "Taobao UserBehavior CSV (no header)"),
    "otto": Format("otto", parse_otto, None, "OTTO recsys sessions, JSON Lines"),
}

__all__ = ["FORMATS", "Format"]
