"""The same workload in Quix Streams (the `bench` extra), for the target worker >= 1.3x Quix.

    python -m bench.quix_workload N RESULT_FILE     (settings from the INTENT_* environment)

A Quix Streams application consumes clickstream.events and intent.events with Quix's own
consumer and delivers one message at a time to a StreamingDataFrame callback. The
callback buffers the records and hands them, `INTENT_BATCH_SIZE` at a time (or when the
batch window has passed), to the very same `Pipeline` the worker runs: ingest, detection,
scoring in Redis, outputs; events skip intent.events as in a worker that owns every
partition (`StreamLoop.own_all`). What the pipeline sends goes out through Quix's producer
(librdkafka, with Java's murmur2 partitioner so keys land where the worker puts them).
Due deadlines and decays are swept every `INTENT_SWEEP_INTERVAL_SECONDS`, as the
worker's timer does, in event time only (the pipeline's stream loop, which says when
everything was read, does not run here: if anything, that spares Quix some work). The
pipeline gets the worker's Redis client and GC tuning. So the work per event is the
same; only the framework differs.

Writes {"events", "seconds"} (from the first record until the last event is detected and
a sweep sends nothing, as the worker's bulk phase in bench/run.py) to RESULT_FILE and
stops. Not a production path: Quix commits on its own interval, not after the buffered
batch is sent.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

from quixstreams import Application, message_context

from bench.floors import hold_partitions
from stream.core.ingest import RawRecord
from stream.metrics import default_metrics
from stream.rulesfile import load_ruleset
from stream.settings import Settings
from stream.worker.main import redis_client
from stream.worker.outbox import OutRecord
from stream.worker.pipeline import Pipeline
from stream.worker.runtime import tune_gc


def main() -> None:
    total, result_file = int(sys.argv[1]), sys.argv[2]
    settings = Settings()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    app = Application(
        broker_address=settings.kafka_bootstrap,
        consumer_group=f"{settings.app_id}-quix",
        auto_offset_reset="earliest",
        loglevel="WARNING",
        use_changelog_topics=False,
        state_dir=settings.data_dir / f"{settings.app_id}-quix",
        auto_create_topics=False,
        producer_extra_config={"partitioner": "murmur2_random", "linger.ms": 2},
    )
    producer = app.get_producer()
    normalised_sent = sent = 0

    async def send(records: list[OutRecord]) -> None:
        nonlocal normalised_sent, sent
        sent += len(records)
        for topic, key, value, headers in records:
            producer.produce(topic=topic, key=key, value=value, headers=headers)
            normalised_sent += topic == settings.topic_normalised
        producer.flush()  # every ack before the pipeline saves state, as the worker does

    rules = load_ruleset(settings)
    pipeline = Pipeline(
        None, settings, default_metrics(), rules, redis_client(settings), sender=send
    )
    # One consumer owns every partition: events skip intent.events, as in the worker.
    partitions = set(range(settings.partitions))
    pipeline.loop.routing.own_all(sorted(partitions))
    loop.run_until_complete(hold_partitions(pipeline, partitions))
    tune_gc()  # what the worker does once it is up: the same process tuning on both sides
    buffer: list[RawRecord] = []
    counts = {"raw": 0, "events": 0}
    marks = {"first": 0.0, "flushed": time.monotonic(), "swept": time.monotonic()}

    def flush() -> None:
        batch = list(buffer)
        buffer.clear()
        marks["flushed"] = time.monotonic()
        loop.run_until_complete(pipeline.handle(batch))
        if time.monotonic() - marks["swept"] >= settings.sweep_interval_seconds:
            marks["swept"] = time.monotonic()
            loop.run_until_complete(pipeline.sweeper.sweep_partitions(partitions))

    def on_message(value: Any, key: Any, timestamp: int, headers: Any) -> None:
        ctx = message_context()
        if not marks["first"]:
            marks["first"] = time.perf_counter()
        buffer.append(RawRecord(value, key, ctx.topic, ctx.partition, ctx.offset))
        counts["raw" if ctx.topic == settings.topic_clickstream else "events"] += 1
        all_ingested = counts["raw"] >= total
        last = all_ingested and counts["events"] >= normalised_sent
        if (
            len(buffer) >= settings.batch_size
            or time.monotonic() - marks["flushed"] >= settings.batch_window_seconds
            or counts["raw"] == total  # the last input record: nothing more will come
            or last
        ):
            flush()
        if all_ingested and not buffer and counts["events"] >= normalised_sent:
            # What the input left due in event time, as the worker's bulk phase ends
            # (bench/run.py `swept`: no new signal or tier change): sweep until a sweep
            # sends nothing. One that finds nothing due sends nothing; "nothing due"
            # alone might never come, as a shopper whose call leaves it due (a fault) is
            # called once per sweep.
            while True:
                before = sent
                loop.run_until_complete(pipeline.sweeper.sweep_partitions(partitions))
                if sent == before:
                    break
            seconds = time.perf_counter() - marks["first"]
            with open(result_file + ".tmp", "w") as out:
                json.dump({"events": total, "seconds": seconds}, out)
            os.replace(result_file + ".tmp", result_file)
            app.stop()

    for name in (settings.topic_clickstream, settings.topic_normalised):
        topic = app.topic(name, key_deserializer="bytes", value_deserializer="bytes")
        app.dataframe(topic).update(on_message, metadata=True)
    app.run()


if __name__ == "__main__":
    main()
