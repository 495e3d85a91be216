"""Scores in Redis: the only caller of `lua/apply.lua`, and the only place that builds
score keys. An in-memory twin on the pure reference serves replay and tests.

Key layout (one hash tag per shopper: a shopper's keys would share a Redis Cluster slot):
    <app>:{<shopper>}:score     hash: tier, seq, T, reset, components (see apply.lua)
    <app>:{<shopper>}:applied   sorted set: applied signal ids (dedupe; newest 1000 kept)
    <app>:{<shopper>}:last      string: the last result that applied signals or demoted
                                (apply.lua: handed back when that call comes again)
All three expire when the score has decayed below 0.01 points (and no suppression runs).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from importlib import resources
from typing import Any, Final, cast

import orjson
import redis.asyncio as aioredis
from prometheus_client import Counter

from stream.core import scoring
from stream.core.scoring import Change, Result, ScoreConfig, ScoreSignal
from stream.state.redisbatch import Command, Script, zrem_by_partition

# What one scoring call leaves to index once its output is sent (`index_commands`).
Deadlines = dict[str, tuple[int, float | None]]  # shopper -> partition, next decay time
Audiences = list[tuple[str, str, str]]  # (op, audience, shopper)
Moves = list[tuple[str, str, str]]  # (shopper, from tier, to tier)
IndexWrite = tuple[Deadlines, Audiences, Moves]


def lua_source() -> str:
    return (
        resources.files("stream")
        .joinpath("state")
        .joinpath("lua")
        .joinpath("apply.lua")
        .read_text()
    )


def script_args(signals: list[ScoreSignal], now: float | None, cfg: ScoreConfig) -> bytes:
    return orjson.dumps(
        {
            "now": now,
            "cfg": {
                "low": cfg.low,
                "mid": cfg.mid,
                "high": cfg.high,
                "hysteresis": cfg.hysteresis,
                "cap": cfg.applied_cap,
            },
            "signals": [
                {
                    "id": s.id,
                    "t": s.t,
                    "p": s.points,
                    "h": s.half_life,
                    "rule": s.rule,
                    "cat": s.category,
                    "reset": s.reset,
                    "sup": s.suppress,
                    "until": s.until,
                    "g": s.group,
                }
                for s in signals
            ],
        }
    )


def parse_result(raw: bytes | str) -> Result:
    data: dict[str, Any] = orjson.loads(raw)
    return Result(
        from_tier=data["from"],
        to_tier=data["to"],
        score=float(data["score"]),
        at=float(data["at"]),
        seq=int(data["seq"]),
        deadline=float(data["deadline"]) if data["deadline"] else None,
        ttl=float(data["ttl"]),
        applied=int(data["applied"]),
        changes=[
            Change(
                from_tier=c["from"],
                to_tier=c["to"],
                score=float(c["score"]),
                at=float(c["at"]),
                seq=int(c["seq"]),
                reason=c["reason"],
                top=[(rule, float(p)) for rule, p in _list(c.get("top"))],
                cause=c["cause"] or None,
            )
            for c in _list(data.get("changes"))
        ],
        top=[(rule, float(p)) for rule, p in _list(data.get("top"))],
        suppressed=[(k, float(u)) for k, u in _list(data.get("sup"))],
        unsuppressed=list(_list(data.get("unsup"))),
        new_ids=list(_list(data.get("ids"))),
        reset=float(data["reset"]) if data.get("reset") else None,
        active=list(_list(data.get("active"))),
        was=list(_list(data.get("was"))),
        after=_after(data.get("after")),
        held=_held(data.get("held")),
    )


def _after(value: Any) -> dict[str, int]:
    # cjson encodes an empty Lua table as {}; a result stored before "after" has none.
    return {k: int(v) for k, v in value.items()} if isinstance(value, dict) else {}


def _held(value: Any) -> dict[str, list[str]]:
    return {k: list(v) for k, v in value.items()} if isinstance(value, dict) else {}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _list(value: Any) -> list[Any]:
    # cjson encodes an empty Lua table as {} (an object), not [].
    return value if isinstance(value, list) else []


class ScoreStore:
    """Redis. `apply_many` costs one round trip for a whole batch of shoppers."""

    def __init__(
        self,
        client: aioredis.Redis,
        app_id: str,
        cfg: ScoreConfig | None = None,  # None: a reader (views, forget) that never scores
        roundtrips: Counter | None = None,
    ) -> None:
        self.redis = client
        self.prefix = app_id
        self.cfg = cfg
        self.script = Script(lua_source())
        self.roundtrips = roundtrips

    def _trip(self, op: str) -> None:
        if self.roundtrips is not None:
            self.roundtrips.labels(op).inc()

    def keys(self, shopper: str) -> list[str]:
        return [
            f"{self.prefix}:{{{shopper}}}:score",
            f"{self.prefix}:{{{shopper}}}:applied",
            f"{self.prefix}:{{{shopper}}}:last",
        ]

    async def apply_many(
        self, batch: dict[str, tuple[list[ScoreSignal], float | None]]
    ) -> dict[str, Result]:
        if not batch:
            return {}
        if self.cfg is None:
            raise ValueError("this ScoreStore was made without a ScoreConfig: it only reads")
        shoppers = list(batch)
        cfg, command = self.cfg, self.script.command
        raw = await self.script.run_all(
            self.redis,
            [
                command(self.keys(shopper), [script_args(*batch[shopper], cfg)])
                for shopper in shoppers
            ],
        )
        self._trip("score")
        return {s: parse_result(r) for s, r in zip(shoppers, raw, strict=True)}

    def decay_key(self, partition: int) -> str:
        return f"{self.prefix}:decay:{{{partition}}}"

    def audience_key(self, audience: str) -> str:
        return f"{self.prefix}:audience:{audience}"

    def tier_key(self, tier: str) -> str:
        return f"{self.prefix}:tier:{tier}"

    def index_commands(self, writes: list[IndexWrite]) -> list[Command]:
        """The commands of index writes, each write's after the one before (a later
        write of a shopper wins, as if they were made one by one). A write: next decay
        deadlines (shopper -> partition, time), audience membership changes (op,
        audience, shopper) and tier moves (shopper, from, to). The caller sends them
        (`redisbatch.execute`), after the output they index was sent."""
        return [c for write in writes for c in self._index_commands(*write)]

    def _index_commands(
        self, deadlines: Deadlines, audiences: Audiences, moves: Moves
    ) -> list[Command]:
        """One write's commands. Within it a shopper has at most one move (a write holds
        the results of one `apply_many`, one per shopper), so every SREM can go before
        every SADD."""
        # One command per key, not per shopper, packed by hiredis (`redisbatch`): redis-py
        # packed these arguments in Python, a cost per event `make hotpath` showed.
        tier_moves: dict[tuple[str, str], list[str]] = defaultdict(list)  # (op, tier)
        for shopper, old, new in moves:
            if old != "none":
                tier_moves[("rem", old)].append(shopper)
            if new != "none":
                tier_moves[("add", new)].append(shopper)
        due: dict[int, dict[str, float]] = defaultdict(dict)
        undue: dict[int, list[str]] = defaultdict(list)
        for shopper, (partition, deadline) in deadlines.items():
            if deadline is None:
                undue[partition].append(shopper)
            else:
                due[partition][shopper] = deadline
        final: dict[tuple[str, str], str] = {}  # (audience, shopper) -> the last op wins
        for op, audience, shopper in audiences:
            final[(audience, shopper)] = op
        members: dict[tuple[str, str], list[str]] = defaultdict(list)  # (op, audience)
        for (audience, shopper), op in final.items():
            members[(op, audience)].append(shopper)
        commands: list[Command] = []
        for (op, tier), shoppers in tier_moves.items():
            if op == "rem":
                commands.append(("SREM", self.tier_key(tier), *shoppers))
        for (op, tier), shoppers in tier_moves.items():
            if op == "add":
                commands.append(("SADD", self.tier_key(tier), *shoppers))
        for partition, shoppers in undue.items():
            commands.append(("ZREM", self.decay_key(partition), *shoppers))
        for partition, mapping in due.items():
            scored = [part for shopper, at in mapping.items() for part in (at, shopper)]
            commands.append(("ZADD", self.decay_key(partition), *scored))
        for (op, audience), shoppers in members.items():
            commands.append(
                ("SADD" if op == "add" else "SREM", self.audience_key(audience), *shoppers)
            )
        return commands

    async def tier_counts(self, tiers: tuple[str, ...]) -> dict[str, int]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for tier in tiers:
                pipe.scard(self.tier_key(tier))
            counts = await pipe.execute()
        return {tier: int(n) for tier, n in zip(tiers, counts, strict=True)}

    def unindex_commands(self, shoppers: dict[str, int]) -> list[Command]:
        """The commands that take shoppers (-> their partition) off the decay index."""
        return zrem_by_partition(self.decay_key, shoppers)

    async def due(self, partition: int, until: float, limit: int) -> dict[str, float]:
        """Shoppers whose score leaves its tier (or a suppression ends) by `until`."""
        rows = await self.redis.zrangebyscore(
            self.decay_key(partition), "-inf", until, start=0, num=limit, withscores=True
        )
        self._trip("decay_due")
        pairs = cast(list[tuple[bytes | str, float]], rows)
        return {_text(member): float(score) for member, score in pairs}

    async def read(self, shopper: str) -> dict[str, str]:
        raw = await self.redis.hgetall(self.keys(shopper)[0])
        return {_text(k): _text(v) for k, v in raw.items()}

    async def audience_members(
        self, audience: str, cursor: int, count: int
    ) -> tuple[list[str], int | None, int]:
        """A page of an audience's members (sorted), the cursor of the next page (None:
        the last), and the audience's size."""
        key = self.audience_key(audience)
        next_cursor, members = await self.redis.sscan(key, cursor, count=count)
        size = int(await self.redis.scard(key))
        return sorted(_text(m) for m in members), int(next_cursor) or None, size

    async def forget(self, shopper: str) -> int:
        return int(await self.redis.delete(*self.keys(shopper)))


