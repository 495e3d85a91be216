"""What the processor emits for other teams (docs/architecture.md, "Signals and outputs").
Add fields freely; never rename or drop one without a versioned schema."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

TierName = Literal["none", "low", "mid", "high", "suppressed"]


class OutputTopic(StrEnum):
    """Where an output goes; each is one topic, named by its setting
    (`Settings.output_topics`). A new kind of output is a member here, a setting, and a
    line of that mapping."""

    TIER_CHANGES = "tier_changes"
    RETARGETING = "retargeting"
    CART_RECOVERY = "cart_recovery"
    NURTURE = "nurture"
    SUPPRESSION = "suppression"


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)

    def to_json(self) -> bytes:
        # model_dump_json() is this, decoded to str (which the producer encoded again)
        return self.__pydantic_serializer__.to_json(self)


class Contribution(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str  # the rule
    points: float  # its points now, decayed


class TierChange(_Out):
    """`intent.tier-changes`: every transition. `change_id` is `<shopper>:<digest>`, a
    digest of what the change is (cause signal or decay, time, from, to, reason): the
    same input always gives the same id, and no two changes of a shopper share one."""

    change_id: str
    shopper_id: str
    from_tier: TierName
    to_tier: TierName
    score: float
    at: datetime
    reason: Literal["signal", "decay", "suppression", "purchase", "merge"]
    signals: list[Contribution]
    scope: str = "shopper"
    cause_event_id: str | None = None
    cause_signal_id: str | None = None
    merged_with: str | None = None
    """With reason `merge`: the other id of the merge (the anonymous id on the known
    profile's change, the known id on the anonymous one's, which leaves its tier)."""


class AudienceChange(_Out):
    """`intent.actions.retargeting`: audience membership changes."""

    action_id: str
    shopper_id: str
    audience: str
    op: Literal["add", "remove"]
    tier: TierName
    at: datetime
    reason: str


class CartRecovery(_Out):
    """`intent.actions.cart-recovery`: one trigger per abandoned checkout, with the cart."""

    trigger_id: str
    shopper_id: str
    checkout_event_id: str
    checkout_at: datetime | None = None
    cart: dict[str, Any]
    tier: TierName
    at: datetime
    suppressed_channels: list[str] = Field(default_factory=list)


class Nurture(_Out):
    """`intent.actions.nurture`: a content action for the shopper's tier."""

    action_id: str
    shopper_id: str
    action: str
    tier: TierName
    rule_id: str
    sku: str | None = None
    category: str | None = None
    at: datetime


class SuppressionRecord(_Out):
    """`intent.actions.suppression`: suppress / unsuppress with scope; `forget` on erasure."""

    record_id: str
    shopper_id: str
    op: Literal["suppress", "unsuppress", "forget"]
    scope: Literal["all", "channel", "category", "shopper"]
    value: str | None = None
    until: datetime | None = None
    at: datetime
    rule_id: str | None = None
    except_actions: list[str] = Field(default_factory=list)
