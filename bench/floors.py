"""What this machine allows before any rule runs: the floors under the targets.

    python -m bench.floors [--events N] [--rate R] [--seconds 5,20]   (make floors)

Each floor is a cost that every design with the worker's transport, canonical events and
outputs pays, whatever its detection and scoring do, measured on the embedded stack:

1. One worker's events/s (target >= 60,000). CPU of this process per event to consume
   the input (aiokafka `getmany`, the worker's consumer settings), to ingest it (bytes to
   validated canonical events, `ingest_batch`), and to send the records the worker's own
   pipeline gives for those events (`BatchSender.send_all`, acks awaited). With detection,
   scoring and Redis free, one worker could do at most 1e6 / their sum events/s.
   Redis: a score script that does one HSET, called as often per event as the worker
   calls the real one (counted on the same events), bounds what one Redis takes.
2. p99 at a fixed rate (target <= 50 ms at 5,000 events/s): `bench.run`'s own load
   generator and timing, with a forwarder process in place of the worker that does only
   the worker's transport: `getmany` with its fetch wait, one output record per event
   through `send_all`, acks, commit. Once for each duration asked (5 and 20 s; the bench
   offers 20), on fresh topics each time, with the broker's share of a core second by
   second: on the embedded broker it grows with the batches a partition holds.
3. Replay's events/s (target >= 200,000): reading the Taobao file into canonical events
   (`read_events`), no rule run.

Every run is appended to `bench/floors.json` and printed with the targets beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import os
import platform
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson
import redis
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from bench.run import (
    ROOT,
    TAOBAO,
    bench_latency,
    events,
    log,
    process_cpu,
    produce,
    redis_cpu,
    taobao_rows,
)
from stream.core.ingest import RawRecord, ingest_batch, ingest_limits
from stream.devstack.embedded import EmbeddedStack
from stream.metrics import Metrics
from stream.offline.files import LineError, read_events
from stream.rulesfile import load_ruleset
from stream.settings import Settings
from stream.topics import ensure_topics
from stream.worker.kafka import stream_consumer, stream_producer
from stream.worker.main import redis_client
from stream.worker.outbox import OutRecord
from stream.worker.pipeline import Pipeline
from stream.worker.runtime import tune_gc
from stream.worker.sender import BatchSender

FLOORS = ROOT / "bench" / "floors.json"
TARGETS: Final = {"events_per_s": 60_000, "p99_ms": 50.0, "replay_events_per_s": 200_000}
# The cheapest score script there is: one write of the shopper's hash.
FLOOR_SCRIPT: Final = "return redis.call('HSET', KEYS[1], 'v', ARGV[1])"
SCRIPT_CALLS: Final = 20_000  # calls of the floor script measured
SCRIPT_CHUNK: Final = 500  # calls per round trip, as a batch's shoppers go
READY_TIMEOUT_SECONDS: Final = 60.0  # the forwarder's group join
STALL_SECONDS: Final = 30.0  # reading the input: no record for this long is a failure


async def capture(
    settings: Settings, raw: list[RawRecord]
) -> tuple[list[list[OutRecord]], list[bytes]]:
    """The worker's pipeline over `raw` in batches, one worker owning every partition:
    each batch's output records, and one placeholder per fenced script call (one per
    partition a batch writes), for the script floor to make as many calls."""
    client = redis_client(settings)
    outputs: list[list[OutRecord]] = []
    current: list[OutRecord] = []

    async def send(records: list[OutRecord]) -> None:
        current.extend(records)

    rules = load_ruleset(settings)
    pipeline = Pipeline(None, settings, Metrics(CollectorRegistry()), rules, client, sender=send)
    pipeline.loop.routing.own_all(list(range(settings.partitions)))
    await hold_partitions(pipeline, range(settings.partitions))
    calls: list[bytes] = []
    write = pipeline.owner.write

    async def counted(writes: dict[int, Any]) -> int:
        calls.extend(b"x" for part in writes.values() if part)  # one script call each
        return await write(writes)

    pipeline.owner.write = counted  # type: ignore[method-assign]
    try:
        for i in range(0, len(raw), settings.batch_size):
            await pipeline.handle(raw[i : i + settings.batch_size])
            outputs.append(current[:])
            current.clear()
    finally:
        await client.aclose()
    return outputs, calls


async def hold_partitions(pipeline: Pipeline, partitions: Iterable[int]) -> None:
    """Take the partitions' write epochs, as a worker does when they are assigned to it,
    for a pipeline that fences its Redis writes by partition (one without, nothing)."""
    take: Any = getattr(getattr(pipeline, "owner", None), "take", None)
    if take is not None:
        await take(list(partitions))


async def consume_cpu(settings: Settings, n: int) -> float:
    """CPU seconds of this process to read n records of the clickstream as the worker does."""
    consumer = stream_consumer(settings)  # assigned, not subscribed: no group join
    await consumer.start()
    try:
        parts = [TopicPartition(settings.topic_clickstream, p) for p in range(settings.partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        got = 0
        started = time.process_time()
        stalled = time.monotonic() + STALL_SECONDS
        while got < n:
            fetched = await consumer.getmany(timeout_ms=1000, max_records=settings.batch_size)
            if fetched:
                got += sum(len(records) for records in fetched.values())
                stalled = time.monotonic() + STALL_SECONDS
            elif time.monotonic() > stalled:
                raise RuntimeError(f"read {got:,} of {n:,} records, then nothing for a while")
        return time.process_time() - started
    finally:
        await consumer.stop()


async def send_cpu(settings: Settings, outputs: list[list[OutRecord]]) -> float:
    """CPU seconds to send every batch's output with the worker's `send_all`."""
    loop = BatchSender(settings.topic_normalised)
    loop.producer = producer = stream_producer(settings)
    await producer.start()
    try:
        started = time.process_time()
        for records in outputs:
            await loop.send_all(records)
        return time.process_time() - started
    finally:
        await producer.stop()


def ingest_cpu(settings: Settings, raw: list[RawRecord]) -> float:
    limits = ingest_limits(settings)
    started = time.process_time()
    for i in range(0, len(raw), settings.batch_size):
        ingest_batch(raw[i : i + settings.batch_size], datetime.now(UTC), limits)
    return time.process_time() - started


def script_floor_us(redis_url: str, args: list[bytes]) -> float:
    """Redis CPU µs per call of `FLOOR_SCRIPT`, with the real calls' arguments."""
    client = redis.Redis.from_url(redis_url)
    script = client.register_script(FLOOR_SCRIPT)
    script(keys=["floor:warm"], args=[b"x"])  # loaded before the clock starts
    calls = [args[i % len(args)] for i in range(SCRIPT_CALLS)]
    before = redis_cpu(client)
    for start in range(0, len(calls), SCRIPT_CHUNK):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(len(calls), start + SCRIPT_CHUNK)):
            script(keys=[f"floor:{{s{i}}}:score"], args=[calls[i]], client=pipe)
        pipe.execute()
    spent = redis_cpu(client) - before
    client.close()
    return spent * 1e6 / len(calls)


