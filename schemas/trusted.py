"""Models from values our own code built out of validated input, without validating again.

Pydantic's `model_construct` walks every field for defaults and aliases on each call,
and on the detection hot path that was a large share of the time. `construct` does what
it does for a complete set of values, far cheaper (docs/performance.md): the caller
passes every field, already of the declared type. A test checks it gives the same model
as validation.

Every instance of a class shares one set of field names (`model_fields_set`, which is
all of them): a set per instance held ~2 KB per replayed event, a third of replay's
memory. Sharing it is safe because it only ever holds every field name: pydantic adds
to it on assignment, which a frozen model refuses, and `model_copy(update=...)` adds to
a copy, with names already in it.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)

_FIELDS: dict[type[BaseModel], set[str]] = {}  # class -> its field names, shared


def construct(cls: type[M], values: dict[str, Any]) -> M:
    fields = _FIELDS.get(cls)
    if fields is None:
        if not cls.model_config.get("frozen"):
            raise TypeError(f"construct() shares the fields set: {cls.__name__} must be frozen")
        fields = _FIELDS[cls] = set(cls.model_fields)
    obj = cls.__new__(cls)
    setattr_ = object.__setattr__
    setattr_(obj, "__dict__", values)
    setattr_(obj, "__pydantic_fields_set__", fields)
    setattr_(obj, "__pydantic_extra__", None)
    setattr_(obj, "__pydantic_private__", None)
    return obj
