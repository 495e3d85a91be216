"""Read a historical file (plain or gzip) in any known format, line by line.

Yields canonical events and, for lines that cannot be read, `LineError`s: a bad line
is reported and counted by the caller, never fatal.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final, cast

from schemas.errors import InvalidEvent
from schemas.events import Event
from schemas.readers import FORMATS, Format
from stream.errors import ConfigError

GZIP_MAGIC: Final = b"\x1f\x8b"
PROGRESS_EVERY_LINES: Final = 2000
# Replay: events in hand at once, ~6 KB each with their outputs (~1.3 GB); a bigger file
# is split by shopper into shards on disk (stream/replay.py, README "Replay").
SHARD_EVENTS: Final = 200_000


@dataclass(frozen=True, slots=True)
class LineError:
    line_no: int
    reason: str
    detail: str
    text: str


def get_format(name: str) -> Format:
    try:
        return FORMATS[name]
    except KeyError:
        raise ConfigError(
            f"unknown format {name!r}; choose one of: {', '.join(sorted(FORMATS))}"
        ) from None


def _open(path: Path) -> tuple[IO[bytes], IO[str]]:
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed by read_events
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    binary: IO[bytes] = raw
    if raw.read(2) == GZIP_MAGIC:
        raw.seek(0)
        binary = cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb"))
    else:
        raw.seek(0)
    return raw, io.TextIOWrapper(
        binary, encoding="utf-8-sig", errors="replace", newline=""
    )  # BOM: Excel


def read_events(
    path: Path, fmt: str, progress: Callable[[int], None] | None = None
) -> Iterator[Event | LineError]:
    """Events (or line errors) in file order. `progress(bytes_read_of_the_file)` is called
    every few thousand lines; compare it with `path.stat().st_size`. A bad format or an
    unreadable file raises `ConfigError` here, before iteration starts."""
    spec = get_format(fmt)
    raw, text = _open(path)
    return _lines(spec, raw, text, progress)


def _lines(
    spec: Format, raw: IO[bytes], text: IO[str], progress: Callable[[int], None] | None
) -> Iterator[Event | LineError]:
    with raw, text:
        for line_no, line in enumerate(text, start=1):
            if progress is not None and line_no % PROGRESS_EVERY_LINES == 0:
                progress(raw.tell())
            if not line.strip():
                continue
            if line_no == 1 and spec.header and line.startswith(spec.header):
                continue
            try:
                yield from spec.parse(line)
            except InvalidEvent as exc:
                yield LineError(line_no, exc.reason, exc.detail, line.rstrip("\r\n")[:200])
        if progress is not None:
            progress(raw.tell())