def throughput(settings: Settings, n: int, taobao: Path = TAOBAO) -> dict[str, float | None]:
    """The per-event floors of one worker and one Redis on n events (`settings`' topics)."""
    ensure_topics(settings)
    inputs = events(taobao_rows(taobao), n)
    raw = [
        RawRecord(value, key, settings.topic_clickstream, i % settings.partitions, i)
        for i, (key, value) in enumerate(inputs)
    ]
    sync = redis.Redis.from_url(settings.redis_url.get_secret_value())
    before = redis_cpu(sync)
    log(f"the worker's pipeline over {n:,} events (a real Redis, no broker)")
    outputs, calls = asyncio.run(capture(settings, raw))
    script_us = (redis_cpu(sync) - before) * 1e6 / n
    sync.close()
    records = sum(len(batch) for batch in outputs)
    produce(settings.kafka_bootstrap, settings.topic_clickstream, inputs)
    log("consume, ingest, send")
    tune_gc()  # as the worker does once it is up (and bench/hotpath.py)
    consume = asyncio.run(consume_cpu(settings, n))
    ingest = ingest_cpu(settings, raw)
    send = asyncio.run(send_cpu(settings, outputs))
    floor_us = script_floor_us(settings.redis_url.get_secret_value(), calls) if calls else None
    per_event = {"consume": consume, "ingest": ingest, "send": send}
    transport_us = sum(per_event.values()) * 1e6 / n
    return {
        "events": n,
        "records_out_per_event": records / n,
        **{f"{k}_us_per_event": v * 1e6 / n for k, v in per_event.items()},
        "worker_floor_us_per_event": transport_us,
        "worker_floor_events_per_s": 1e6 / transport_us,
        "script_calls_per_event": len(calls) / n,
        "redis_script_us_per_event": script_us,
        "redis_floor_script_us_per_call": floor_us,
        "redis_floor_events_per_s": 1e6 / (floor_us * len(calls) / n) if floor_us else None,
    }


