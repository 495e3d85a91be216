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
    assert ok.exit_code == 0 and f"OK, {len(load_rules().rules)} rules (" in ok.output
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
    relaid = "# my copy\n" + text.replace("  mid: 15 ", "  mid:    15.0 ")
    changed = text.replace("  mid: 15 ", "  mid: 16 ")
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


# Every number of a rules file is finite: NaN never compares true and infinity never
# decays, so either would break scoring silently. Named with its line, as YAML spells it.
NUMBERS = """\
version: 1
defaults:
  half_life: 3d
  session_gap: 30m
  allowed_lateness: 5m
tiers:
  low: 1
  mid: 15
  high: 35
  hysteresis: 0.1
rules:
  - id: viewed
    kind: single
    when: {type: product_view, product.price: {gt: 10}}
    points: 2
    half_life: 1d
    cooldown: 1h
  - id: abandoned
    kind: absence
    when: {type: checkout_started}
    unless: {type: purchase, properties.value: [5, 10]}
    within: 30m
    points: 15
"""


@pytest.mark.parametrize(
    ("old", "new", "line", "path"),
    [
        ("  half_life: 3d", "  half_life: .inf", 3, "defaults.half_life"),
        ("session_gap: 30m", "session_gap: .NaN", 4, "defaults.session_gap"),
        ("allowed_lateness: 5m", "allowed_lateness: -.inf", 5, "defaults.allowed_lateness"),
        ("low: 1", "low: -.inf", 7, "tiers.low"),
        ("mid: 15", "mid: .nan", 8, "tiers.mid"),
        ("high: 35", "high: .inf", 9, "tiers.high"),
        ("hysteresis: 0.1", "hysteresis: .nan", 10, "tiers.hysteresis"),
        ("{gt: 10}", "{gt: .nan}", 14, "rules[0] (viewed).when.product.price.gt"),
        ("points: 2", "points: .nan", 15, "rules[0] (viewed).points"),
        ("    half_life: 1d", "    half_life: .Inf", 16, "rules[0] (viewed).half_life"),
        ("cooldown: 1h", "cooldown: .inf", 17, "rules[0] (viewed).cooldown"),
        ("[5, 10]", "[5, .nan]", 21, "rules[1] (abandoned).unless.properties.value[1]"),
        ("within: 30m", "within: .inf", 22, "rules[1] (abandoned).within"),
        ("points: 15", "points: -.INF", 23, "rules[1] (abandoned).points"),
        ("points: 15", "points: 1.0e+400", 23, "rules[1] (abandoned).points"),  # inf, too
    ],
)  # fmt: skip
def test_nan_and_infinity_are_refused_with_their_line(
    old: str, new: str, line: int, path: str
) -> None:
    assert check_text(NUMBERS)[0] is not None
    assert NUMBERS.count(old) == 1
    rules, problems = check_text(NUMBERS.replace(old, new))
    assert rules is None
    spelled = new.rpartition(" ")[2].strip("[]{}")
    assert [(p.line, p.path) for p in problems] == [(line, path)]  # named once
    assert problems[0].message.startswith(f"'{spelled}' is NaN or infinite")


@pytest.mark.parametrize(
    ("old", "new", "line", "message"),
    [
        ("within: 30m", "within: " + "9" * 400, 22, "is not a finite duration"),
        ("within: 30m", "within: " + "9" * 400 + "d", 22, "is not a finite duration"),
        ("points: 15", "points: " + "9" * 400, 23, "is not a finite number"),
        ("high: 35", "high: " + "9" * 400, 9, "is not a finite number"),
    ],
    ids=["seconds", "duration", "points", "threshold"],
)
def test_numbers_too_large_for_a_float_are_refused_as_infinite(
    old: str, new: str, line: int, message: str
) -> None:
    rules, problems = check_text(NUMBERS.replace(old, new))
    assert rules is None
    [problem] = problems
    assert problem.line == line and message in problem.message
    assert len(problem.message) < 120  # the digits are not all repeated


def test_several_non_finite_values_each_named_in_line_order() -> None:
    text = NUMBERS.replace("points: 15", "points: .nan").replace("high: 35", "high: .inf")
    text = text.replace("within: 30m", "within: 30 minutes")  # and a problem of another kind
    rules, problems = check_text(text)
    assert rules is None
    assert [(p.line, p.path) for p in problems] == [
        (9, "tiers.high"), (22, "rules[1] (abandoned).within"), (23, "rules[1] (abandoned).points"),
    ]  # fmt: skip
    assert "'30 minutes' is not a duration" in problems[1].message


