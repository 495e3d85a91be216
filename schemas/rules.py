"""The rules file: what counts as an intent signal, as data users edit.

A rules file is YAML: `version`, `defaults`, optional `tiers` (read by the scoring
stage), and a list of `rules`, each one of seven kinds:

- `single`      one event matching `when`
- `sequence`    `steps` (2 or 3) in order within `within`, optionally in the same
                session/product/category, with relaxed or strict contiguity
- `count`       `count` matching events within `within`, optionally distinct by a field
- `absence`     `when` not followed by `unless` within `within`; fires at the deadline
- `session`     evaluated when a session ends (an inactivity gap, or a new session id)
- `repeat`      the same product/category in >= `sessions` sessions within `within`
- `suppression` negative signals: stop outreach for a scope; never points

Conditions (`when`, `unless`, `steps[]`, `all`, `none`) map a field path to a value
(equality), a list (any of), or one operator object: `{contains_any: [...]}`,
`{prefix: ...}`, `{regex: ...}`, `{in: [...]}`, `{not_in: [...]}`, `{exists: bool}`,
`{gt|gte|lt|lte: number}`. Field paths: `type`, `name` (a custom event's name, or a
signup's: `{type: custom, name: Quiz Completed}`), `source`, `session_id`, `page.type`,
`page.url`, `product.<field>`, `properties.<name>`.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Final, Literal, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from schemas.events import EVENT_TYPES, PAGE_TYPES

_UNITS: Final = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")


def _seconds(value: Any) -> Any:
    """'30m', '2h', '3d', '1.5h' or a number of seconds -> seconds (a finite float)."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '30m', '3d'")
    seconds: float | None = None
    try:
        if isinstance(value, int | float):
            seconds = float(value)
        elif isinstance(value, str):
            match = _DURATION.match(value)
            if match:
                seconds = float(match.group(1)) * _UNITS[match.group(2)]
    except OverflowError:
        seconds = math.inf
    if seconds is None:
        raise ValueError(
            f"{_shown(value)} is not a duration: use a number of seconds or e.g. '30m', '3d'"
        )
    if not math.isfinite(seconds):
        raise ValueError(f"{_shown(value)} is not a finite duration: use e.g. '30m', '3d'")
    return seconds


def _number(value: Any) -> Any:
    """An integer too large for a float is refused as infinite, not as "not a number"."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise ValueError(f"{_shown(value)} is not a finite number") from None
    return value


def _finite_values(values: list[Any]) -> None:
    """NaN equals nothing and infinity is no value an event carries: refused."""
    for value in values:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{value!r} is not a finite number")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:30]}... ({len(text)} characters)"


# Floats of the rules file are finite: the models set `allow_inf_nan=False`.
Seconds = Annotated[float, BeforeValidator(_seconds), Field(gt=0)]
Number = Annotated[float, BeforeValidator(_number)]


FIELD_ROOTS: Final = ("type", "name", "source", "session_id", "page", "product", "properties")
PRODUCT_FIELDS: Final = ("sku", "category", "price", "variant", "brand", "name", "quantity")
KeyName = Literal["shopper", "session", "product", "category"]
Tier = Literal["low", "mid", "high"]

_OPERATORS: Final = frozenset(
    {
        "eq",
        "in",
        "not_in",
        "contains_any",
        "prefix",
        "segment",
        "regex",
        "exists",
        "gt",
        "gte",
        "lt",
        "lte",
    }
)
# A category path's segments: `coffee/subscriptions`, `Subscriptions > Coffee`,
# `electronics.smartphone`, `Home | Garden`. Commas are not separators (`Clothing, Shoes`).
SEGMENT_SEPARATORS: Final = re.compile(r"\s*[/>|\\.\u203a\u00bb:]\s*")  # and the two guillemets
_SPELLING: Final = re.compile(r"[\s_\-]+")


def segment_key(text: str) -> str:
    """One segment as `segment` compares it: case, spaces, `-` and `_` do not matter, and
    a word's plural in `s` is its singular, so `Subscription-Boxes`, `subscription box`
    and `subscriptions_boxes` are one name."""
    words = _SPELLING.sub(" ", text.lower()).split()
    return " ".join(w[:-1] if len(w) > 3 and w.endswith("s") else w for w in words)


def segments(path: str) -> tuple[str, ...]:
    """A category path's segments, each as `segment_key` gives it; empty ones dropped."""
    return tuple(key for part in SEGMENT_SEPARATORS.split(path) if (key := segment_key(part)))


