"""The micro workload: the smallest piece of the processor's job that every peer can
express exactly, its single-pass reference, and the checker that compares a peer's output
with it.

    python -m bench.micro [--events N] [--selftest]          the reference alone
    python -m bench.micro --check TOPIC --bootstrap HOST:PORT [--events N] [--worker]

Why a micro workload: the full workload (seven rule kinds, sequences, absences, the
sweep, actions) exists only in our worker, so a peer framework can run it only by
calling our code (bench/quix_workload.py), which measures the framework's transport and
not how it keeps state. This one is small enough to write natively in each framework, so
the comparison is between ways of keeping per-shopper state on the same stream:

- points per event type only (`POINTS`), nothing else: no windows, no sequences, no
  purchase reset, no cooldown;
- one decayed score per shopper: score(T) = sum of points * 2^(-(T - t) / half-life),
  half-life 3 days, in event time (the events' `ts`, never the wall clock);
- tiers by thresholds only (`tier_of`): none < 1 <= low < 15 <= mid < 35 <= high, with no
  hysteresis, so a tier is a function of the score alone;
- one output record per tier change that an event causes: `Change(shopper_id,
  event_id, from_tier, to_tier, at_ms)`, where `from_tier` is the tier of the decayed
  score just before the event and `to_tier` the tier just after it, at the event's time.

Decay and the choice made for it. Between two events a score only decays, so it can fall
out of a tier with no event at all. Our worker notices that on its timer (the sweep),
and writes a `reason: "decay"` tier change at the moment of the crossing; a peer without
timers cannot: it would see the demotion only at the shopper's next event, if any, and
fold it into that event's record. Rather than make every peer emulate our timer, the
micro workload compares only the changes caused by events, and defines `from_tier` as
the tier of the decayed score at the event's time. With no hysteresis that is exactly
the tier our worker holds just before the event (it has evaluated every crossing up to
the event's time by then), so our worker's `reason: "signal"` records map one to one
onto the reference's records (`cause_event_id` is the event), and its `reason: "decay"`
records are dropped before comparing (`worker_change`). Since points are positive,
every record is a promotion. Our worker runs it from `rules_yaml()`: one `single` rule
per event type; `intent replay` with that file gives the same records.

Order. The input is keyed by shopper and each shopper's events are in event-time order
in one partition; the reference takes them in that order, and equal times in input
order (each event its own evaluation, as our worker scores one event's signals, then
the next). A peer's records are compared per shopper in the order they appear on the
output topic: a record in the right place is `exact`, a right record out of place
`reordered`, a record that never came `missing`, one the reference does not have
`extra`, one with the right shopper and event but other tiers or time `wrong`, and one
that came twice `duplicates`.

The input topic is written by `produce_exact`, and topics are read back by `read_topic`,
both around a quirk of the embedded broker: the end it reports for a partition is the
first offset of its last record batch + 1, so a reader that stops at the reported end
misses the rest of that batch.

The arithmetic follows our worker's to the bit (`score_event`: the same expressions in
the same order), so records on a threshold agree too: a single purchase reaches exactly
15, which is `mid`.
"""

from __future__ import annotations

import argparse
import bisect
import random
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Final, NamedTuple

import orjson

# Points per canonical event type; the Taobao sample has these four. A type not listed
# scores nothing and changes nothing.
POINTS: Final[dict[str, float]] = {
    "product_view": 1.0,
    "wishlist_add": 5.0,
    "add_to_cart": 10.0,
    "purchase": 15.0,
}
HALF_LIFE_SECONDS: Final = 3 * 86400.0
LOW: Final = 1.0
MID: Final = 15.0
HIGH: Final = 35.0
TIERS: Final = ("none", "low", "mid", "high")
RULE_PREFIX: Final = "micro_"  # our worker's rule ids: micro_<event type>
RETRACTION: Final = ("pathway_diff", b"-1")  # a header of Pathway's Kafka output
STALL_SECONDS: Final = 30.0  # reading a topic back: this long with nothing new is a failure

State = tuple[float, float]  # (score, event time it is valued at), epoch seconds


