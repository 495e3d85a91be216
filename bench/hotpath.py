"""The hot path without the broker: µs of this process per event, stage by stage.

    python -m bench.hotpath [--events N] [--profile FILE] [--hop]

Runs the worker's own `Pipeline` (ingest, detection, scoring on a real Redis server,
outputs) on Taobao events in batches of `INTENT_BATCH_SIZE`, with a sender that keeps
what would go to Kafka in memory: what ingest writes to intent.events is fed back as
the next stage's input, partitioned by key as the producer would (with `--hop`; by
default the pipeline owns every partition, as one worker does, and events skip
intent.events, `Routing`). So the figure is
the Python cost of the pipeline alone, the part a faster transport cannot remove; with
no broker sharing the two cores, runs vary by about ±10 %.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import tempfile
import time
import uuid
from pathlib import Path

import redis
from aiokafka.partitioner import DefaultPartitioner
from prometheus_client import CollectorRegistry

from bench.floors import hold_partitions
from bench.run import events, log, redis_cpu, taobao_rows
from stream.core.ingest import RawRecord
from stream.devstack.embedded import free_port, redis_server
from stream.metrics import Metrics
from stream.rulesfile import load_ruleset
from stream.settings import Settings
from stream.worker.main import redis_client
from stream.worker.outbox import OutRecord
from stream.worker.pipeline import Pipeline
from stream.worker.runtime import tune_gc


async def run(n: int, redis_url: str, profile: str | None, hop: bool = False) -> dict[str, float]:
    settings = Settings(app_id=f"hot-{uuid.uuid4().hex[:6]}", redis_url=redis_url)
    client = redis_client(settings)

    partitioner = DefaultPartitioner()
    parts = list(range(settings.partitions))
    queued: list[RawRecord] = []
    sent = {"records": 0}

    async def send(records: list[OutRecord]) -> None:
        sent["records"] += len(records)
        for topic, key, value, _ in records:
            if topic == settings.topic_normalised:
                p = partitioner(key, parts, parts)
                queued.append(RawRecord(value, key, topic, p, len(queued)))

    pipeline = Pipeline(
        None, settings, Metrics(CollectorRegistry()), load_ruleset(settings), client, sender=send
    )
    if not hop:
        pipeline.loop.routing.own_all(parts)
    await hold_partitions(pipeline, parts)
    raw = [
        RawRecord(v, k, settings.topic_clickstream, i % settings.partitions, i)
        for i, (k, v) in enumerate(events(taobao_rows(), n))
    ]
    size = settings.batch_size
    seconds = {"ingest": 0.0, "process": 0.0}
    profiler = cProfile.Profile() if profile else None
    tune_gc()  # as the worker does once it is up; the input stands for the broker's buffers
    sync = redis.Redis.from_url(redis_url)
    cpu0 = redis_cpu(sync)
    own0 = time.process_time()
    if profiler:
        profiler.enable()
    for i in range(0, n, size):
        started = time.perf_counter()
        await pipeline.handle(raw[i : i + size])
        seconds["ingest"] += time.perf_counter() - started
        batch = sorted(queued, key=lambda r: r.partition)  # as one fetch hands them over
        queued.clear()
        if batch:
            started = time.perf_counter()
            await pipeline.handle(batch)
            seconds["process"] += time.perf_counter() - started
    if profiler and profile:
        profiler.disable()
        profiler.dump_stats(profile)
    own = time.process_time() - own0
    cpu = redis_cpu(sync) - cpu0
    await client.aclose()
    return {
        "events": n,
        "ingest_us_per_event": seconds["ingest"] * 1e6 / n,
        "process_us_per_event": seconds["process"] * 1e6 / n,
        "total_us_per_event": sum(seconds.values()) * 1e6 / n,
        "events_per_s": n / sum(seconds.values()),
        "cpu_us_per_event": own * 1e6 / n,  # this process; the rest of the total is waiting
        "redis_cpu_us_per_event": cpu * 1e6 / n,
        "records_sent_per_event": sent["records"] / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--profile", help="write a cProfile of the run to this file")
    parser.add_argument(
        "--hop", action="store_true", help="every event through intent.events (fed back)"
    )
    args = parser.parse_args()
    server = redis_server(free_port(), Path(tempfile.mkdtemp(prefix="intent-hotpath-")))
    server.start()
    try:
        figures = asyncio.run(
            run(args.events, f"redis://127.0.0.1:{server.port}/0", args.profile, args.hop)
        )
    finally:
        server.stop()
    for key, value in figures.items():
        log(f"{key:<26} {value:,.1f}")


if __name__ == "__main__":
    main()