class Condition(BaseModel):
    """One test on one field. Built from the YAML shorthand by `Match`."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    eq: Any = None
    in_: list[Any] | None = Field(default=None, alias="in")
    not_in: list[Any] | None = None
    contains_any: list[str] | None = None
    prefix: list[str] | None = None
    # Any of the names is one of the value's path segments (`segments`), or whole words
    # of one, or a run of segments for a name that has separators itself. In the YAML, a
    # string names a list from the rules file's `lists:`, which `RuleSet` puts in its place.
    segment: list[str] | None = None
    regex: str | None = None
    exists: bool | None = None
    gt: Number | None = None
    gte: Number | None = None
    lt: Number | None = None
    lte: Number | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, dict):
            unknown = set(value) - _OPERATORS
            if unknown:
                raise ValueError(
                    f"unknown operator {sorted(unknown)[0]!r}; use one of {sorted(_OPERATORS)}"
                )
            if len(value) != 1:
                raise ValueError("give exactly one operator per field")
            out = dict(value)
            if isinstance(out.get("prefix"), str):
                out["prefix"] = [out["prefix"]]
            if isinstance(out.get("contains_any"), str):
                out["contains_any"] = [out["contains_any"]]
            if isinstance(out.get("segment"), str):
                raise ValueError(
                    f"segment names the list {out['segment']!r}, and the file's `lists:`"
                    " has no list of that name; add it there, or give the names inline"
                    " as a list"
                )
            return out
        if isinstance(value, list):
            return {"in": value}
        return {"eq": value}

    @model_validator(mode="after")
    def _finite(self) -> Condition:
        _finite_values([self.eq, *(self.in_ or []), *(self.not_in or [])])
        return self

    @field_validator("segment")
    @classmethod
    def _named(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not any(segments(name) for name in value):
            raise ValueError("segment needs at least one non-empty name")
        return value

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"bad regex {value!r}: {exc}") from exc
        return value


def _check_path(path: str) -> str:
    root, _, rest = path.partition(".")
    if root not in FIELD_ROOTS:
        raise ValueError(f"unknown field {path!r}: paths start with one of {list(FIELD_ROOTS)}")
    if root in ("page", "product", "properties") and not rest:
        raise ValueError(f"{path!r} needs a field, e.g. {root}.type")
    if root == "page" and rest not in ("type", "url"):
        raise ValueError(f"unknown field {path!r}: page has type and url")
    if root == "product" and rest not in PRODUCT_FIELDS:
        raise ValueError(f"unknown field {path!r}: product has {', '.join(PRODUCT_FIELDS)}")
    if root in ("type", "name", "source", "session_id") and rest:
        raise ValueError(f"{root!r} has no sub-fields")
    return path


class Match(BaseModel):
    """Which events a rule step takes. YAML: a mapping (all its conditions hold), or a
    list of such mappings (any one of them holds)."""

    model_config = ConfigDict(frozen=True)

    any: Annotated[list[dict[str, Condition]], Field(min_length=1)]

    @model_validator(mode="before")
    @classmethod
    def _from_yaml(cls, value: Any) -> Any:
        if isinstance(value, dict) and "any" not in value:
            value = [value]
        if isinstance(value, list):
            if any(not isinstance(alt, dict) or not alt for alt in value):
                raise ValueError(
                    "a match is a mapping like {type: product_view}, or a list of them"
                )
            return {"any": value}
        return value

    @field_validator("any")
    @classmethod
    def _valid(cls, alternatives: list[dict[str, Condition]]) -> list[dict[str, Condition]]:
        for conditions in alternatives:
            for path, cond in conditions.items():
                _check_path(path)
                values = [cond.eq] if cond.eq is not None else (cond.in_ or [])
                known = (
                    EVENT_TYPES if path == "type" else PAGE_TYPES if path == "page.type" else None
                )
                for value in values:
                    if known is not None and value not in known:
                        raise ValueError(f"{path}: {value!r} is not one of {sorted(known)}")
        return alternatives


class RuleBase(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    id: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{1,63}$")]
    description: str = ""
    points: Number = 0.0
    half_life: Seconds | None = None  # overrides defaults.half_life for this rule's points
    tier_hint: Tier | None = None
    actions: list[str] = Field(default_factory=list)
    cooldown: Seconds | None = None  # after firing, the same key does not fire again for this long


class SingleRule(RuleBase):
    kind: Literal["single"]
    when: Match


class SequenceRule(RuleBase):
    kind: Literal["sequence"]
    steps: Annotated[list[Match], Field(min_length=2, max_length=3)]
    within: Seconds
    same: KeyName = "shopper"
    contiguity: Literal["relaxed", "strict"] = "relaxed"


class CountRule(RuleBase):
    kind: Literal["count"]
    when: Match
    count: Annotated[int, Field(ge=2, le=1000)]
    within: Seconds
    distinct: str | None = None  # a field path: count distinct values, e.g. product.sku
    same: KeyName = "shopper"

    @field_validator("distinct")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        return None if value is None else _check_path(value)


class AbsenceRule(RuleBase):
    kind: Literal["absence"]
    when: Match
    unless: Match
    within: Seconds
    same: KeyName = "shopper"


class SessionRule(RuleBase):
    kind: Literal["session"]
    all: Match | None = None  # every event of the session matches
    none: Match | None = None  # no event of the session matches
    min_events: Annotated[int, Field(ge=1)] = 1
    max_events: Annotated[int, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _something(self) -> SessionRule:
        if self.all is None and self.none is None and self.max_events is None:
            raise ValueError("a session rule needs `all`, `none` or `max_events`")
        return self


class RepeatRule(RuleBase):
    kind: Literal["repeat"]
    when: Match
    key: Literal["product", "category"]
    sessions: Annotated[int, Field(ge=2, le=100)]
    within: Seconds


class SuppressionRule(RuleBase):
    kind: Literal["suppression"]
    when: Match
    scope: Literal["all", "channel", "category"]
    channel: str | None = None  # fixed channel; else taken from properties.channel
    duration: Seconds  # how long outreach stays suppressed
    count: Annotated[int, Field(ge=1)] = 1  # e.g. 3 bounces ...
    within: Seconds | None = None  # ... within 30 days
    except_actions: list[str] = Field(default_factory=list)  # e.g. feedback_request

    @model_validator(mode="after")
    def _no_points(self) -> SuppressionRule:
        if self.points:
            raise ValueError("suppression rules never add points; remove `points`")
        if self.count > 1 and self.within is None:
            raise ValueError("`count` above 1 needs `within`")
        return self


Rule = Annotated[
    SingleRule
    | SequenceRule
    | CountRule
    | AbsenceRule
    | SessionRule
    | RepeatRule
    | SuppressionRule,
    Field(discriminator="kind"),
]
# The rule types, and each one's `kind`, taken from the union and its Literals: a new
# type is named once, in `Rule`.
RULE_TYPES: Final[tuple[type[BaseModel], ...]] = get_args(get_args(Rule)[0])
RULE_KINDS: Final[tuple[str, ...]] = tuple(
    get_args(t.model_fields["kind"].annotation)[0] for t in RULE_TYPES
)


class Defaults(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    half_life: Seconds = 3 * 86400.0  # points halve every 3 days
    session_gap: Seconds = 1800.0  # a visit ends after 30 idle minutes
    allowed_lateness: Seconds = 300.0  # out-of-order events within 5 min still match


class TierThresholds(BaseModel):
    """Read by the scoring stage: the score needed to enter each tier, and how far below
    a threshold (a fraction of it) the score must fall before the shopper leaves the tier."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    low: Number = 1.0
    mid: Number = 15.0
    high: Number = 35.0
    hysteresis: Annotated[Number, Field(ge=0, lt=1)] = 0.1

    @model_validator(mode="after")
    def _ordered(self) -> TierThresholds:
        if not 0 < self.low < self.mid < self.high:
            raise ValueError("thresholds must rise: 0 < low < mid < high")
        return self