class MemoryScoreStore:
    """The same interface on the pure reference: for replay without Redis, and tests."""

    def __init__(self, cfg: ScoreConfig) -> None:
        self.cfg = cfg
        self.states: dict[str, dict[str, Any]] = {}

    async def apply_many(
        self, batch: dict[str, tuple[list[ScoreSignal], float | None]]
    ) -> dict[str, Result]:
        out = {}
        for shopper, (signals, now) in batch.items():
            state = self.states.setdefault(shopper, scoring.new_state())
            out[shopper] = scoring.apply(state, signals, now, self.cfg)
        return out


TOP: Final = 5  # top signals in a profile


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).isoformat()


def profile(shopper: str, fields: dict[str, str], now: float) -> dict[str, Any]:
    """The score hash read back: the score decayed to `now` (or to its last event time,
    if that is later), tier, active suppressions, top signals and category scores."""
    if not fields:
        return {"shopper_id": shopper, "known": False, "tier": "none", "score": 0.0}
    last = float(fields.get("T", 0.0))
    at = max(now, last)
    score = 0.0
    rules: list[tuple[str, float]] = []
    categories: dict[str, float] = {}
    suppressions = []
    for key in sorted(fields):
        kind, _, rest = key.partition("|")
        parts = [float(x) for x in fields[key].split()] if kind in "src" else []
        if kind == "s":
            score += scoring.decay(parts[0], parts[1], float(rest), at)
        elif kind == "r":
            rules.append((rest, scoring.decay(parts[0], parts[1], parts[2], at)))
        elif kind == "c":
            h, _, category = rest.partition("|")
            categories[category] = categories.get(category, 0.0) + scoring.decay(
                parts[0], parts[1], float(h), at
            )
        elif kind == "x" and float(fields[key]) > at:
            scope, _, value = rest.partition(":")
            suppressions.append({"scope": scope, "value": value or None,
                                 "until": _iso(float(fields[key]))})  # fmt: skip
    rules.sort(key=lambda item: (-abs(item[1]), item[0]))
    return {
        "shopper_id": shopper,
        "known": True,
        "tier": fields.get("tier", "none"),
        "score": round(score, 6),
        "at": _iso(at),
        "last_signal_at": _iso(last),
        "transitions": int(fields.get("seq", 0)),
        "suppressions": suppressions,
        "top_signals": [{"name": n, "points": round(p, 6)} for n, p in rules[:TOP]],
        "categories": {c: round(v, 6) for c, v in sorted(categories.items(), key=lambda i: -i[1])},
    }