class Change(NamedTuple):
    """One tier change caused by one event: what every peer writes and the checker reads."""

    shopper_id: str
    event_id: str
    from_tier: str
    to_tier: str
    at_ms: int  # event time, epoch milliseconds

    @property
    def key(self) -> tuple[str, str]:
        return self.shopper_id, self.event_id


class Check(NamedTuple):
    """A peer's output against the reference, record by record (see the module doc)."""

    expected: int
    received: int
    exact: int
    reordered: int
    missing: int
    extra: int
    wrong: int
    duplicates: int

    @property
    def ok(self) -> bool:
        return self.exact == self.expected == self.received

    def summary(self) -> str:
        verdict = "exact" if self.ok else "DIFFERS"
        return (
            f"{verdict}: {self.exact:,} of {self.expected:,} exact, {self.reordered:,} "
            f"reordered, {self.missing:,} missing, {self.extra:,} extra, {self.wrong:,} "
            f"wrong, {self.duplicates:,} duplicates ({self.received:,} received)"
        )


def tier_of(score: float) -> str:
    if score >= HIGH:
        return "high"
    if score >= MID:
        return "mid"
    if score >= LOW:
        return "low"
    return "none"


def event_time(ts: str) -> float:
    """Epoch seconds of an ISO 8601 time (`Z` or an offset), as our ingest reads it."""
    return datetime.fromisoformat(ts).timestamp()


def score_event(state: State | None, kind: str, t: float) -> tuple[State | None, str, str, float]:
    """One event of one shopper: the new state, the tiers just before and after it, and
    the time the change is at. The worker's expressions: a later event moves the score to
    its time first; an earlier one (out of order) adds its points decayed to the score's
    time, which stays. Returns the state unchanged for a type with no points."""
    points = POINTS.get(kind, 0.0)
    if state is None:
        if not points:
            return None, "none", "none", t
        return (points, t), "none", tier_of(points), t
    v, r = state
    if t > r:
        before = v * 2.0 ** (-(t - r) / HALF_LIFE_SECONDS)
        if not points:
            return state, tier_of(before), tier_of(before), t
        after = before + points
        return (after, t), tier_of(before), tier_of(after), t
    if not points:
        return state, tier_of(v), tier_of(v), r
    after = v + points * 2.0 ** (-(r - t) / HALF_LIFE_SECONDS)
    return (after, r), tier_of(v), tier_of(after), r


def step(
    state: State | None, shopper: str, event_id: str, kind: str, ts: str
) -> tuple[State | None, Change | None]:
    """`score_event` on a canonical event's fields, with the record it causes, if any:
    the one function every peer calls per event, so that only the frameworks differ."""
    new, before, after, at = score_event(state, kind, event_time(ts))
    if before == after:
        return new, None
    return new, Change(shopper, event_id, before, after, round(at * 1000))


def encode(change: Change) -> bytes:
    return orjson.dumps(change._asdict())


def decode(value: bytes) -> Change:
    d = orjson.loads(value)
    return Change(d["shopper_id"], d["event_id"], d["from_tier"], d["to_tier"], int(d["at_ms"]))


def worker_change(value: bytes) -> Change | None:
    """Our worker's `TierChange` (schemas/outputs.py) as a micro record; None for one not
    caused by an event (a decay, see the module doc)."""
    d = orjson.loads(value)
    if d.get("reason") != "signal":
        return None
    at = round(event_time(d["at"]) * 1000)
    return Change(d["shopper_id"], d.get("cause_event_id") or "", d["from_tier"], d["to_tier"], at)


Expected = dict[str, list[Change]]  # shopper -> their records, in order


def reference(values: Iterable[bytes]) -> Expected:
    """The expected records from the input's values (canonical JSON events) in input
    order: one pass, one state per shopper."""
    states: dict[str, State | None] = {}
    out: Expected = {}
    loads = orjson.loads
    for value in values:
        e = loads(value)
        shopper = e["shopper_id"]
        states[shopper], change = step(
            states.get(shopper), shopper, e["event_id"], e["type"], e["ts"]
        )
        if change is not None:
            out.setdefault(shopper, []).append(change)
    return out


