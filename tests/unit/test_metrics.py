"""What a fresh worker exports before anything happened: every error series at 0 (so
`rate()` says 0, not "no data"), and a `source` label that takes only known values."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from schemas.errors import REASONS
from stream.metrics import (
    OTHER_SOURCE,
    REDIS_STAGES,
    SEND_PATHS,
    SHOPPER_FAILURE_STAGES,
    SOURCES,
    Metrics,
    source_label,
)
from tests.prometheus_text import parse_metrics

ROOT = Path(__file__).resolve().parents[2]
WORKER_SOURCE = "\n".join(p.read_text() for p in sorted((ROOT / "stream" / "worker").glob("*.py")))


def scrape() -> dict[str, float]:
    """The exposition text of a new `Metrics`, as sample -> value."""
    return parse_metrics(generate_latest(Metrics(CollectorRegistry()).registry).decode())


@pytest.mark.parametrize(
    ("metric", "label", "values"),
    [
        ("intent_events_rejected_total", "reason", REASONS),
        ("intent_redis_errors_total", "stage", REDIS_STAGES),
        ("intent_send_errors_total", "path", SEND_PATHS),
        ("intent_shopper_failures_total", "stage", SHOPPER_FAILURE_STAGES),
    ],
)
def test_error_counters_are_exported_at_zero_for_every_known_value(
    metric: str, label: str, values: tuple[str, ...]
) -> None:
    samples = scrape()
    series = {k: v for k, v in samples.items() if k.startswith(metric + "{")}
    assert series == {f'{metric}{{{label}="{value}"}}': 0.0 for value in values}


def test_the_out_of_bounds_reason_and_the_sweeps_failures_are_there() -> None:
    samples = scrape()
    assert samples['intent_events_rejected_total{reason="out_of_bounds"}'] == 0.0
    assert samples['intent_shopper_failures_total{stage="sweep"}'] == 0.0


def _retried(node: ast.AST) -> str | None:
    """The stage of `retry("<stage>", ...)` or `partial(retry, "<stage>", ...)`."""
    if not isinstance(node, ast.Call):
        return None
    args = node.args
    if isinstance(node.func, ast.Name) and node.func.id == "partial" and args:
        node, args = args[0], args[1:]  # type: ignore[assignment]
    else:
        node = node.func
    if not (isinstance(node, ast.Attribute) and node.attr == "retry"):
        return None
    if args and isinstance(args[0], ast.Constant):
        return str(args[0].value)
    return None


def test_the_redis_stages_are_the_ones_the_worker_retries() -> None:
    """Every `retry("<stage>", ...)` of the worker's modules has its zero series, and no
    stage is zeroed that the worker never counts."""
    tree = ast.parse(WORKER_SOURCE)
    stages = {stage for node in ast.walk(tree) if (stage := _retried(node)) is not None}
    assert stages == set(REDIS_STAGES)


def test_the_send_paths_are_the_ones_the_worker_counts() -> None:
    text = WORKER_SOURCE
    assert set(re.findall(r"send_errors\.labels\(\"(\w+)\"\)", text)) == set(SEND_PATHS)


def test_known_sources_keep_their_name_and_any_other_is_other() -> None:
    for source in SOURCES:
        assert source_label(source) == source
    for made_up in ("test", "my-shop", "", "Segment", "canonical "):
        assert source_label(made_up) == OTHER_SOURCE == "other"
    assert OTHER_SOURCE not in SOURCES


def test_every_source_the_readers_and_adapters_set_is_known() -> None:
    """The `"source": "..."` of schemas/readers and schemas/adapters, and the canonical
    default: none would be counted as "other"."""
    set_in_code = set()
    for path in (ROOT / "schemas").glob("[ra]*/*.py"):  # readers/, adapters/
        set_in_code |= set(re.findall(r"\"source\"(?::|,) \"(\w+)\"", path.read_text()))
    assert "canonical" in set_in_code and "rees46" in set_in_code
    assert set_in_code <= SOURCES
    from schemas.readers import FORMATS

    assert set(FORMATS) - {"auto"} == SOURCES  # every format names its own source


def test_the_shopper_failure_stages_are_the_ones_the_worker_counts() -> None:
    text = WORKER_SOURCE + (ROOT / "stream" / "core" / "process.py").read_text()
    stages = set(re.findall(r"failures\.add\(\"(\w+)\"", text))
    stages |= set(re.findall(r"partial\(failures\.add, \"(\w+)\"\)", text))
    stages |= set(re.findall(r"\.apply\(\w+, failures, \"(\w+)\"\)", text))  # scoring failures
    stages |= set(re.findall(r"detect_as=\"(\w+)\"", text))
    stages |= set(re.findall(r"shopper_failures\.labels\(\"(\w+)\"\)", text))
    assert stages == set(SHOPPER_FAILURE_STAGES)
