"""Rules files: the default loads; every error names its line and field."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from schemas.rules import RULE_KINDS, RuleSet
from stream.cli import main
from stream.errors import ConfigError
from stream.rulesfile import (
    check_text,
    default_rules_text,
    digest,
    load_rules,
    load_ruleset,
    rules_source,
)
from stream.settings import Settings

BAD = """\
version: 1
rules:
  - id: fine_rule
    kind: single
    when: {type: product_view}
  - id: bad_seq
    kind: sequence
    steps:
      - {type: product_vew}
      - {page.typ: returns}
    within: 30 minutes
  - id: no_unless
    kind: absence
    when: {type: checkout_started}
    within: 30m
  - id: loud_suppression
    kind: suppression
    when: {type: opt_out}
    scope: channel
    duration: 10d
    points: 5
"""


def test_default_rules_cover_every_kind() -> None:
    rules = load_rules()
    assert isinstance(rules, RuleSet)
    assert {rule.kind for rule in rules.rules} == set(RULE_KINDS)
    assert rules.defaults.allowed_lateness == 300
    assert rules.tiers.low < rules.tiers.mid < rules.tiers.high


def test_each_error_has_its_line_and_path() -> None:
    rules, problems = check_text(BAD)
    assert rules is None
    found = {(p.line, p.path) for p in problems}
    assert (9, "rules[1] (bad_seq).steps[0]") in found
    assert (10, "rules[1] (bad_seq).steps[1]") in found
    assert (11, "rules[1] (bad_seq).within") in found
    assert (12, "rules[2] (no_unless).unless") in found
    assert any(p.line == 16 and "never add points" in p.message for p in problems)
    messages = " ".join(p.message for p in problems)
    assert "'product_vew' is not one of" in messages
    assert "unknown field 'page.typ'" in messages
    assert "'30 minutes' is not a duration" in messages


def test_yaml_syntax_error_has_a_line() -> None:
    rules, problems = check_text("rules:\n  - id: x\n    kind: [single\n")
    assert rules is None
    assert problems[0].line is not None and "not valid YAML" in problems[0].message


def test_load_rules_raises_a_config_error_naming_the_check_command(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(BAD)
    with pytest.raises(ConfigError, match="intent rules check"):
        load_rules(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_rules(tmp_path / "missing.yaml")


def test_rules_check_command(tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(main, ["rules", "check"])
    assert ok.exit_code == 0 and "OK, 31 rules" in ok.output
    path = tmp_path / "rules.yaml"
    path.write_text(BAD)
    bad = runner.invoke(main, ["rules", "check", str(path)])
    assert bad.exit_code == 1
    assert "line 11: rules[1] (bad_seq).within" in bad.output


def test_default_file_is_the_one_shipped() -> None:
    shipped = Path(__file__).resolve().parents[2] / "stream" / "rules" / "default.yaml"
    assert default_rules_text() == shipped.read_text()


def test_the_digest_follows_what_the_rules_mean_not_their_layout(tmp_path: Path) -> None:
    text = default_rules_text()
    relaid = "# my copy\n" + text.replace("  high: 35", "  high:    35.0")
    changed = text.replace("  high: 35", "  high: 36")
    assert text != relaid and text != changed
    for name, body in (("relaid", relaid), ("changed", changed)):
        (tmp_path / name).write_text(body)
    assert digest(load_rules(tmp_path / "relaid")) == digest(load_rules())
    assert digest(load_rules(tmp_path / "changed")) != digest(load_rules())


def test_the_lateness_setting_is_applied_by_the_worker_and_replay_alike(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("INTENT_ALLOWED_LATENESS_SECONDS", "60")
    settings = Settings()
    rules = load_ruleset(settings)
    assert rules.defaults.allowed_lateness == 60
    assert digest(rules) != digest(load_rules())
    assert rules_source(settings) == "built-in default.yaml"
    custom = tmp_path / "mine.yaml"
    custom.write_text(default_rules_text())
    assert load_ruleset(settings, custom).defaults.allowed_lateness == 60
    assert rules_source(settings, custom) == str(custom)
