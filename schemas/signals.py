"""An intent signal: what the detectors emit on `intent.signals` for the scoring stage."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.rules import Tier


class Suppression(BaseModel):
    """Outreach stops for `scope` (`value` names the channel or category) until `until`."""

    model_config = ConfigDict(frozen=True)

    scope: Literal["all", "channel", "category"]
    value: str | None = None
    until: datetime
    except_actions: list[str] = Field(default_factory=list)


class Signal(BaseModel):
    model_config = ConfigDict(frozen=True)

    signal_id: str  # deterministic: the rule plus the events (or session) that anchor it
    rule_id: str
    kind: str
    shopper_id: str
    at: datetime  # event time at which the signal holds (an absence: its deadline)
    points: float
    half_life_seconds: float
    tier_hint: Tier | None = None
    actions: list[str] = Field(default_factory=list)
    anchors: list[str]
    session_id: str | None = None
    sku: str | None = None
    category: str | None = None
    suppression: Suppression | None = None
    properties: dict[str, Any] = Field(default_factory=dict)

    def to_json(self) -> bytes:
        # model_dump_json(exclude_none=True), without the round trip through str
        return self.__pydantic_serializer__.to_json(self, exclude_none=True)


def signal_id(rule_id: str, shopper_id: str, anchors: list[str]) -> str:
    digest = hashlib.blake2b(
        "\x1f".join([rule_id, shopper_id, *anchors]).encode(), digest_size=10
    ).hexdigest()
    return f"{rule_id}:{digest}"
