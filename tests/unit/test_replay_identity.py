"""Replay merges linked ids at the link's event time, and gives the same merges and ids
whether the file is replayed in one piece, split into shards on disk (the link found
after the anonymous id's events were spilled: the shards are written again by profile),
or in several processes."""

from __future__ import annotations

import json
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from stream.cli import main
from stream.core.identity import merge_id
from stream.offline.replay import replay
from stream.offline.shards import shard_of
from stream.rulesfile import load_rules
from tests.scenarios import T0, ev

PAIRS = 12


def _known(i: int) -> str:
    return f"user-{i * 37 + 5}"  # not the anonymous id's shape: lands in other shards


def _file(path: Path) -> Path:
    """Anonymous visitors who fill a cart and sign in; the links come last in the file,
    after every anonymous event, and shoppers who never sign in between them."""
    bodies: list[dict[str, Any]] = []
    links = []
    for i in range(PAIRS):
        anonymous, known = f"anon-{i}", _known(i)
        bodies += [
            ev(anonymous, i, "product_view", session=f"v{i}", sku=f"S{i}", category="shoes"),
            ev(anonymous, i + 1, "add_to_cart", session=f"v{i}", sku=f"S{i}", category="shoes"),
            ev(anonymous, i + 2, "checkout_started", session=f"v{i}"),
            ev(f"other-{i}", i, "product_view", session=f"o{i}", sku="S0", category="shoes"),
            ev(known, i - 300, "page_view", session=f"k{i}", page="home"),
        ]
        links.append({**ev(known, i + 3, "identify", session=f"v{i}"), "anonymous_id": anonymous})
    bodies += links
    bodies.append(ev("late-comer", 600, "page_view", page="home"))  # the file's end: +10 h
    path.write_text("".join(json.dumps(b) + "\n" for b in bodies))
    return path


def _ids(result: Any) -> list[str]:
    ids = [c.change_id for c in result.changes]
    for output in result.actions:
        value = output.value
        ids += [
            getattr(value, f) for f in ("action_id", "trigger_id", "record_id") if hasattr(value, f)
        ]
    return sorted(ids)


def test_a_profile_is_merged_at_its_link_whatever_the_shards(tmp_path: Path) -> None:
    path = _file(tmp_path / "links.jsonl")
    whole = replay(path, "canonical", load_rules())
    split = replay(path, "canonical", load_rules(), shard_events=10)
    assert split.shards >= 2 and whole.shards == 1
    n = split.shards
    apart = [i for i in range(PAIRS) if shard_of(f"anon-{i}", n) != shard_of(_known(i), n)]
    assert apart, "some pairs' ids are spilled into different shards, then brought together"
    assert whole.merges == split.merges == PAIRS
    assert _ids(split) == _ids(whole)
    merged = [c for c in whole.changes if c.reason == "merge" and c.shopper_id.startswith("user")]
    assert {c.merged_with for c in merged} == {f"anon-{i}" for i in range(PAIRS)}
    recoveries = [o.value for o in whole.actions if o.topic.value == "cart_recovery"]
    assert sorted(r.shopper_id for r in recoveries) == sorted(_known(i) for i in range(PAIRS))
    for r in recoveries:
        i = (int(r.shopper_id.removeprefix("user-")) - 5) // 37
        assert [item["sku"] for item in r.cart["items"]] == [f"S{i}"]
        at = (T0 + timedelta(minutes=i + 3)).timestamp()  # its sign-in
        assert any(a.startswith(merge_id(f"anon-{i}", r.shopper_id, at)) for a in _ids(whole))


@pytest.mark.parametrize("extra", [["--jobs", "2"], ["--jobs", "2", "--shard-events", "10"]])
def test_the_command_merges_the_same_in_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: list[str]
) -> None:
    path = _file(tmp_path / "links.jsonl")
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    outputs = []
    for name, more in (("whole", []), ("split", extra)):
        out = tmp_path / name
        args = ["replay", str(path), "--format", "canonical",
                "--changes", str(out / "changes.jsonl"),
                "--actions", str(out / "actions.jsonl"), *more]  # fmt: skip
        done = CliRunner().invoke(main, args)
        assert done.exit_code == 0, done.output
        assert f"{PAIRS} anonymous ids merged into known profiles" in done.output
        outputs.append(((out / "changes.jsonl").read_bytes(), (out / "actions.jsonl").read_bytes()))
    assert outputs[0] == outputs[1]
    assert outputs[0][0].count(b'"reason":"merge"') == 2 * PAIRS
    assert list(temp.iterdir()) == []


def test_a_link_to_an_id_with_no_events_in_the_file(tmp_path: Path) -> None:
    """The file starts after a cookie's visits: its link is all there is of it."""
    bodies = [
        ev("user-1", 0, "add_to_cart", sku="S1"),
        ev("anon-a", 1, "product_view", sku="S2"),
        {**ev("user-1", 2, "identify"), "anonymous_id": "anon-a"},
        {**ev("user-1", 3, "identify"), "anonymous_id": "anon-nobody"},
    ]
    path = tmp_path / "links.jsonl"
    path.write_text("".join(json.dumps(b) + "\n" for b in bodies))
    result = replay(path, "canonical", load_rules())
    assert result.failed == 0 and result.merges == 2