def forward(settings: Settings, ready: Any) -> None:  # pragma: no cover - in a child process
    """The worker's transport and nothing else: each clickstream record becomes one
    tier-change-shaped record (what `bench_latency` times) on the tier-change topic."""
    asyncio.run(_forward(settings, ready))


async def _forward(settings: Settings, ready: Any) -> None:  # pragma: no cover - child
    consumer = stream_consumer(settings)
    consumer.subscribe([settings.topic_clickstream])
    loop = BatchSender(settings.topic_normalised)
    loop.producer = producer = stream_producer(settings)
    await producer.start()
    await consumer.start()
    topic = settings.topic_tier_changes
    try:
        while True:
            fetched = await consumer.getmany(timeout_ms=200, max_records=settings.batch_size)
            if consumer.assignment() and not ready.is_set():
                ready.set()
            out: list[OutRecord] = []
            for records in fetched.values():
                for record in records:
                    shopper = orjson.loads(record.value)["shopper_id"]
                    value = orjson.dumps({"shopper_id": shopper, "reason": "signal"})
                    out.append((topic, record.key, value, None))
            if out:
                await loop.send_all(out)
                await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()


def latency(
    settings: Settings, rate: int, seconds: int, broker_pid: int | None = None
) -> dict[str, Any]:
    """`bench_latency` through the forwarder, on topics and a group of its own; with
    `broker_pid`, the broker's share of a core second by second while it runs."""
    run = uuid.uuid4().hex[:6]
    settings = settings.model_copy(
        update={
            "app_id": f"{settings.app_id}-lat-{run}",
            "topic_clickstream": f"{settings.topic_clickstream}.floors-{run}",
            "topic_tier_changes": f"{settings.topic_tier_changes}.floors-{run}",
        }
    )
    ensure_topics(settings)
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    forwarder = context.Process(target=forward, args=(settings, ready), daemon=True)
    forwarder.start()
    shares: list[float] = []
    done = threading.Event()

    def sample(pid: int) -> None:
        last = process_cpu(pid)
        while not done.wait(1.0):
            now = process_cpu(pid)
            shares.append(now - last)
            last = now

    try:
        if not ready.wait(READY_TIMEOUT_SECONDS):
            raise RuntimeError("the forwarder was given no partition in a minute")
        log(f"the bare path at {rate:,} events/s for {seconds} s")
        sampler = threading.Thread(target=sample, args=(broker_pid,), daemon=True)
        if broker_pid is not None:
            sampler.start()
        result: dict[str, Any] = {"seconds": seconds, **bench_latency(settings, rate, seconds)}
    finally:
        done.set()
        forwarder.terminate()
        forwarder.join(10)
    result["broker_cpu_by_second"] = [round(share, 3) for share in shares[:seconds]]
    return result


def replay_read(path: Path) -> float:
    """Events/s of reading `path` into canonical events, and nothing else."""
    gc.disable()  # as replay runs
    try:
        started = time.perf_counter()
        n = sum(1 for item in read_events(path, "taobao") if not isinstance(item, LineError))
        return n / (time.perf_counter() - started)
    finally:
        gc.enable()


