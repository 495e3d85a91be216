"""Load and check rules files. Errors name the YAML line and the field path.

The default rules ship as package data: `stream/rules/default.yaml`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

from schemas.rules import RULE_KINDS, RuleSet
from stream.errors import ConfigError

if TYPE_CHECKING:
    from stream.settings import Settings

DEFAULT_RULES = "default.yaml"


@dataclass(frozen=True)
class Problem:
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line else "file"
        return f"{where}: {self.path or '<top>'}: {self.message}"


def default_rules_text() -> str:
    return resources.files("stream").joinpath("rules").joinpath(DEFAULT_RULES).read_text()


def check_text(text: str) -> tuple[RuleSet | None, list[Problem]]:
    """Parse and validate; the rule set, or every problem found with its line."""
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        return None, [Problem(line, "", f"not valid YAML: {getattr(exc, 'problem', exc)}")]
    if not isinstance(data, dict):
        return None, [Problem(1, "", "a rules file is a mapping with `rules:` (a list)")]
    # NaN and infinities anywhere (`.nan`, `.inf`, `-.inf`, 1.0e+999): named as such, once
    problems = [
        Problem(node.start_mark.line + 1, _path(data, loc), _NON_FINITE.format(node.value))
        for loc, node in _non_finite(root, [])
    ]
    try:
        ruleset = RuleSet.model_validate(data)
    except ValidationError as exc:
        found = list(problems)
        for err in exc.errors():
            loc = [part for part in err["loc"]]
            message = err["msg"].removeprefix("Value error, ")
            problem = Problem(_line(root, loc), _path(data, loc), message)
            if not any(_same_value(problem, nan) for nan in found):  # not the NaN again
                problems.append(problem)
        problems.sort(key=lambda p: p.line or 0)
        return None, problems
    return (None, problems) if problems else (ruleset, [])


def load_rules(path: Path | None = None) -> RuleSet:
    """The rules at `path`, or the built-in playbook. Raises ConfigError listing problems."""
    if path is None:
        text, name = default_rules_text(), f"<built-in {DEFAULT_RULES}>"
    else:
        try:
            text, name = Path(path).read_text(), str(path)
        except OSError as exc:
            raise ConfigError(f"cannot read rules file {path}: {exc.strerror}") from exc
    rules, problems = check_text(text)
    if rules is None:
        listing = "\n  ".join(str(p) for p in problems)
        raise ConfigError(
            f"rules file {name} is invalid ({len(problems)} problems); "
            f"run `intent rules check {name}`:\n  {listing}"
        )
    return rules


def load_ruleset(settings: Settings, path: Path | None = None) -> RuleSet:
    """The rules the pipeline runs: `path`, else `INTENT_RULES`, else the built-in
    playbook, with `INTENT_ALLOWED_LATENESS_SECONDS` applied. The worker and
    `intent replay` both load them here, so they run the same rules."""
    rules = load_rules(path or settings.rules)
    if settings.allowed_lateness_seconds is not None:
        if not math.isfinite(settings.allowed_lateness_seconds):
            raise ConfigError(
                "INTENT_ALLOWED_LATENESS_SECONDS must be a finite number of seconds, "
                f"not {settings.allowed_lateness_seconds}"
            )
        defaults = rules.defaults.model_copy(
            update={"allowed_lateness": settings.allowed_lateness_seconds}
        )
        rules = rules.model_copy(update={"defaults": defaults})
    return rules


def rules_source(settings: Settings, path: Path | None = None) -> str:
    """Where `load_ruleset` takes the rules from, for people to read."""
    chosen = path or settings.rules
    return str(chosen) if chosen else f"built-in {DEFAULT_RULES}"


def digest(rules: RuleSet) -> str:
    """A short hash of the rules as loaded: it changes with any value in them (points,
    windows, thresholds, descriptions, settings applied), not with comments or layout."""
    return hashlib.sha256(rules.model_dump_json().encode()).hexdigest()[:12]


_NON_FINITE = (
    "{!r} is NaN or infinite: points, durations, thresholds and all numbers must be finite"
)
_FLOAT_TAG = "tag:yaml.org,2002:float"
_FLOATS = yaml.SafeLoader("")  # its constructor reads YAML floats as safe_load does


def _non_finite(
    node: Any, loc: list[Any], seen: set[int] | None = None
) -> Iterator[tuple[list[Any], yaml.ScalarNode]]:
    """Where the YAML tree holds a float that is NaN or infinite: its location (keys and
    indices, as in a pydantic error) and its node. Each node once (aliases)."""
    seen = set() if seen is None else seen
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            yield from _non_finite(value, [*loc, key.value], seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _non_finite(item, [*loc, index], seen)
    elif (
        isinstance(node, yaml.ScalarNode)
        and node.tag == _FLOAT_TAG
        and not math.isfinite(_FLOATS.construct_yaml_float(node))
    ):
        yield loc, node


def _same_value(problem: Problem, non_finite: Problem) -> bool:
    """Whether a validation error is about a NaN or infinity already named: that value,
    or the list or condition it is in."""
    path, inner = problem.path, non_finite.path
    return problem.line == non_finite.line and (
        inner == path or inner.startswith((f"{path}.", f"{path}["))
    )


def _descend(node: Any, part: Any) -> Any:
    if isinstance(node, yaml.MappingNode) and isinstance(part, str):
        for key, value in node.value:
            if key.value == part:
                return value
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        return node.value[part]
    return None


def _line(root: Any, loc: list[Any]) -> int | None:
    """The line of the deepest YAML node the error location reaches."""
    node = root
    for part in loc:
        child = _descend(node, part)
        if child is not None:
            node = child  # parts that are not in the file (union tags) are skipped
    return node.start_mark.line + 1 if node is not None else None


def _path(data: Any, loc: list[Any]) -> str:
    """`rules[3].within`: the location as the user wrote it, without pydantic's tags."""
    out = ""
    node = data
    for part in loc:
        if isinstance(node, dict) and isinstance(part, str):
            if part in node:
                out += f".{part}" if out else part
                node = node[part]
            elif part not in RULE_KINDS and part not in ("any", "conditions"):
                return f"{out}.{part}" if out else part  # a missing field: name it, stop
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            rule_id = node[part].get("id") if isinstance(node[part], dict) else None
            out += f"[{part}]" + (f" ({rule_id})" if rule_id and out == "rules" else "")
            node = node[part]
    return out
