"""The micro workload (bench/micro.py) written natively in three stream processors, each
reading the same input topic and writing one record per tier change to its own topic.

    python -m bench.micro_peers PEER BOOTSTRAP INPUT OUTPUT EVENTS RESULT STATE_DIR

PEER is `quix`, `bytewax` or `pathway`. Each keeps one state per shopper the way its
framework keeps state, and calls the same per-event function (`micro.step`), so the
arithmetic is identical and only the frameworks differ:

- Quix Streams: a `StreamingDataFrame` with `apply(stateful=True)`, state in RocksDB on
  local disk, no changelog topic (the other two keep no recovery copy either); its own
  JSON deserializer.
- Bytewax: `stateful_map` keyed by shopper, one worker (`run_main`); the values decoded
  with orjson, as Bytewax has no deserializers.
- Pathway: its Kafka reader (JSON, in Rust) in static mode, a `stateful_many` reducer per
  shopper, one thread (`PATHWAY_THREADS=1`). A reducer is handed a batch of rows in no
  set order, so it sorts them by Kafka offset; it keeps the batch's records in its state,
  and they are flattened into the output, written sorted by input offset (a table has no
  order of its own: unsorted, a shopper's records of one batch came out shuffled). The
  output is a change stream: a record with the `pathway_diff` header -1 retracts one
  written before, when a shopper's row of records is replaced by the next batch's
  (`micro.peer_changes` keeps the +1s only).

Each writes {"events", "seconds", "wall_seconds"} to RESULT, or {"error": why} when the
framework is missing or fails, so the benchmark records null and prints why. "seconds"
runs from the first input record, seen in the peer's own per-record code, until its
last output is handed to the broker: start-up and the consumer group's join (~20 s for
Quix Streams on the embedded broker) are left out, as for our worker. Pathway's reader
hands Python nothing before its whole static batch is read, so its "seconds" start with
`pw.run` (connection set-up included: ~0.6 s on this machine, a handicap at small
inputs). Bytewax and Pathway stop at the end of the input as they found it, Quix Streams
after its EVENTS-th record; each one that stops at the end checks it saw EVENTS records.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
import uuid
from pathlib import Path
from typing import Any, Final, NamedTuple

import orjson

from bench import micro

PEERS: Final = ("quix", "bytewax", "pathway")
# What each peer needs, for the message when it is missing.
PACKAGES: Final = {"quix": "quixstreams", "bytewax": "bytewax", "pathway": "pathway"}


class Timing(NamedTuple):
    seconds: float  # from the first input record to the end
    wall_seconds: float  # from the framework's start (`run`) to the end


class Clock:
    """The first record's time, taken in the peer's own per-record code, and a count."""

    def __init__(self) -> None:
        self.first = 0.0
        self.count = 0

    def tick(self) -> None:
        if not self.count:
            self.first = time.perf_counter()
        self.count += 1

    def expect(self, n: int) -> None:
        """A peer that stops at the input's end must have seen all of it."""
        if self.count != n:
            raise RuntimeError(f"read {self.count:,} input records, not {n:,}")

    def timing(self, started: float) -> Timing:
        now = time.perf_counter()
        return Timing(now - (self.first or started), now - started)


def run_quix(bootstrap: str, source: str, sink: str, n: int, state_dir: Path) -> Timing:
    from quixstreams import Application, State

    app = Application(
        broker_address=bootstrap,
        consumer_group=f"micro-quix-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        loglevel="WARNING",
        use_changelog_topics=False,
        state_dir=str(state_dir),
        auto_create_topics=False,
    )
    inputs = app.topic(source, key_deserializer="bytes", value_deserializer="json")
    outputs = app.topic(sink, key_serializer="str", value_serializer="bytes")
    clock = Clock()

    def on_event(event: dict[str, Any], state: State[str, Any]) -> bytes | None:
        clock.tick()
        shopper = event["shopper_id"]
        saved = state.get("s")
        new, change = micro.step(
            (saved[0], saved[1]) if saved else None,
            shopper,
            event["event_id"],
            event["type"],
            event["ts"],
        )
        if new is not None:
            state.set("s", new)
        if clock.count >= n:
            app.stop()  # after this record's output: the producer is flushed on the way out
        return micro.encode(change) if change is not None else None

    sdf = app.dataframe(inputs)
    sdf = sdf.apply(on_event, stateful=True)
    sdf = sdf.filter(lambda value: value is not None)
    sdf = sdf.to_topic(outputs, key=lambda value: orjson.loads(value)["shopper_id"])
    started = time.perf_counter()
    app.run()
    return clock.timing(started)


