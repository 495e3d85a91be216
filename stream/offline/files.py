"""Read a historical file (plain or gzip) in any known format, line by line.

Yields canonical events and, for lines that cannot be read, `LineError`s: a bad line
is reported and counted by the caller, never fatal.
"""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final, cast

from schemas.bounds import DEFAULT_BOUNDS, Bounds
from schemas.errors import PROCESSING_ERROR, InvalidEvent
from schemas.events import Event
from schemas.readers import FORMATS, Format
from stream.errors import ConfigError

GZIP_MAGIC: Final = b"\x1f\x8b"
PROGRESS_EVERY_LINES: Final = 2000
SHOW_LINE_ERRORS: Final = 10  # the commands print the first few bad lines in full
GUESS_LINES: Final = 20  # lines read in each format to guess the format of a file
# Replay: events in hand at once, ~6 KB each with their outputs (~1.3 GB); a bigger file
# is split by shopper into shards on disk (stream/offline/shards.py).
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
    path: Path,
    fmt: str,
    progress: Callable[[int], None] | None = None,
    bounds: Bounds = DEFAULT_BOUNDS,
) -> Iterator[Event | LineError]:
    """Events (or line errors) in file order, each within `bounds` (a line past one is a
    line error, `out_of_bounds`). `progress(bytes_read_of_the_file)` is called
    every few thousand lines; compare it with `path.stat().st_size`. A bad format or an
    unreadable file raises `ConfigError` here, before iteration starts."""
    spec = get_format(fmt)
    raw, text = _open(path)
    return _lines(path, spec, raw, text, progress, bounds)


def _lines(
    path: Path,
    spec: Format,
    raw: IO[bytes],
    text: IO[str],
    progress: Callable[[int], None] | None,
    bounds: Bounds,
) -> Iterator[Event | LineError]:
    line_no = 0
    with raw, text:
        try:
            for line_no, line in enumerate(text, start=1):
                if progress is not None and line_no % PROGRESS_EVERY_LINES == 0:
                    progress(raw.tell())
                if not line.strip():
                    continue
                if line_no == 1 and spec.header and line.startswith(spec.header):
                    continue
                try:
                    yield from spec.read(line, bounds)
                except InvalidEvent as exc:
                    yield LineError(line_no, exc.reason, exc.detail, line.rstrip("\r\n")[:200])
                except Exception as exc:  # a bug of ours: the line is reported, not fatal
                    detail = f"{type(exc).__name__}: {exc}"[:500]
                    yield LineError(line_no, PROCESSING_ERROR, detail, line.rstrip("\r\n")[:200])
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:  # click calls EOFError "Aborted!"
            where = f"{path.name} past line {line_no:,}" if line_no else path.name
            why = (
                "the gzip data ends early (a cut-short copy or download?)"
                if isinstance(exc, EOFError)
                else f"corrupt gzip data ({exc})"
            )
            raise ConfigError(f"cannot read {where}: {why}") from exc
        if progress is not None:
            progress(raw.tell())


def guess_formats(path: Path, lines: int = GUESS_LINES) -> list[str]:
    """The formats that read most of the first `lines` lines of the file as events, best
    first: the hint when a file gave no event at all in the format asked for."""
    shares: list[tuple[float, str]] = []
    for name in sorted(FORMATS):
        read = bad = 0
        try:
            for item in read_events(path, name):
                if isinstance(item, LineError):
                    bad += 1
                else:
                    read += 1
                if read + bad >= lines:
                    break
        except Exception:  # only a hint: a format that cannot read the file is no guess
            continue
        if read and read >= bad:
            shares.append((read / (read + bad), name))
    return [name for _, name in sorted(shares, key=lambda s: (-s[0], s[1]))]


def unreadable_file(path: Path, fmt: str, bad: int) -> str:
    """What the commands say when not one line of a file could be read."""
    guess = [name for name in guess_formats(path) if name != fmt]
    hint = f"; its first lines read as: {', '.join(guess)}" if guess else ""
    if bad == 1:
        return f"the one line of {path.name} could not be read as --format {fmt}{hint}"
    return f"none of the {bad:,} lines of {path.name} could be read as --format {fmt}{hint}"
