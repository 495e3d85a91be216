"""A file read in the wrong format says so: the bad lines shown, a non-zero exit when
not one line could be read, and the formats its first lines do read as."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from click.testing import CliRunner

from stream.cli import main
from stream.offline.files import guess_formats, unreadable_file

SAMPLES = {
    "rees46_2019-10-01_head.csv.gz": "rees46",
    "taobao_userbehavior_2017-11-26.csv.gz": "taobao",
    "otto_20_sessions.jsonl.gz": "otto",
}


@pytest.mark.parametrize(("name", "fmt"), SAMPLES.items())
def test_each_sample_is_guessed_as_its_own_format(shared_data: Path, name: str, fmt: str) -> None:
    assert guess_formats(shared_data / name) == [fmt]


@pytest.mark.parametrize("fmt", ["rees46", "taobao", "otto"])
def test_each_generated_file_is_guessed_as_its_own_format(
    request: pytest.FixtureRequest, fmt: str
) -> None:
    assert guess_formats(request.getfixturevalue(f"{fmt}_file")) == [fmt]


def test_canonical_json_reads_as_canonical_and_auto(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(
        '{"shopper_id": "s-1", "type": "page_view", "ts": "2026-01-01T00:00:00Z"}\n' * 3
    )
    assert guess_formats(path) == ["auto", "canonical"]


def _head(source: Path, lines: int, path: Path) -> Path:
    with gzip.open(source, "rt") as whole:
        head = [next(whole) for _ in range(lines)]
    path.write_text("".join(head))
    return path


def test_replay_in_the_wrong_format_exits_1_and_names_the_right_one(
    taobao_file: Path, tmp_path: Path
) -> None:
    sample = _head(taobao_file, 25, tmp_path / "taobao_head.csv")
    done = CliRunner().invoke(main, ["replay", str(sample), "--format", "rees46"])
    assert done.exit_code == 1, done.output
    # the first ten bad lines in full, then how many more
    assert done.output.count("malformed_line: rees46: expected 9 fields, got 5") == 10
    assert "... and 15 more unreadable lines" in done.output
    assert "replayed 0 events" in done.output  # the summary still comes first
    assert (
        "Error: none of the 25 lines of taobao_head.csv could be read "
        "as --format rees46; its first lines read as: taobao"
    ) in done.output


def test_a_file_with_some_bad_lines_replays_and_counts_them(rees46_file: Path) -> None:
    """The last line cut short, as in the REES46 export: reported, and the rest replayed."""
    with gzip.open(rees46_file, "rt", newline="") as whole:
        lines = whole.read().splitlines()
    done = CliRunner().invoke(main, ["replay", str(rees46_file), "--format", "rees46"])
    assert done.exit_code == 0, done.output
    assert len(lines) > 10_000
    assert f"line {len(lines)}: malformed_line: rees46: expected 9 fields, got 8" in done.output
    assert f"replayed {len(lines) - 2:,} events" in done.output  # not the header, not the cut
    assert "1 unreadable line (malformed_line: 1)" in done.output


def test_an_empty_file_is_no_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    done = CliRunner().invoke(main, ["replay", str(empty), "--format", "rees46"])
    assert done.exit_code == 0, done.output
    assert "replayed 0 events" in done.output


def test_the_message_for_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "one.csv"
    bad.write_text("garbage\n")
    assert (
        unreadable_file(bad, "rees46", 1)
        == "the one line of one.csv could not be read as --format rees46"
    )
