"""`intent migrate-state`: state written in format 1 (before 2026-12-05: several keys per
shopper, scores as a Redis hash computed by a Lua script) converted to format 2 (one
record per shopper, `records`).

Format 1, per shopper (hash tag: the shopper):
    <app>:{<shopper>}:patterns    detection state, JSON
    <app>:{<shopper>}:score       hash: tier, seq, T, reset, s|<h> "v r",
                                  r|<rule> "v r h", c|<h>|<category> "v r", x|<scope> until
    <app>:{<shopper>}:applied, :last   dedupe of the Lua script: no longer needed
    <app>:{<shopper>}:forgotten   when `intent forget` erased the shopper
and, per deployment, <app>:tier:<tier> and <app>:audience:<name> (sets of every shopper).

Each shopper's keys become one record under its partition, with the longest time to
live its keys had; the tier and audience sets are split by partition. The deadline and
decay indexes were per partition already and stay. Old keys are deleted once their
contents are written, so running it again finds nothing left to do. Stop the workers
first: a worker of the new version would start the migrated shoppers from empty.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import orjson
import redis
from redis.cluster import RedisCluster

from stream.core import scoring
from stream.core.detectors.engine import Engine
from stream.state.records import TIERS, Keys, Record, encode
from stream.state.store import partition_of

SCAN_COUNT: Final = 1000
MIN_TTL_MS: Final = 1000


@dataclass
class Migrated:
    shoppers: int = 0
    memberships: int = 0  # tier and audience set members moved
    keys_deleted: int = 0


def score_from_hash(fields: dict[str, str]) -> dict[str, Any]:
    """A format-1 score hash as the scoring maths' state."""
    state = scoring.new_state()
    for key, value in fields.items():
        kind, _, rest = key.partition("|")
        parts = value.split()
        if key == "tier":
            state["tier"] = value
        elif key == "seq":
            state["seq"] = int(value)
        elif key == "T":
            state["T"] = float(value)
        elif key == "reset":
            state["reset"] = float(value) if value else None
        elif kind == "s":
            state["s"][float(rest)] = [float(parts[0]), float(parts[1])]
        elif kind == "r":
            state["rules"][rest] = [float(parts[0]), float(parts[1]), float(parts[2])]
        elif kind == "c":
            h, _, category = rest.partition("|")
            state["cats"][f"{float(h)}|{category}"] = [float(parts[0]), float(parts[1])]
        elif kind == "x":
            state["x"][rest] = float(value)
    return state


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def migrate(
    client: redis.Redis | RedisCluster,
    app_id: str,
    partitions: int,
    progress: Callable[[int], None] | None = None,
    dry_run: bool = False,
) -> Migrated:
    """Convert every format-1 shopper and set of `app_id` (see the module's docstring)."""
    keys = Keys(app_id)
    done = Migrated()
    shoppers: set[str] = set()
    prefix = f"{app_id}:{{"
    for suffix in ("patterns", "score", "forgotten", "applied", "last"):
        for key in client.scan_iter(match=f"{app_id}:{{*}}:{suffix}", count=SCAN_COUNT):
            name = _text(key)
            shoppers.add(name[len(prefix) : -len(suffix) - 2])
    for shopper in sorted(shoppers):
        old = [f"{app_id}:{{{shopper}}}:{s}" for s in ("patterns", "score", "forgotten")]
        raw_patterns = client.get(old[0])
        fields = {_text(k): _text(v) for k, v in client.hgetall(old[1]).items()}
        fence = client.get(old[2])
        ttls = [int(client.pttl(k)) for k in old]
        record = Record(
            orjson.loads(raw_patterns) if raw_patterns else Engine.new_state(),
            score_from_hash(fields) if fields else scoring.new_state(),
            float(fence) if fence else None,
        )
        live = [t for t in ttls if t > 0]
        if record.patterns != Engine.new_state() or fields or fence:
            target = keys.record(partition_of(shopper, partitions), shopper)
            if not dry_run:
                client.set(target, encode(record), px=max(MIN_TTL_MS, max(live, default=0)))
            done.shoppers += 1
        everything = old + [f"{app_id}:{{{shopper}}}:{s}" for s in ("applied", "last")]
        if not dry_run:
            done.keys_deleted += int(client.delete(*everything))
        if progress is not None and done.shoppers % 1000 == 0:
            progress(done.shoppers)
    for kind, names in (("tier", list(TIERS)), ("audience", _audiences(client, app_id))):
        for name in names:
            source = f"{app_id}:{kind}:{name}"
            by_partition: dict[int, list[str]] = defaultdict(list)
            for member in client.sscan_iter(source, count=SCAN_COUNT):
                shopper = _text(member)
                by_partition[partition_of(shopper, partitions)].append(shopper)
            for partition, members in by_partition.items():
                target = (
                    keys.tier(partition, name) if kind == "tier" else keys.audience(partition, name)
                )
                if not dry_run:
                    client.sadd(target, *members)
                done.memberships += len(members)
            if by_partition and not dry_run:
                done.keys_deleted += int(client.delete(source))
    if progress is not None:
        progress(done.shoppers)
    return done


def _audiences(client: redis.Redis | RedisCluster, app_id: str) -> list[str]:
    """Names of format-1 audience sets (`<app>:audience:<name>`, no partition tag)."""
    names = set()
    prefix = f"{app_id}:audience:"
    for key in client.scan_iter(match=f"{prefix}*", count=SCAN_COUNT):
        name = _text(key)[len(prefix) :]
        if not name.startswith("{"):
            names.add(name)
    return sorted(names)
