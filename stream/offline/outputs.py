"""`intent replay --changes/--actions`: the output files, written shard by shard."""

from __future__ import annotations

import heapq
import json
import os
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, Final

import orjson

from schemas.outputs import OutputTopic
from stream.core.outputs import Output
from stream.offline.result import ReplayResult, _at

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND: Final = timedelta(microseconds=1)


class OutputFiles:
    """`--changes` and `--actions`, written shard by shard in the lines' final form.

    With one shard, lines go straight to the files, in time order. With several, each
    shard's lines (already in time order) go to a part file named by the shard's index,
    after a sort key, in this process or a forked one; `close` merges the parts, so the
    files come out in the order of a run in one piece.

    Each file is opened when this is made, so a path that cannot be written fails before
    the replay starts, not after it. The lines go to a hidden file beside it, renamed to
    the name asked for by `close`: a replay that fails or is stopped leaves an earlier
    file of that name as it was (`discard` removes the hidden one).
    """

    def __init__(
        self, changes: Path | None, actions: Path | None, topics: dict[OutputTopic, str], work: Path
    ) -> None:
        self.paths = {"changes": changes, "actions": actions}
        self.topics = topics
        self.work = work
        self.direct: dict[str, IO[str]] = {}
        self.partial: dict[str, Path] = {}
        try:
            for kind, path in self.paths.items():
                if path is None:
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
                self.direct[kind] = open(partial, "w", encoding="utf-8")  # noqa: SIM115
                self.partial[kind] = partial
        except OSError:
            self.discard()
            raise

    def add(self, part: ReplayResult, shards: int, index: int) -> None:
        lines: dict[str, list[tuple[tuple[Any, ...], str]]] = {}
        if self.paths["changes"] is not None:
            lines["changes"] = [
                ((_micros(c.at), c.shopper_id), c.model_dump_json()) for c in part.changes
            ]
        if self.paths["actions"] is not None:
            lines["actions"] = [
                ((_micros(_at(o)), o.topic, o.key), json.dumps(line))
                for o, line in zip(
                    part.actions, action_lines(part.actions, self.topics), strict=True
                )
            ]
        for kind in self.direct:
            if shards == 1:
                self.direct[kind].writelines(line + "\n" for _, line in lines[kind])
                continue
            with open(self.work / f"{kind}-{index:04d}.part", "w", encoding="utf-8") as out:
                out.writelines(
                    orjson.dumps(key).decode() + "\t" + line + "\n" for key, line in lines[kind]
                )

    def close(self) -> None:
        """Merge the parts, if any, and give each file its name."""
        for kind, out in self.direct.items():
            parts = sorted(self.work.glob(f"{kind}-*.part"))
            with ExitStack() as stack:
                files = [stack.enter_context(open(p, encoding="utf-8")) for p in parts]
                for line in heapq.merge(*files, key=_sort_key):
                    out.write(line.split("\t", 1)[1])  # JSON never holds a raw tab
            for p in parts:
                p.unlink()
            out.close()
            path = self.paths[kind]
            assert path is not None
            os.replace(self.partial.pop(kind), path)
        self.direct.clear()

    def discard(self) -> None:
        """Close and remove the files not yet renamed, and the parts (after a failure)."""
        for kind, out in self.direct.items():
            out.close()
            for p in self.work.glob(f"{kind}-*.part"):
                p.unlink()
        for partial in self.partial.values():
            partial.unlink(missing_ok=True)
        self.direct.clear()
        self.partial.clear()


def _micros(at: datetime) -> int:
    return (at - EPOCH) // MICROSECOND


def _sort_key(line: str) -> list[Any]:
    key: list[Any] = orjson.loads(line.split("\t", 1)[0])
    return key


def action_lines(actions: list[Output], topics: dict[OutputTopic, str]) -> Iterator[dict[str, Any]]:
    """`{"topic": "intent.actions.…", "key": shopper, "value": {…}}` per action."""
    for output in actions:
        yield {
            "topic": topics[output.topic],
            "key": output.key,
            "value": output.value.model_dump(mode="json"),
        }
