"""What `intent replay` does when something other than a line fails: a cut-short or
corrupt gzip file, an output path that cannot be written, a Redis that does not answer.
Each fails with one line naming the cause, as early as it can be known, and leaves an
earlier output file of the same name as it was. The input: a generated REES46 file."""

from __future__ import annotations

import zlib
from pathlib import Path

from click.testing import CliRunner

from stream.cli import main


def cut_short(sample: Path, tmp_path: Path) -> tuple[Path, int]:
    """The file's first 3,000 compressed bytes, and how many whole lines they hold
    (counted with zlib, not through the reader)."""
    head = sample.read_bytes()[:3000]
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(head)
    return path, zlib.decompressobj(wbits=31).decompress(head).count(b"\n")


def replay(*args: str) -> tuple[int, str]:
    done = CliRunner().invoke(main, ["replay", *args])
    return done.exit_code, done.output


def test_a_cut_short_gzip_file_names_the_last_line_read(rees46_file: Path, tmp_path: Path) -> None:
    path, lines = cut_short(rees46_file, tmp_path)
    assert lines > 10
    code, output = replay(str(path), "--format", "rees46")
    assert code == 1, output
    assert (
        f"Error: cannot read cut.csv.gz past line {lines:,}: the gzip data ends early "
        "(a cut-short copy or download?)"
    ) in output
    assert "Aborted" not in output and "replayed" not in output


def test_corrupt_gzip_data_is_named(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.csv.gz"
    path.write_bytes(b"\x1f\x8b" + b"x" * 40)
    code, output = replay(str(path), "--format", "rees46")
    assert code == 1, output
    assert "Error: cannot read corrupt.csv.gz: corrupt gzip data (" in output
    assert "Redis" not in output


def test_an_output_that_cannot_be_written_fails_before_the_replay(
    rees46_file: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for option in ("--changes", "--actions", "--report"):
        target = blocker / ("out" if option == "--report" else "out.jsonl")
        code, output = replay(str(rees46_file), "--format", "rees46", option, str(target))
        assert code == 1, output
        assert f"Error: cannot write {blocker}" in output
        assert "reading" not in output and "Redis" not in output  # before the file is read


def test_a_failed_replay_leaves_the_earlier_output_files_as_they_were(
    rees46_file: Path, tmp_path: Path
) -> None:
    changes, actions = tmp_path / "changes.jsonl", tmp_path / "actions.jsonl"
    code, output = replay(
        str(rees46_file), "--format", "rees46",
        "--changes", str(changes), "--actions", str(actions),
    )  # fmt: skip
    assert code == 0, output
    before = changes.read_bytes(), actions.read_bytes()
    assert before[0] and before[1]

    path, _ = cut_short(rees46_file, tmp_path)
    for jobs in ("1", "2"):
        code, output = replay(
            str(path), "--format", "rees46", "--jobs", jobs,
            "--changes", str(changes), "--actions", str(actions),
        )  # fmt: skip
        assert code == 1, output
        assert (changes.read_bytes(), actions.read_bytes()) == before
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            "actions.jsonl",
            "changes.jsonl",
            "cut.csv.gz",
        ]  # fmt: skip  (no hidden partial file left)


def test_output_files_replace_the_earlier_ones_only_when_closed(
    rees46_file: Path, tmp_path: Path
) -> None:
    from stream.offline.outputs import OutputFiles
    from stream.offline.replay import replay as run
    from stream.rulesfile import load_rules
    from stream.settings import Settings

    part = run(rees46_file, "rees46", load_rules())
    changes = tmp_path / "out" / "changes.jsonl"
    changes.parent.mkdir()
    changes.write_text("earlier\n")
    for finish, shards in (("discard", 1), ("discard", 2), ("close", 2)):
        outputs = OutputFiles(changes, None, Settings().output_topics(), tmp_path)
        outputs.add(part, shards, 0)
        if shards == 1:  # the lines went to the hidden file beside it
            assert len(list(changes.parent.glob(".changes.jsonl.*.partial"))) == 1
        getattr(outputs, finish)()
        assert [p.name for p in changes.parent.iterdir()] == ["changes.jsonl"]
        assert not list(tmp_path.glob("*.part"))
    assert len(changes.read_text().splitlines()) == len(part.changes) > 0
