"""The generated input files of tests/conftest.py: what the tests that read them count on,
checked straight from the files (not through the readers), and `read_events` on them as
on the real samples (tests/unit/test_readers.py, marked `samples`)."""

from __future__ import annotations

import csv
import gzip
import json
from collections import Counter
from pathlib import Path

from schemas import errors
from schemas.events import Event
from stream.offline.files import PROGRESS_EVERY_LINES, LineError, read_events
from tests.conftest import (
    REES46_COLUMNS,
    REES46_EVENTS,
    REES46_SHOPPERS,
    REES46_TYPES,
    write_rees46,
    write_taobao,
)

KINDS = {"view": "product_view", "cart": "add_to_cart", "purchase": "purchase"}


def _lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as handle:
        return handle.read().splitlines()


def test_the_rees46_file_holds_what_the_tests_count_on(rees46_file: Path) -> None:
    lines = _lines(rees46_file)
    rows = list(csv.reader(lines))
    assert lines[0] == REES46_COLUMNS
    assert [len(row) for row in rows[1:-1]] == [9] * REES46_EVENTS
    assert len(rows[-1]) == 8  # the last line cut short
    assert Counter(KINDS[row[1]] for row in rows[1:-1]) == REES46_TYPES
    assert len({row[7] for row in rows[1:-1]}) == REES46_SHOPPERS
    assert [row[0] for row in rows[1:-1]] == sorted(row[0] for row in rows[1:-1])  # time order
    # several visits of one shopper: a new session after 30 idle minutes
    assert len({row[8] for row in rows[1:-1]}) > REES46_SHOPPERS * 1.1
    assert sorted(n for n in Counter(lines[1:]).values() if n > 1) == [2, 2, 4]


def test_the_files_are_the_same_each_time(tmp_path: Path, rees46_file: Path) -> None:
    again = write_rees46(tmp_path / "again.csv")  # plain: the same text as the gzip one
    assert again.read_text(encoding="utf-8").splitlines() == _lines(rees46_file)
    first, second = write_taobao(tmp_path / "a.csv"), write_taobao(tmp_path / "b.csv")
    assert first.read_bytes() == second.read_bytes()


def test_the_rees46_file_reads_as_its_rows_with_the_cut_line_the_only_error(
    rees46_file: Path,
) -> None:
    items = list(read_events(rees46_file, "rees46"))
    events = [e for e in items if isinstance(e, Event)]
    failures = [e for e in items if isinstance(e, LineError)]
    lines = _lines(rees46_file)
    assert len(events) == REES46_EVENTS and {e.source for e in events} == {"rees46"}
    [failure] = failures
    assert failure.line_no == len(lines) and items[-1] is failure
    assert failure.reason == errors.MALFORMED_LINE
    assert failure.detail == "rees46: expected 9 fields, got 8 (truncated line?)"
    assert failure.text == lines[-1]
    # byte-identical rows share their content-derived id; all others differ
    repeats = sorted(n for n in Counter(e.id for e in events).values() if n > 1)
    assert repeats == [2, 2, 4]
    assert len({e.id for e in events}) == REES46_EVENTS - 5
    again = [e.id for e in read_events(rees46_file, "rees46") if isinstance(e, Event)]
    assert again == [e.id for e in events]


def test_progress_on_a_gzip_file_ends_at_the_file_size(rees46_file: Path) -> None:
    seen: list[int] = []
    items = list(read_events(rees46_file, "rees46", progress=seen.append))
    lines = len(_lines(rees46_file))
    assert len(items) == REES46_EVENTS + 1
    assert len(seen) == lines // PROGRESS_EVERY_LINES + 1
    assert seen == sorted(seen) and seen[0] > 0
    assert seen[-1] == rees46_file.stat().st_size


def test_the_taobao_and_otto_files_read_without_errors(taobao_file: Path, otto_file: Path) -> None:
    with gzip.open(taobao_file, "rt") as handle:
        taobao_rows = handle.read().splitlines()
    taobao = list(read_events(taobao_file, "taobao"))
    assert all(isinstance(e, Event) for e in taobao) and len(taobao) == len(taobao_rows)
    assert {e.type for e in taobao if isinstance(e, Event)} == {
        "product_view", "add_to_cart", "wishlist_add", "purchase",
    }  # fmt: skip

    with gzip.open(otto_file, "rt") as handle:
        sessions = [json.loads(line) for line in handle]
    otto = list(read_events(otto_file, "otto"))
    assert all(isinstance(e, Event) for e in otto)
    assert len(otto) == sum(len(s["events"]) for s in sessions) > 1000
    assert {e.type for e in otto if isinstance(e, Event)} == {
        "product_view", "add_to_cart", "purchase",
    }  # fmt: skip
    assert len({e.shopper_id for e in otto if isinstance(e, Event)}) == len(sessions)