def check(expected: Expected, received: Iterable[Change]) -> Check:
    """Compare records in the order they were read with the reference (module doc)."""
    where: dict[tuple[str, str], tuple[int, Change]] = {}
    for changes in expected.values():
        for i, change in enumerate(changes):
            where[change.key] = (i, change)
    seen: set[tuple[str, str]] = set()
    order: dict[str, list[int]] = {}  # shopper -> reference positions, as received
    count = extra = wrong = duplicates = 0
    for change in received:
        count += 1
        if change.key in seen:
            duplicates += 1
            continue
        seen.add(change.key)
        found = where.get(change.key)
        if found is None:
            extra += 1
        elif found[1] != change:
            wrong += 1
        else:
            order.setdefault(change.shopper_id, []).append(found[0])
    in_order = sum(_longest_increasing(positions) for positions in order.values())
    matched = sum(len(positions) for positions in order.values())
    total = len(where)
    return Check(
        expected=total,
        received=count,
        exact=in_order,
        reordered=matched - in_order,
        missing=total - len(seen & where.keys()),
        extra=extra,
        wrong=wrong,
        duplicates=duplicates,
    )


def _longest_increasing(positions: Sequence[int]) -> int:
    """How many records can stay where they are: the rest were reordered."""
    tails: list[int] = []
    for p in positions:
        i = bisect.bisect_left(tails, p)
        if i == len(tails):
            tails.append(p)
        else:
            tails[i] = p
    return len(tails)


def rules_yaml() -> str:
    """The micro workload as our rules file: one `single` rule per event type with its
    points, the thresholds, no hysteresis, the half-life."""
    lines = [
        "# The micro workload (bench/micro.py): points per event type, nothing else.",
        "version: 1",
        "defaults:",
        f"  half_life: {HALF_LIFE_SECONDS:g}",
        f"tiers: {{low: {LOW:g}, mid: {MID:g}, high: {HIGH:g}, hysteresis: 0}}",
        "rules:",
    ]
    for kind, points in POINTS.items():
        lines += [
            f"  - id: {RULE_PREFIX}{kind}",
            "    kind: single",
            f"    when: {{type: {kind}}}",
            f"    points: {points:g}",
        ]
    return "\n".join(lines) + "\n"


# --- reading a peer's output back ---------------------------------------------------------


class Message(NamedTuple):
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


def read_topic(bootstrap: str, topic: str, quiet_seconds: float = 2.0) -> list[Message]:
    """Every record of `topic` now, partition by partition, each in offset order (a
    shopper's records are in one partition when keyed by shopper). Read until the
    reported ends and then until nothing more comes for `quiet_seconds`: the embedded
    broker reports a partition's end as the last record batch's first offset + 1, so the
    rest of that batch lies past the end it reports (`produce_exact`)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, max_partition_fetch_bytes=8 << 20
    )
    try:
        parts = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])
        ]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        by_part: dict[int, list[Message]] = {tp.partition: [] for tp in parts}
        stalled = time.monotonic() + STALL_SECONDS
        quiet = time.monotonic() + quiet_seconds
        while True:
            fetched = consumer.poll(timeout_ms=200, max_records=50_000)
            now = time.monotonic()
            if fetched:
                stalled, quiet = now + STALL_SECONDS, now + quiet_seconds
            for tp, records in fetched.items():
                by_part[tp.partition] += [
                    Message(r.key, r.value, list(r.headers or [])) for r in records
                ]
            if all(consumer.position(tp) >= ends[tp] for tp in parts):
                if now > quiet:
                    break
            elif now > stalled:
                raise RuntimeError(f"{topic}: nothing for {STALL_SECONDS:.0f} s before its end")
        return [m for p in sorted(by_part) for m in by_part[p]]
    finally:
        consumer.close()


def peer_changes(messages: Iterable[Message]) -> list[Change]:
    """A peer's records; a Pathway retraction (`pathway_diff` -1: its output is a change
    stream, and a shopper's row of records is replaced batch by batch) is no record."""
    return [decode(m.value) for m in messages if (RETRACTION not in m.headers)]