def run_bytewax(bootstrap: str, source: str, sink: str, n: int, state_dir: Path) -> Timing:
    # Not in every environment (the `bench` extra): missing, mypy takes them as Any.
    import bytewax.operators as op  # type: ignore[import-not-found, unused-ignore]
    from bytewax.connectors.kafka import (  # type: ignore[import-not-found, unused-ignore]
        KafkaSink,
        KafkaSinkMessage,
        KafkaSource,
    )
    from bytewax.dataflow import Dataflow  # type: ignore[import-not-found, unused-ignore]
    from bytewax.testing import run_main  # type: ignore[import-not-found, unused-ignore]

    clock = Clock()

    def keyed(message: Any) -> tuple[str, dict[str, Any]]:
        clock.tick()
        event: dict[str, Any] = orjson.loads(message.value)
        return event["shopper_id"], event

    def scored(
        state: micro.State | None, event: dict[str, Any]
    ) -> tuple[micro.State | None, micro.Change | None]:
        return micro.step(state, event["shopper_id"], event["event_id"], event["type"], event["ts"])

    def out(item: tuple[str, micro.Change | None]) -> Any:
        shopper, change = item
        if change is None:
            return None
        return KafkaSinkMessage(shopper.encode(), micro.encode(change))

    flow = Dataflow("micro")
    messages = op.input("input", flow, KafkaSource([bootstrap], [source], tail=False))
    events = op.map("key", messages, keyed)
    changes = op.stateful_map("score", events, scored)
    records = op.filter_map("records", changes, out)
    op.output("output", records, KafkaSink([bootstrap], sink))
    started = time.perf_counter()
    run_main(flow)  # type: ignore[no-untyped-call, unused-ignore]
    clock.expect(n)
    return clock.timing(started)


def run_pathway(bootstrap: str, source: str, sink: str, n: int, state_dir: Path) -> Timing:
    import pathway as pw  # type: ignore[import-not-found, unused-ignore]

    class Event(pw.Schema):
        shopper_id: str
        event_id: str
        type: str
        ts: str

    clock = Clock()

    @pw.reducers.stateful_many
    def tiers(state: Any, rows: list[tuple[list[Any], int]]) -> Any:
        """(score, time, this batch's records as JSON) of one shopper."""
        scored: micro.State | None = (state[0], state[1]) if state else None
        out: list[tuple[int, str]] = []
        for (offset, shopper, event_id, kind, ts), diff in sorted(rows, key=lambda row: row[0][0]):
            clock.tick()
            if diff < 0:
                continue  # the input is a topic: insertions only
            scored, change = micro.step(scored, shopper, event_id, kind, ts)
            if change is not None:
                out.append((offset, micro.encode(change).decode()))
        if scored is None:
            return None
        return (scored[0], scored[1], tuple(out))

    settings = {
        "bootstrap.servers": bootstrap,
        "group.id": f"micro-pathway-{uuid.uuid4().hex[:6]}",
        "auto.offset.reset": "earliest",
        "session.timeout.ms": "6000",
    }
    events = pw.io.kafka.read(
        settings, topic=source, schema=Event, format="json", mode="static", with_metadata=True
    )
    events = events.select(
        pw.this.shopper_id,
        pw.this.event_id,
        kind=pw.this.type,
        ts=pw.this.ts,
        offset=pw.this._metadata["offset"].as_int(),
    )
    per_shopper = events.groupby(pw.this.shopper_id).reduce(
        pw.this.shopper_id,
        state=tiers(pw.this.offset, pw.this.shopper_id, pw.this.event_id, pw.this.kind, pw.this.ts),
    )
    items = per_shopper.select(
        pw.this.shopper_id,
        item=pw.apply_with_type(
            lambda s: list(s[2]) if s else [], list[tuple[int, str]], pw.this.state
        ),
    ).flatten(pw.this.item)
    records = items.select(
        pw.this.shopper_id,
        offset=pw.apply_with_type(lambda item: item[0], int, pw.this.item),
        record=pw.apply_with_type(lambda item: item[1], str, pw.this.item),
    )
    pw.io.kafka.write(
        records,
        {"bootstrap.servers": bootstrap},
        sink,
        format="plaintext",
        key=pw.this.shopper_id,
        value=pw.this.record,
        headers=[records.offset],
        sort_by=[records.offset],
    )
    started = time.perf_counter()
    pw.run(monitoring_level=pw.MonitoringLevel.NONE)
    clock.expect(n)
    # Its reader (Rust) hands Python nothing before the static batch is read: the clock
    # starts with the run, start-up included (module doc).
    clock.first = started
    return clock.timing(started)


RUNNERS: Final = {"quix": run_quix, "bytewax": run_bytewax, "pathway": run_pathway}


def main() -> None:
    peer, bootstrap, source, sink, total, result, state_dir = sys.argv[1:8]
    n = int(total)
    try:
        timing = RUNNERS[peer](bootstrap, source, sink, n, Path(state_dir))
        outcome: dict[str, Any] = {"events": n, **timing._asdict()}
    except ImportError as exc:
        outcome = {"error": f"{PACKAGES[peer]} is not installed ({exc}): pip install -e '.[bench]'"}
    except Exception as exc:
        traceback.print_exc()
        outcome = {"error": f"{type(exc).__name__}: {exc}"}
    Path(result + ".tmp").write_text(json.dumps(outcome))
    os.replace(result + ".tmp", result)


if __name__ == "__main__":
    main()
