"""Line parsers for the historical formats users have lying around.

Each format turns one line into zero or more canonical events, or raises
`InvalidEvent` (reason `malformed_line` or the adapter's reason). Reading files,
decompression, header skipping and counting live in `stream.offline.files`; these are pure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from schemas.adapters import decode_json
from schemas.bounds import DEFAULT_BOUNDS, Bounds, check_event
from schemas.events import Event
from schemas.readers.otto import parse_otto
from schemas.readers.rees46 import REES46_HEADER, parse_rees46
from schemas.readers.retailrocket import RETAILROCKET_HEADER, parse_retailrocket
from schemas.readers.taobao import parse_taobao

Parse = Callable[[str], list[Event]]


@dataclass(frozen=True)
class Format:
    name: str
    parse: Parse
    header: str | None = None  # a first line starting with this is skipped
    description: str = ""
    json: bool = False  # read by `decode_json` (JSON, or Snowplow TSV), which takes the bounds

    def read(self, line: str, bounds: Bounds = DEFAULT_BOUNDS) -> list[Event]:
        """The events of one line, each within `bounds` (`schemas.bounds`)."""
        if self.json:
            return [decode_json(line, self.name, bounds)]  # type: ignore[arg-type]  # a JSON format
        return [check_event(event, bounds) for event in self.parse(line)]


def _jsonl(fmt: str) -> Parse:
    def parse(line: str) -> list[Event]:
        return [decode_json(line, fmt)]  # type: ignore[arg-type]  # fmt is one of the JSON formats

    return parse


FORMATS: Final[dict[str, Format]] = {
    "canonical": Format(
        "canonical",
        _jsonl("canonical"),
        None,
        json=True,
        description="canonical events, JSON Lines",
    ),
    "segment": Format(
        "segment",
        _jsonl("segment"),
        None,
        json=True,
        description="Segment track/page calls, JSON Lines",
    ),
    "ga4": Format(
        "ga4",
        _jsonl("ga4"),
        None,
        json=True,
        description="GA4 events (BigQuery export or gtag), JSON Lines",
    ),
    "auto": Format(
        "auto",
        _jsonl("auto"),
        None,
        json=True,
        description="any mix of the JSON shapes and Snowplow enriched TSV, a record a line",
    ),
    "snowplow": Format(
        "snowplow",
        _jsonl("snowplow"),
        None,
        json=True,
        description="Snowplow enriched events: TSV, or the analytics SDK's JSON, a record a line",
    ),
    "rees46": Format("rees46", parse_rees46, REES46_HEADER, "REES46 ecommerce behaviour CSV"),
    "retailrocket": Format(
        "retailrocket", parse_retailrocket, RETAILROCKET_HEADER, "RetailRocket events.csv"
    ),
    "taobao": Format("taobao", parse_taobao, None, "Taobao UserBehavior CSV (no header)"),
    "otto": Format("otto", parse_otto, None, "OTTO recsys sessions, JSON Lines"),
}

__all__ = ["FORMATS", "Format"]