def produce_exact(bootstrap: str, topic: str, records: Sequence[tuple[bytes, bytes]]) -> float:
    """Produce keyed records so that every partition's reported end is its true end: each
    partition's last record goes out alone, in a batch of its own, after the rest. The
    embedded broker reports the last batch's first offset + 1 as the end (`read_topic`),
    and readers that stop at the end (Pathway's static mode, Bytewax without `tail`)
    would otherwise leave the rest of that batch unread. Returns the seconds it took."""
    from aiokafka.partitioner import DefaultPartitioner
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=50, batch_size=1 << 20, acks=1,
        max_request_size=8 << 20,
    )  # fmt: skip
    started = time.perf_counter()
    partitions = sorted(producer.partitions_for(topic))
    partitioner = DefaultPartitioner()
    last: dict[int, int] = {}  # partition -> index of its last record
    for i, (key, _) in enumerate(records):
        last[partitioner(key, partitions, partitions)] = i
    held = set(last.values())
    for i, (key, value) in enumerate(records):
        if i not in held:
            producer.send(topic, key=key, value=value)
    producer.flush()
    for i in sorted(held):
        key, value = records[i]
        producer.send(topic, key=key, value=value)
        producer.flush()
    producer.close()
    return time.perf_counter() - started


def create_topic(
    bootstrap: str, name: str, partitions: int, configs: dict[str, str] | None = None
) -> None:
    """A topic with `retention.ms` set (or `configs`): Quix Streams' stateful mode reads
    the input topic's configs, and the embedded broker reports none it was not given."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="bench-micro")
    try:
        wanted = configs or {"retention.ms": str(7 * 86400 * 1000)}
        admin.create_topics([NewTopic(name, partitions, 1, topic_configs=wanted)])
    finally:
        admin.close()


# --- the command line -----------------------------------------------------------------


def _events(n: int) -> list[tuple[bytes, bytes]]:
    from bench.run import events, taobao_rows

    return events(taobao_rows(), n)


def _perturbed(expected: Expected, seed: int = 7) -> Iterator[Change]:
    """The reference with one record dropped, one moved, one doubled, one invented and
    one wrong, per hundred shoppers with records: what the checker must tell apart."""
    rng = random.Random(seed)
    for i, changes in enumerate(expected.values()):
        out = list(changes)
        if i % 100 == 0:
            out.pop(rng.randrange(len(out)))
        elif i % 100 == 1 and len(out) > 1:
            out.reverse()
        elif i % 100 == 2:
            out.append(out[0])
        elif i % 100 == 3:
            out.append(out[0]._replace(event_id="invented"))
        elif i % 100 == 4:
            out[0] = out[0]._replace(to_tier="high" if out[0].to_tier != "high" else "mid")
        yield from out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--selftest", action="store_true", help="check a perturbed reference")
    parser.add_argument("--check", metavar="TOPIC", help="compare this topic's records")
    parser.add_argument("--bootstrap", help="the broker of --check")
    parser.add_argument(
        "--worker", action="store_true", help="the topic holds our worker's TierChange records"
    )
    parser.add_argument("--rules", type=Path, help="write our worker's rules file here")
    args = parser.parse_args(argv)
    if args.rules:
        args.rules.write_text(rules_yaml())
        print(f"wrote {args.rules}")
    records = _events(args.events)
    started = time.perf_counter()
    expected = reference(value for _, value in records)
    seconds = time.perf_counter() - started
    count = sum(len(changes) for changes in expected.values())
    print(
        f"reference: {args.events:,} events, {count:,} tier changes of {len(expected):,} "
        f"shoppers, {args.events / seconds:,.0f} events/s"
    )
    if args.selftest:
        print(f"perturbed reference: {check(expected, _perturbed(expected)).summary()}")
    if args.check:
        if not args.bootstrap:
            sys.exit("--check needs --bootstrap")
        messages = read_topic(args.bootstrap, args.check)
        if args.worker:
            got = [c for c in (worker_change(m.value) for m in messages) if c is not None]
        else:
            got = peer_changes(messages)
        print(f"{args.check}: {check(expected, got).summary()}")


if __name__ == "__main__":
    main()
