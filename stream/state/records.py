"""Each shopper's state as one record in Redis, and the partition's indexes beside it.

The worker that owns a partition of intent.events computes its shoppers' state in memory
(`stream.worker.owner`); Redis is where that state is made durable, once per batch, and
where readers (`intent shopper`, the views, the timer) find it.

Key layout. Every key of a partition carries the hash tag `{<partition>}`, so one batch's
writes to a partition land in one Redis Cluster slot and go in one fenced script call:

    <app>:epoch:{<p>}              the partition's epoch: each new owner increments it
    <app>:s:{<p>}:<shopper>        the shopper's record (`encode`); expires once nothing
                                   in it matters any more
    <app>:deadlines:{<p>}          sorted set: shopper -> next detection deadline
    <app>:decay:{<p>}              sorted set: shopper -> next score deadline (a demotion
                                   or the end of a suppression)
    <app>:tier:{<p>}:<tier>        set: the partition's shoppers in that tier
    <app>:audience:{<p>}:<name>    set: the partition's members of an audience

A record is one byte of format version, then the zlib-compressed JSON of
`[detection state, score state, forgotten-at]`, and for a shopper with an identity
`[..., identity]` (`Record.identity`), compressed with a preset dictionary: the
state's field names and the skeleton of a typical record (the default rules' ids, a
visit, a score), so that a small record costs little more than its event ids, times
and points. Format 3 took that skeleton into the dictionary (records a fifth to a third
smaller than format 2's, which had the field names only); format 2 is still read. The score state is
the scoring maths' (`stream.core.scoring`) without the ids of applied signals and the
last result: those served a score computed inside Redis before the output was sent. The
record is now written only after the output is acked, so a batch processed again starts
from a state that has none of it, and the detection state's recent event ids drop what
was applied already.

`forgotten-at`: `intent forget` reaches the owner as a record on intent.events; the
owner replaces the shopper's record with a tombstone holding the time of the forget,
kept FENCE_SECONDS, and events from before it are dropped.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Final

import orjson

from stream.state.redisbatch import Command, Script

# The first byte of a record: format 3, or format 2 written before 2026-12-06 (format 1,
# several keys per shopper, is converted by `intent migrate-state`).
FORMAT: Final = 3
OLD_FORMAT: Final = 2
FENCE_SECONDS: Final = 30 * 86400  # how long a forgotten shopper's tombstone lives
MAX_ARGS: Final = 4000  # arguments per command inside the fence script (Lua's stack)
TIERS: Final = ("low", "mid", "high", "suppressed")
# The preset dictionaries: strings every record repeats. Part of the format: changing
# one needs a new FORMAT. Format 2's: the field names.
ZDICT_2: Final = (
    b'"seen":[["ses":{"cur":{"k":"gap-","s":"l":"n":"r":{"buf":[["fired":["cd":{"":'
    b'"pend":"cart":"sku":"at":"v":1,"wm":'
    b'"tier":"none","seq":"reset":null,"T":"s":{"rules":{"cats":{"x":{'
    b'"low""mid""high""suppressed"'
    b'several_product_pages"category_then_product"single_page_visit"blog_only_visit"'
    b'navigation_only_visit"product_view"add_to_cart"checkout_started"purchase"'
    b"259200.0604800.086400.0"
)


# Format 3's: format 2's, the cart and checkout fields, then the skeleton of a record of
# a shopper of the default rules after one product view (zlib finds the latest strings
# of a dictionary the cheapest to refer to).
ZDICT: Final = (
    ZDICT_2 + b'"cartlog":[[,"add_to_cart","",1,,"",null]],"cart":{"":[1,,"",null]},'
    b'"checkout_abandoned":{"pending":[[,"",""]]},"cd":{"":},"wishlist_add"'
    b'"added_to_cart""checkout_started""purchase""remove_from_cart""product_view"'
    b'"page_view","done":[],"hits":['
    b'[{"v":1,"wm":,"seen":[[,""],[,""]],"ses":{"cur":{"k":"gap-","s":,"l":,"n":1,"r":'
    b'{"blog_only_visit":[false,true],"navigation_only_visit":[false,true],'
    b'"single_page_visit":[true,true]}}},"r":{"several_product_pages":{"buf":[[,"","",""]],'
    b'"fired":[]},"three_product_views":{"buf":[[,"","",""]],"fired":[]},'
    b'"category_then_product":{"buf":[[,"",2,"gap-"]],"fired":{}},'
    b'"repeat_product_views":{"keys":{"":[["gap-",]]}},'
    b'"repeat_collection_views":{"keys":{"":[["gap-",]]}}}},'
    b'{"tier":"low","seq":1,"reset":null,"T":,"s":{"259200.0":[0.5,]},'
    b'"rules":{"product_viewed":[0.5,,259200.0]},"cats":{"259200.0|":[0.5,]},"x":{}},null]'
)
DICTIONARIES: Final = {OLD_FORMAT: ZDICT_2, FORMAT: ZDICT}


class FormatError(ValueError):
    """A record this version cannot read."""


@dataclass(slots=True)
class Record:
    """One shopper's state: detection and score state, when it was last forgotten, and
    its place in an identity merge (`stream.core.identity`): None for most shoppers."""

    patterns: dict[str, Any]
    score: dict[str, Any]
    forgotten: float | None = None
    identity: dict[str, Any] | None = None


def _compressor() -> Any:
    return zlib.compressobj(6, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, ZDICT)


def encode(record: Record) -> bytes:
    score = {k: v for k, v in record.score.items() if k not in ("applied", "last")}
    fields: list[Any] = [record.patterns, score, record.forgotten]
    if record.identity:
        fields.append(record.identity)
    body = orjson.dumps(fields, option=orjson.OPT_NON_STR_KEYS)
    packer = _compressor()
    packed: bytes = packer.compress(body) + packer.flush()
    return bytes([FORMAT]) + packed


def decode(raw: bytes, new_score: dict[str, Any]) -> Record:
    """A record as `encode` wrote it; `new_score`: a fresh score state, whose fields a
    record without them gets."""
    if not raw:
        raise FormatError("an empty record")
    zdict = DICTIONARIES.get(raw[0])
    if zdict is None:
        raise FormatError(
            f"record format {raw[0]} is not {FORMAT} or {OLD_FORMAT}: written by another "
            "version (`intent migrate-state` converts the format before them)"
        )
    unpacker = zlib.decompressobj(-15, zdict)
    fields = orjson.loads(unpacker.decompress(raw[1:]) + unpacker.flush())
    patterns, score, forgotten = fields[:3]
    identity = fields[3] if len(fields) > 3 else None
    state = dict(new_score)
    state.update(score)
    state["s"] = {float(h): comp for h, comp in score.get("s", {}).items()}
    state["applied"] = {}
    state["last"] = None
    return Record(patterns, state, forgotten, identity)


@dataclass
class PartitionWrite:
    """What one batch writes to one partition: records (None: a tombstone's value is in
    `tombstones`), index moves, in the order they were made."""

    records: dict[str, tuple[bytes, int]] = field(default_factory=dict)  # value, TTL ms
    deadlines: dict[str, float | None] = field(default_factory=dict)  # detection
    decays: dict[str, float | None] = field(default_factory=dict)  # score
    tiers: dict[str, tuple[str, str]] = field(default_factory=dict)  # shopper -> from, to
    audiences: dict[tuple[str, str], str] = field(default_factory=dict)  # (aud, s) -> op
    erased: dict[str, list[str]] = field(default_factory=dict)  # shopper -> audiences

    def merge(self, other: PartitionWrite) -> None:
        """`other`'s writes after these (a later write of a shopper wins)."""
        self.records.update(other.records)
        self.deadlines.update(other.deadlines)
        self.decays.update(other.decays)
        for shopper, (old, new) in other.tiers.items():
            self.move(shopper, old, new)
        self.audiences.update(other.audiences)
        self.erased.update(other.erased)

    def move(self, shopper: str, old: str, new: str) -> None:
        first = self.tiers.get(shopper, (old, old))[0]
        self.tiers[shopper] = (first, new)

    def __bool__(self) -> bool:
        return bool(self.records or self.deadlines or self.decays or self.tiers or self.audiences)


