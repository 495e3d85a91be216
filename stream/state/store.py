"""Reads of the stored state: a shopper's profile (`intent shopper`, GET /shoppers), an
audience's members (GET /audiences), tier counts, and what the timer finds due.

A shopper's record lives with its partition of intent.events (`records.Keys`), the one
Kafka's default partitioner picks for the shopper id, so any reader finds it from the id
and the partition count (INTENT_PARTITIONS).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final, cast

from aiokafka.partitioner import murmur2

from stream.core import scoring
from stream.state.connection import Client
from stream.state.records import TIERS, Keys, Record, decode

TOP: Final = 5  # top signals in a profile


def partition_of(shopper: str, partitions: int) -> int:
    """The intent.events partition of a shopper: what aiokafka's and the Java client's
    default partitioner choose for the key."""
    hashed: int = murmur2(shopper.encode())
    return (hashed & 0x7FFFFFFF) % partitions


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class StateReader:
    """The stored state of one deployment (`app_id`), with `partitions` partitions."""

    def __init__(self, client: Client, app_id: str, partitions: int) -> None:
        self.redis = client
        self.keys = Keys(app_id)
        self.partitions = partitions

    async def record(self, shopper: str) -> Record | None:
        p = partition_of(shopper, self.partitions)
        raw = await self.redis.get(self.keys.record(p, shopper))
        if raw is None:
            return None
        return decode(raw.encode() if isinstance(raw, str) else raw, scoring.new_state())

    async def due_deadlines(self, partition: int, until: float, limit: int) -> list[str]:
        """Shoppers of a partition whose next detection deadline is at or before `until`."""
        members = await self.redis.zrangebyscore(
            self.keys.deadlines(partition), "-inf", until, start=0, num=limit
        )
        return [_text(m) for m in cast(list[bytes | str], members)]

    async def due_decays(self, partition: int, until: float, limit: int) -> dict[str, float]:
        """Shoppers whose score leaves its tier (or a suppression ends) by `until`."""
        rows = await self.redis.zrangebyscore(
            self.keys.decays(partition), "-inf", until, start=0, num=limit, withscores=True
        )
        pairs = cast(list[tuple[bytes | str, float]], rows)
        return {_text(member): float(score) for member, score in pairs}

    async def tier_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(TIERS, 0)
        for tier in TIERS:
            for p in range(self.partitions):
                counts[tier] += int(await self.redis.scard(self.keys.tier(p, tier)))
        return counts

    async def audience_members(
        self, audience: str, cursor: int, count: int
    ) -> tuple[list[str], int | None, int]:
        """A page of about `count` of an audience's members (sorted; like SSCAN, a page
        may hold a few more or fewer), the cursor of the next page (None: the last), and
        the audience's size. Members are kept per partition: a cursor is the partition's
        scan cursor times the partition count, plus the partition; a page goes on into
        the next partitions until it has `count` members."""
        n = self.partitions
        members: list[str] = []
        next_cursor: int | None = cursor
        while next_cursor is not None and len(members) < count:
            partition, scan = next_cursor % n, next_cursor // n
            key = self.keys.audience(partition, audience)
            found, some = await self.redis.sscan(key, scan, count=count - len(members))
            members += [_text(m) for m in some]
            if int(found):
                next_cursor = int(found) * n + partition
            else:
                next_cursor = partition + 1 if partition + 1 < n else None
        size = 0
        for p in range(n):
            size += int(await self.redis.scard(self.keys.audience(p, audience)))
        return sorted(members), next_cursor, size


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).isoformat()


def profile(shopper: str, record: Record | None, now: float) -> dict[str, Any]:
    """A record read back: the score decayed to `now` (or to its last evaluation, if that
    is later), tier, active suppressions, top signals and category scores; and the ids
    merged into it (`merged_ids`), or the profile it was merged into (`merged_into`)."""
    out = _profile(shopper, record, now)
    identity = (record.identity if record is not None else None) or {}
    if identity.get("ids"):
        out["merged_ids"] = sorted(identity["ids"])
    if identity.get("into"):
        out["merged_into"] = identity["into"][0]
    return out


def merged_into(record: Record | None) -> str | None:
    """The profile a merged id's state went to, or None."""
    into = ((record.identity if record is not None else None) or {}).get("into")
    return str(into[0]) if into else None


def _profile(shopper: str, record: Record | None, now: float) -> dict[str, Any]:
    state = None if record is None else record.score
    if state is None or state.get("T") is None:
        return {"shopper_id": shopper, "known": False, "tier": "none", "score": 0.0}
    last = float(state["T"])
    at = max(now, last)
    score = sum(scoring.decay(v, r, h, at) for h, (v, r) in sorted(state["s"].items()))
    rules = [(rule, scoring.decay(v, r, h, at)) for rule, (v, r, h) in state["rules"].items()]
    categories: dict[str, float] = {}
    for key, (v, r) in state["cats"].items():
        h, _, category = key.partition("|")
        categories[category] = categories.get(category, 0.0) + scoring.decay(v, r, float(h), at)
    suppressions = []
    for scope_key, until in sorted(state["x"].items()):
        if until > at:
            scope, _, value = scope_key.partition(":")
            suppressions.append({"scope": scope, "value": value or None, "until": _iso(until)})
    rules.sort(key=lambda item: (-abs(item[1]), item[0]))
    return {
        "shopper_id": shopper,
        "known": True,
        "tier": state.get("tier", "none"),
        "score": round(score, 6),
        "at": _iso(at),
        "last_signal_at": _iso(last),
        "transitions": int(state.get("seq", 0)),
        "suppressions": suppressions,
        "top_signals": [{"name": n, "points": round(p, 6)} for n, p in rules[:TOP]],
        "categories": {c: round(v, 6) for c, v in sorted(categories.items(), key=lambda i: -i[1])},
    }