def test_rules_check_command_names_the_line_of_a_nan(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(NUMBERS.replace("points: 2", "points: .nan"))
    done = CliRunner().invoke(main, ["rules", "check", str(path)])
    assert done.exit_code == 1
    assert f"{path}: line 15: rules[0] (viewed).points: '.nan' is NaN or infinite" in done.output
    assert "1 problem(s)" in done.output
    with pytest.raises(ConfigError, match=r"line 15: rules\[0\] \(viewed\)\.points: '\.nan'"):
        load_rules(path)


def test_the_models_refuse_non_finite_numbers_given_in_python() -> None:
    """Not only from YAML: a rule set built from values refuses them too."""
    import yaml
    from pydantic import ValidationError

    data = yaml.safe_load(NUMBERS)
    for where, key, value in (
        (data["tiers"], "high", float("inf")),
        (data["defaults"], "half_life", float("nan")),
        (data["rules"][0], "points", float("-inf")),
        (data["rules"][1]["unless"], "properties.value", [float("nan")]),
        (data["rules"][1]["unless"], "properties.value", float("inf")),
    ):
        before = where[key]
        where[key] = value
        with pytest.raises(ValidationError, match="finite"):
            RuleSet.model_validate(data)
        where[key] = before
    assert RuleSet.model_validate(data).tiers.high == 35


def test_an_infinite_lateness_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTENT_ALLOWED_LATENESS_SECONDS", "inf")
    with pytest.raises(ConfigError, match="INTENT_ALLOWED_LATENESS_SECONDS must be a finite"):
        load_ruleset(Settings())


# --- named lists and `segment`: a shop's taxonomy in one place -----------------------------
LISTS = """\
version: 1
lists:
  plans: [subscription, subscribe and save]
rules:
  - id: plan_chosen
    kind: single
    when: {type: variant_selected, product.category: {segment: plans}}
  - id: garden_tools
    kind: single
    when: {type: product_view, product.category: {segment: [home/garden]}}
  - id: typo
    kind: single
    when: {type: product_view, product.category: {segment: plan}}
"""


def test_a_segment_condition_names_a_list_and_an_unknown_name_is_refused_at_its_line() -> None:
    rules, problems = check_text(LISTS)
    assert rules is None
    assert [(p.line, p.path) for p in problems] == [(13, "rules[2] (typo).when.product.category")]
    assert "'plan'" in problems[0].message and "lists:" in problems[0].message


@pytest.mark.parametrize(
    ("category", "plan", "garden"),
    [
        ("coffee/subscriptions", True, False),
        ("Subscriptions > Coffee", True, False),
        ("subscription-boxes", True, False),
        ("Tea | Subscribe_And_Save", True, False),
        ("Shop/Subscription", True, False),
        ("subscriptionsbox", False, False),  # a word must be whole
        ("coffee/unsubscribed", False, False),
        ("Home > Garden > Tools", False, True),
        ("garden/home", False, False),  # a run of segments keeps its order
        ("home", False, False),
        ("", False, False),
    ],
)
def test_segment_matches_any_part_of_the_path_in_any_spelling(
    category: str, plan: bool, garden: bool
) -> None:
    from schemas.events import Event
    from stream.core.detectors.match import compile_match

    rules, problems = check_text(LISTS.split("  - id: typo")[0])
    assert rules is not None, problems
    by_id = {rule.id: rule for rule in rules.rules}
    plan_chosen = compile_match(by_id["plan_chosen"].when)  # type: ignore[attr-defined]
    garden_tools = compile_match(by_id["garden_tools"].when)  # type: ignore[attr-defined]
    base = {"shopper_id": "s", "ts": "2026-11-23T10:00:00Z"}
    product = {"sku": "X", "category": category}
    chosen = Event.model_validate({**base, "type": "variant_selected", "product": product})
    viewed = Event.model_validate({**base, "type": "product_view", "product": product})
    assert plan_chosen(chosen) is plan
    assert garden_tools(viewed) is garden
    assert not plan_chosen(viewed)  # the type still has to hold