def fence_source() -> str:
    return resources.files("stream").joinpath("state", "lua", "fence.lua").read_text()


class Keys:
    """Every key of one deployment (`app_id`)."""

    def __init__(self, app_id: str) -> None:
        self.prefix = app_id

    def epoch(self, partition: int) -> str:
        return f"{self.prefix}:epoch:{{{partition}}}"

    def record(self, partition: int, shopper: str) -> str:
        return f"{self.prefix}:s:{{{partition}}}:{shopper}"

    def deadlines(self, partition: int) -> str:
        return f"{self.prefix}:deadlines:{{{partition}}}"

    def decays(self, partition: int) -> str:
        return f"{self.prefix}:decay:{{{partition}}}"

    def tier(self, partition: int, tier: str) -> str:
        return f"{self.prefix}:tier:{{{partition}}}:{tier}"

    def audience(self, partition: int, name: str) -> str:
        return f"{self.prefix}:audience:{{{partition}}}:{name}"

    def audiences(self, partition: int) -> str:
        """The pattern of a partition's audience keys (SCAN)."""
        return f"{self.prefix}:audience:{{{partition}}}:*"


class Fence:
    """The fenced write of one partition: one script call that checks the writer's epoch
    against the partition's and only then makes every write (`lua/fence.lua`)."""

    def __init__(self, keys: Keys) -> None:
        self.keys = keys
        self.script = Script(fence_source())

    def command(self, partition: int, epoch: int, write: PartitionWrite) -> Command | None:
        """The script call for one partition's writes, or None if there are none."""
        steps = self.steps(partition, write)
        if not steps:
            return None
        keys = [self.keys.epoch(partition)]
        args: list[str | bytes] = [str(epoch)]
        for name, key, step_args in steps:
            keys.append(key)
            args += [name, str(len(step_args)), *step_args]
        return self.script.command(keys, args)

    def steps(self, p: int, write: PartitionWrite) -> list[tuple[str, str, list[Any]]]:
        """(command, key, arguments): the index moves, then the records. Redis does not
        undo a script's earlier commands when a later one fails (a key of another type
        in the index's place): with the records last, such a failure leaves them as they
        were, and the batch processed again computes the same moves."""
        keys = self.keys
        steps: list[tuple[str, str, list[Any]]] = []
        _zsteps(steps, keys.deadlines(p), write.deadlines)
        _zsteps(steps, keys.decays(p), write.decays)
        rem: dict[str, list[str]] = defaultdict(list)
        add: dict[str, list[str]] = defaultdict(list)
        for shopper, (old, new) in write.tiers.items():
            if old == new:
                continue
            if old != "none":
                rem[old].append(shopper)
            if new != "none":
                add[new].append(shopper)
        for shopper in write.erased:
            for tier in TIERS:
                rem[tier].append(shopper)
        for tier, shoppers in rem.items():
            _chunked(steps, "SREM", keys.tier(p, tier), shoppers)
        for tier, shoppers in add.items():
            _chunked(steps, "SADD", keys.tier(p, tier), shoppers)
        members: dict[tuple[str, str], list[str]] = defaultdict(list)
        for (audience, shopper), op in write.audiences.items():
            members[(op, audience)].append(shopper)
        for shopper, names in write.erased.items():
            for name in names:
                members[("remove", name)].append(shopper)
        for (op, audience), shoppers in members.items():
            name = "SADD" if op == "add" else "SREM"
            _chunked(steps, name, keys.audience(p, audience), shoppers)
        for shopper, (value, ttl_ms) in write.records.items():
            steps.append(("SET", keys.record(p, shopper), [value, "PX", str(ttl_ms)]))
        return steps


def _zsteps(
    steps: list[tuple[str, str, list[Any]]], key: str, due: dict[str, float | None]
) -> None:
    undue = [shopper for shopper, at in due.items() if at is None]
    _chunked(steps, "ZREM", key, undue)
    pairs: list[Any] = []
    for shopper, at in due.items():
        if at is not None:
            pairs += [repr(float(at)), shopper]
    _chunked(steps, "ZADD", key, pairs, 2)


def _chunked(
    steps: list[tuple[str, str, list[Any]]], name: str, key: str, args: list[Any], unit: int = 1
) -> None:
    size = MAX_ARGS - MAX_ARGS % unit
    for i in range(0, len(args), size):
        steps.append((name, key, args[i : i + size]))


def audience_names(keys: Iterable[bytes | str], prefix: str) -> list[str]:
    """Audience names from the keys a SCAN of `Keys.audiences` found."""
    names = []
    for key in keys:
        text = key.decode() if isinstance(key, bytes) else key
        names.append(text[len(prefix) :])
    return sorted(set(names))
