"""`schemas.trusted.construct` gives the very model validation gives, field for field."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel

from schemas.signals import Signal, Suppression
from schemas.trusted import construct


def _values() -> dict[str, object]:
    return {
        "signal_id": "r:abc",
        "rule_id": "r",
        "kind": "single",
        "shopper_id": "s-1",
        "at": datetime(2026, 11, 23, 10, 0, tzinfo=UTC),
        "points": 5.0,
        "half_life_seconds": 3600.0,
        "tier_hint": "mid",
        "actions": ["nurture"],
        "anchors": ["e1"],
        "session_id": None,
        "sku": "SKU-1",
        "category": "c/d",
        "suppression": Suppression(scope="all", until=datetime(2026, 12, 1, tzinfo=UTC)),
        "properties": {"cart": {"items": [], "value": 0.0}},
    }


def test_construct_equals_validation() -> None:
    values = _values()
    assert set(values) == set(Signal.model_fields)  # every field given, as construct needs
    built = construct(Signal, dict(values))
    validated = Signal.model_validate(values)
    assert built == validated
    assert built.to_json() == validated.to_json()
    assert built.model_dump() == validated.model_dump()
    assert isinstance(built, BaseModel) and built.model_fields_set == set(values)


def test_constructed_models_stay_frozen() -> None:
    built = construct(Signal, _values())
    try:
        built.points = 1.0  # type: ignore[misc]
    except Exception as exc:  # pydantic's ValidationError for a frozen instance
        assert "frozen" in str(exc)
    else:
        raise AssertionError("a constructed model must stay frozen")
