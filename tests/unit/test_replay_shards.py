"""Replay split by shopper into shards on disk gives what a run in one piece gives."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from stream.cli import main
from stream.offline.outputs import action_lines
from stream.offline.replay import replay
from stream.rulesfile import load_rules
from stream.settings import Settings
from tests.conftest import REES46_EVENTS


def test_shards_give_the_results_of_one_piece(rees46_file: Path) -> None:
    rules = load_rules()
    whole = replay(rees46_file, "rees46", rules)
    split = replay(rees46_file, "rees46", rules, shard_events=3000)
    # 15,850 events expected from the first 2,000 lines (19,443 in all) / 3,000 = 5.3,
    # +25 % headroom
    assert (whole.shards, split.shards) == (1, 7)
    assert split.events == whole.events == REES46_EVENTS
    assert (split.shoppers, split.late, split.end) == (whole.shoppers, whole.late, whole.end)
    assert split.line_errors == whole.line_errors == {"malformed_line": 1}
    assert len(whole.changes) > 1000
    assert [c.model_dump() for c in split.changes] == [c.model_dump() for c in whole.changes]
    assert [s.model_dump() for s in split.signals] == [s.model_dump() for s in whole.signals]
    topics = Settings().output_topics()
    assert list(action_lines(split.actions, topics)) == list(action_lines(whole.actions, topics))
    assert (split.purchases, split.first_seen) == (whole.purchases, whole.first_seen)


def run_command(sample: Path, out: Path, *extra: str) -> str:
    args = [
        "replay", str(sample), "--format", "rees46",
        "--changes", str(out / "changes.jsonl"), "--actions", str(out / "actions.jsonl"),
        "--report", str(out / "report"), *extra,
    ]  # fmt: skip
    done = CliRunner().invoke(main, args)
    assert done.exit_code == 0, done.output
    return done.output


OUTPUT_FILES = ("changes.jsonl", "actions.jsonl", "report/report.json", "report/report.md")


@pytest.mark.parametrize(
    ("extra", "shards"),
    [
        (["--shard-events", "3000"], "7 shards"),  # spilled, replayed one after the other
        (["--jobs", "2"], "2 shards"),  # in memory, split in two for two processes
        (["--jobs", "2", "--shard-events", "3000"], "7 shards"),  # spilled, two processes
    ],
    ids=["spilled", "forked", "spilled-forked"],
)
def test_the_command_writes_the_same_files_in_shards_and_processes(
    rees46_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    extra: list[str],
    shards: str,
) -> None:
    temp = tmp_path / "temp"  # the spilled shards and the part files go here, then away
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert "shards" not in run_command(rees46_file, whole)
    assert shards in run_command(rees46_file, split, *extra)
    for name in OUTPUT_FILES:
        assert (split / name).read_bytes() == (whole / name).read_bytes(), name
    changes = [json.loads(line) for line in (split / "changes.jsonl").read_text().splitlines()]
    assert len(changes) > 1000
    assert [c["at"] for c in changes] == sorted(c["at"] for c in changes)  # merged in time order
    assert not list(tmp_path.glob("**/*.part"))
    assert list(temp.iterdir()) == []  # no shard, part file or folder left behind


def test_a_shard_size_below_one_is_refused(rees46_file: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        replay(rees46_file, "rees46", load_rules(), shard_events=0)
    done = CliRunner().invoke(main, ["replay", str(rees46_file), "--shard-events", "0"])
    assert done.exit_code == 2 and "--shard-events" in done.output


def summaries(run: Any, jobs: int, tmp_path: Path) -> Iterator[Any]:
    """`Replay.summaries` with no output files: what `intent replay` iterates."""
    from stream.offline.outputs import OutputFiles

    outputs = OutputFiles(None, None, Settings().output_topics(), tmp_path)
    yield from run.summaries(jobs, outputs)
    outputs.close()


@pytest.mark.parametrize("jobs", [1, 2])
def test_the_file_is_read_without_cyclic_gc_with_or_without_jobs(
    rees46_file: Path, tmp_path: Path, jobs: int
) -> None:
    """The whole run holds every event it read: each collection would re-scan them all
    (with --jobs, reading Taobao took 3.4 s instead of 2.0 while the collector ran)."""
    import gc

    from stream.offline.replay import Replay

    enabled: list[bool] = []
    run = Replay(
        rees46_file,
        "rees46",
        load_rules(),
        progress=lambda _: enabled.append(gc.isenabled()),
    )
    was = gc.isenabled()
    parts = list(summaries(run, jobs, tmp_path))
    assert len(parts) == jobs and run.events == REES46_EVENTS
    assert len(enabled) > 5 and not any(enabled)
    assert gc.isenabled() == was  # switched back on afterwards


@pytest.mark.parametrize("jobs", [1, 2])
def test_replay_progress_moves_within_a_shard_and_adds_up(
    rees46_file: Path, tmp_path: Path, jobs: int
) -> None:
    """`on_replayed` counts REPLAY_UNITS per event in all. In one process it moves while
    the one shard is replayed (the bar sat at 0 % until the whole file was done); with
    jobs, once per shard as it comes back."""
    from stream.offline.replay import REPLAY_UNITS, Replay

    seen: list[str | int] = []
    run = Replay(rees46_file, "rees46", load_rules(), on_replayed=seen.append)
    for _ in summaries(run, jobs, tmp_path):
        seen.append("shard")
    units = [n for n in seen if isinstance(n, int)]
    assert sum(units) == REPLAY_UNITS * run.events == REPLAY_UNITS * REES46_EVENTS
    if jobs == 1:
        assert seen.index("shard") > 20 and seen[-1] == "shard"  # 58k units, in steps of 2k
    else:
        assert seen.count("shard") == 2 and len(units) == 2
