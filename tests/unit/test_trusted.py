"""`schemas.trusted.construct` gives the very model validation gives, field for field."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
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


def test_outputs_built_without_validation_equal_validated_ones(otto_file: Path) -> None:
    """Every output of a replay (tier changes and audience changes are constructed) is
    exactly what validating its own fields gives."""
    from stream.offline.replay import replay
    from stream.rulesfile import load_rules

    result = replay(otto_file, "otto", load_rules())
    outputs = [*result.changes, *(o.value for o in result.actions)]
    assert len(result.changes) > 50 and len(result.actions) > 200
    for value in outputs:
        again = type(value).model_validate(value.model_dump())
        assert again == value
        assert again.to_json() == value.to_json()


def test_instances_share_one_fields_set_that_copies_leave_alone() -> None:
    """One set of field names per class (a set per instance was a third of replay's
    memory); a copy with updates gets its own, and the shared one keeps every field."""
    first, second = construct(Signal, _values()), construct(Signal, _values())
    assert first.model_fields_set is second.model_fields_set
    assert first.model_fields_set == set(Signal.model_fields)
    copied = first.model_copy(update={"points": 2.0})
    assert copied.points == 2.0 and first.points == 5.0
    assert copied.model_fields_set is not first.model_fields_set
    assert first.model_fields_set == set(Signal.model_fields)
    assert second == construct(Signal, _values())


def test_construct_refuses_a_model_that_is_not_frozen() -> None:
    """A mutable model would add to the shared fields set on assignment."""

    class Loose(BaseModel):
        name: str

    with pytest.raises(TypeError, match="frozen"):
        construct(Loose, {"name": "x"})


def test_to_json_is_model_dump_json_byte_for_byte(
    rees46_file: Path, otto_file: Path, tmp_path: Path
) -> None:
    """The wire form skips model_dump_json's round trip through str: the same bytes for
    every event, signal, tier change and action of a replay of REES46 and OTTO files and
    of canonical events of every type, with pages, properties, sessions and suppressions."""
    from stream.offline.files import read_events
    from stream.offline.replay import replay
    from stream.rulesfile import load_rules
    from tests.scenarios import generated_file

    checked = 0
    for path, fmt in (
        (rees46_file, "rees46"),
        (otto_file, "otto"),
        (generated_file(tmp_path, 3, 300), "canonical"),
    ):
        result = replay(path, fmt, load_rules())
        for signal in result.signals:
            assert signal.to_json() == signal.model_dump_json(exclude_none=True).encode()
        for value in [*result.changes, *(o.value for o in result.actions)]:
            assert value.to_json() == value.model_dump_json().encode()
        for event in read_events(path, fmt):
            if not isinstance(event, BaseModel):
                continue
            assert event.to_json() == event.model_dump_json(exclude_none=True).encode()
            checked += 1
        checked += len(result.signals) + len(result.changes) + len(result.actions)
    assert checked > 50_000