def run(
    settings: Settings,
    events: int,
    rate: int,
    seconds: list[int],
    broker_pid: int | None = None,
    taobao: Path = TAOBAO,
) -> dict[str, Any]:
    """Every floor, on the broker and Redis `settings` name; the bare path once for each
    of `seconds` (fresh topics each time), the last one's p50 and p99 at the top."""
    result: dict[str, Any] = {"at": datetime.now(UTC).isoformat(timespec="seconds")}
    result.update(throughput(settings, events, taobao))
    result["rate"] = rate
    result["bare_path"] = [latency(settings, rate, s, broker_pid) for s in seconds]
    result["p50_ms"] = result["bare_path"][-1]["p50_ms"]
    result["p99_ms"] = result["bare_path"][-1]["p99_ms"]
    log("reading the Taobao file")
    result["replay_read_events_per_s"] = replay_read(taobao)
    result["machine"] = (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=5000, help="offered rate for latency")
    parser.add_argument(
        "--seconds",
        default="5,20",
        help="how long to offer it: a run for each, comma-separated (the bench offers 20)",
    )
    parser.add_argument("--save", default=str(FLOORS), help="append the run to this file")
    args = parser.parse_args()
    with EmbeddedStack(Path(tempfile.mkdtemp(prefix="intent-floors-"))) as stack:
        settings = Settings(
            app_id=f"floors-{uuid.uuid4().hex[:6]}",
            kafka_bootstrap=stack.kafka_bootstrap,
            redis_url=stack.redis_url,
        )
        seconds = [int(part) for part in args.seconds.split(",")]
        broker = stack.servers[0].proc
        result = run(settings, args.events, args.rate, seconds, broker.pid if broker else None)
    path = Path(args.save)
    runs = json.loads(path.read_text()) if path.exists() else []
    runs.append(result)
    path.write_text(json.dumps(runs, indent=2) + "\n")
    print_table(result)


def print_table(r: dict[str, Any]) -> None:
    def n(value: float | None) -> str:
        return "-" if value is None else f"{value:,.1f}" if value < 100 else f"{value:,.0f}"

    records = n(r["records_out_per_event"])
    print(f"\n  per event ({r['events']:,} Taobao events, {records} records out each):")
    for key in ("consume", "ingest", "send"):
        print(f"    {key + ', us of CPU':<46} {n(r[key + '_us_per_event']):>10}")
    for bare in r["bare_path"]:
        shares = bare["broker_cpu_by_second"]
        cpu = f", the broker {shares[0]:.0%} -> {shares[-1]:.0%} of a core" if shares else ""
        print(
            f"    the bare path for {bare['seconds']} s: p50 {n(bare['p50_ms'])} ms, "
            f"p99 {n(bare['p99_ms'])} ms{cpu}"
        )
    rows = [
        ("one worker, events/s, at most", r["worker_floor_events_per_s"], TARGETS["events_per_s"]),
        ("one Redis, events/s, at most (a one-HSET script)", r["redis_floor_events_per_s"],
         TARGETS["events_per_s"]),
        (f"p99 of the bare path at {r['rate']:,}/s ({r['bare_path'][-1]['seconds']} s), ms",
         r["p99_ms"], TARGETS["p99_ms"]),
        ("replay, reading alone, events/s", r["replay_read_events_per_s"],
         TARGETS["replay_events_per_s"]),
    ]  # fmt: skip
    print(f"\n  {'floor':<50} {'measured':>10} {'target':>10}")
    for label, value, target in rows:
        print(f"  {label:<50} {n(value):>10} {n(target):>10}")
    print(f"  (the real score script "
          f"{n(r['redis_script_us_per_event'])} us of Redis CPU per event, the floor script "
          f"{n(r['redis_floor_script_us_per_call'])} per call, "
          f"{r['script_calls_per_event']:.2f} calls per event)")  # fmt: skip
    print(f"  machine: {r['machine']}")


if __name__ == "__main__":
    main()
