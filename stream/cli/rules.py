"""`intent rules check`: a rules file, checked."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def rules() -> None:
    """Rules files: check them (the default playbook ships built in)."""


@rules.command("check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path), required=False)
def rules_check(file: Path | None) -> None:
    """Validate FILE (default: the built-in rules) and explain every error with its line."""
    from stream.rulesfile import check_text, default_rules_text

    name = str(file) if file else "<built-in default.yaml>"
    try:
        text = file.read_text() if file else default_rules_text()
    except OSError as exc:
        raise click.ClickException(f"cannot read {file}: {exc.strerror}") from exc
    ruleset, problems = check_text(text)
    if ruleset is None:
        for problem in problems:
            click.echo(f"{name}: {problem}", err=True)
        raise click.ClickException(f"{len(problems)} problem(s) in {name}")
    kinds: dict[str, int] = {}
    for rule in ruleset.rules:
        kinds[rule.kind] = kinds.get(rule.kind, 0) + 1
    summary = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    click.echo(f"{name}: OK, {len(ruleset.rules)} rules ({summary})")