def _with_lists(node: Any, lists: dict[Any, Any]) -> Any:
    if isinstance(node, list):
        return [_with_lists(item, lists) for item in node]
    if not isinstance(node, dict):
        return node
    named = node.get("segment")
    if len(node) == 1 and isinstance(named, str) and isinstance(lists.get(named), list):
        return {"segment": list(lists[named])}
    return {key: _with_lists(item, lists) for key, item in node.items()}


class RuleSet(BaseModel):
    """Every number in it is finite (`allow_inf_nan=False`): NaN compares false to
    everything and infinity never decays, so either would break scoring silently."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    version: Literal[1] = 1
    # Named lists of names, for `segment` conditions: a shop's taxonomy (which categories
    # risk returns, which are subscriptions) is edited in one place, not in each rule.
    lists: dict[str, Annotated[list[str], Field(min_length=1)]] = Field(default_factory=dict)
    defaults: Defaults = Field(default_factory=Defaults)
    tiers: TierThresholds = Field(default_factory=TierThresholds)
    rules: Annotated[list[Rule], Field(min_length=1)]

    @model_validator(mode="before")
    @classmethod
    def _resolve_lists(cls, value: Any) -> Any:
        """`{segment: name}` anywhere in the rules becomes `{segment: [the list's names]}`.
        A name with no list is left as it is, and the condition then says so, at its line."""
        if not isinstance(value, dict):
            return value
        lists = value.get("lists")
        if not isinstance(lists, dict) or not lists or "rules" not in value:
            return value
        return {**value, "rules": _with_lists(value["rules"], lists)}

    @field_validator("rules")
    @classmethod
    def _unique(cls, rules: list[Rule]) -> list[Rule]:
        seen: set[str] = set()
        for rule in rules:
            if rule.id in seen:
                raise ValueError(f"rule id {rule.id!r} is used twice")
            seen.add(rule.id)
        return rules

    def half_life(self, rule: RuleBase) -> float:
        return rule.half_life or self.defaults.half_life
