"""Output compression: bytes on the wire and the producer's CPU per record, by codec.

    python -m bench.codecs [--events N] [--rounds R] [--batch-sizes 2000,100]

The worker's own output for N Taobao events (its pipeline on a real Redis, one worker
owning every partition: signals, tier changes, actions, as `bench/floors.py` captures
them) is sent, batch by batch, with the worker's producer and `BatchSender.send_all`
(acks awaited), once per codec and round, each codec to its own topics on the embedded
broker. Bytes on the wire are the record batches as the broker stores and serves them
(read back with raw fetches: what the producer sent, compressed); CPU is this process's
(`time.process_time`) while sending, the median over the rounds, which alternate the
codecs' order. Each figure is also given as a ratio to `none` in the same run. Every
run is appended to `bench/codecs.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import struct
import tempfile
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, get_args

from aiokafka import TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.memory_records import MemoryRecords

from bench.run import ROOT, events, log, taobao_rows
from stream.devstack.embedded import EmbeddedStack
from stream.settings import Settings
from stream.topics import ensure_topics

if TYPE_CHECKING:
    from stream.worker.outbox import OutRecord

# `stored_batches` is light (the tests read topics raw with it); the worker's pipeline,
# Faust and the bench's workload are imported where the bench needs them.

CODECS: Final = get_args(Settings.model_fields["output_compression"].annotation)
CODEC_NAMES: Final = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}
# A record batch's header (v2): base offset, batch length, leader epoch, magic, crc,
# attributes (the codec in its low 3 bits), last offset delta
_HEADER: Final = struct.Struct(">qiibIhi")
FETCH_BYTES: Final = 8 << 20
SAVED: Final = ROOT / "bench" / "codecs.json"
FETCH_WAIT_MS: Final = 10  # what was acknowledged is there (0 gets nothing from Tansu)


@dataclass(frozen=True)
class StoredBatch:
    """One record batch as the broker serves it, the way the producer compressed it."""

    partition: int
    offset: int  # its first record's
    codec: str  # none, gzip, snappy, lz4 or zstd
    size: int  # bytes on the wire, header included
    values: list[bytes | None]


def split_batches(partition: int, data: bytes) -> list[StoredBatch]:
    """The complete record batches in a fetch response's records (a last one cut short
    by the fetch size is left out)."""
    out: list[StoredBatch] = []
    pos = 0
    while pos + _HEADER.size <= len(data):
        offset, length, _, magic, _, attributes, _ = _HEADER.unpack_from(data, pos)
        end = pos + 12 + length
        if end > len(data):
            break
        if magic != 2:
            raise ValueError(f"record batch of magic {magic} at offset {offset}: not v2")
        batch = MemoryRecords(data[pos:end]).next_batch()
        values = [record.value for record in batch]
        out.append(StoredBatch(partition, offset, CODEC_NAMES[attributes & 7], end - pos, values))
        pos = end
    return out


async def stored_batches_async(bootstrap: str, topic: str) -> list[StoredBatch]:
    """Every record batch of a topic, fetched raw (no consumer decompresses them), by
    partition and offset."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        await client.add_topic(topic)
        partitions = sorted(client.cluster.partitions_for_topic(topic) or ())
        if not partitions:
            raise ValueError(f"topic {topic} does not exist")
        out: list[StoredBatch] = []
        for partition in partitions:
            node = client.cluster.leader_for_partition(TopicPartition(topic, partition))
            offset = 0
            while True:  # to the first empty fetch: the broker's end offset can be short
                request = FetchRequest(
                    FETCH_WAIT_MS, 1, FETCH_BYTES, 0, [(topic, [(partition, offset, FETCH_BYTES)])]
                )
                response = await client.send(node, request)
                found: list[StoredBatch] = []
                for _, parts in response.topics:
                    for part in parts:
                        if part[1]:
                            raise RuntimeError(f"fetch of {topic}[{partition}]: error {part[1]}")
                        found += split_batches(partition, part[-1] or b"")
                if not found:
                    break
                out += found
                offset = found[-1].offset + len(found[-1].values)
        return out
    finally:
        await client.close()


def stored_batches(bootstrap: str, topic: str) -> list[StoredBatch]:
    return asyncio.run(stored_batches_async(bootstrap, topic))


def for_codec(settings: Settings, codec: str, tag: str) -> Settings:
    """`settings` with the codec, and topics of its own (`<topic>.<tag>`)."""
    names = {name: f"{topic}.{tag}" for name, topic in settings.topic_names().items()}
    return settings.model_copy(update={**names, "output_compression": codec})


async def send_cpu(settings: Settings, outputs: list[list[OutRecord]], tag: str) -> float:
    """CPU seconds of this process to send every batch's output with `send_all`, to the
    topics named `<topic>.<tag>`."""
    from bench import floors

    batches = [[(f"{t}.{tag}", k, v, h) for t, k, v, h in records] for records in outputs]
    return await floors.send_cpu(settings, batches)


def run(settings: Settings, n: int, rounds: int, batch_sizes: list[int]) -> dict[str, Any]:
    """Every codec's bytes and CPU per record on the worker's output for n events, for
    each input batch size (the worker takes up to INTENT_BATCH_SIZE events a batch: full
    ones with a backlog, a few per fetch wait at a live rate)."""
    from bench.floors import capture
    from stream.core.ingest import RawRecord

    inputs = events(taobao_rows(), n)
    raw = [
        RawRecord(value, key, settings.topic_clickstream, i % settings.partitions, i)
        for i, (key, value) in enumerate(inputs)
    ]
    result: dict[str, Any] = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "events": n,
        "rounds": rounds,
        "by_batch_size": [],
    }
    for size in batch_sizes:
        run_settings = settings.model_copy(
            update={"batch_size": size, "app_id": f"{settings.app_id}-b{size}"}
        )
        log(f"the worker's pipeline over {n:,} events in batches of {size:,} (a real Redis)")
        outputs, _ = asyncio.run(capture(run_settings, raw))
        result["by_batch_size"].append(measure(run_settings, outputs, rounds))
    return result


def measure(settings: Settings, outputs: list[list[OutRecord]], rounds: int) -> dict[str, Any]:
    records = sum(len(batch) for batch in outputs)
    topics = sorted({record[0] for batch in outputs for record in batch})
    value_bytes = sum(len(record[2]) for batch in outputs for record in batch)
    size = settings.batch_size
    log(f"{records:,} records out ({value_bytes / records:.0f} bytes of value each) to {topics}")
    tags = {codec: f"{codec}.b{size}" for codec in CODECS}
    per_codec = {codec: for_codec(settings, codec, tags[codec]) for codec in CODECS}
    for codec_settings in per_codec.values():
        ensure_topics(codec_settings)
    cpu: dict[str, list[float]] = {codec: [] for codec in CODECS}
    for i in range(rounds + 1):  # the first round warms up, and is not counted
        order = CODECS[i % len(CODECS) :] + CODECS[: i % len(CODECS)]
        for codec in order:
            seconds = asyncio.run(send_cpu(per_codec[codec], outputs, tags[codec]))
            if i:
                cpu[codec].append(seconds)
    result: dict[str, Any] = {
        "batch_size": size,
        "records": records,
        "value_bytes_per_record": value_bytes / records,
        "send_all_calls": len(outputs),
        "topics": topics,
        "codecs": {},
    }
    for codec in CODECS:
        stored = [
            batch
            for topic in topics
            for batch in stored_batches(settings.kafka_bootstrap, f"{topic}.{tags[codec]}")
        ]
        codecs = {batch.codec for batch in stored}
        if codecs != {codec}:
            raise RuntimeError(f"{codec}: the broker holds batches compressed with {codecs}")
        sent = sum(len(batch.values) for batch in stored)
        if sent != records * (rounds + 1):
            raise RuntimeError(f"{codec}: {sent:,} records stored, {records * (rounds + 1):,} sent")
        result["codecs"][codec] = {
            "wire_bytes_per_record": sum(batch.size for batch in stored) / sent,
            "records_per_wire_batch": sent / len(stored),
            "cpu_us_per_record": statistics.median(cpu[codec]) * 1e6 / records,
            "cpu_us_per_record_by_round": [c * 1e6 / records for c in cpu[codec]],
        }
    none = result["codecs"]["none"]
    for figures in result["codecs"].values():
        figures["wire_ratio"] = figures["wire_bytes_per_record"] / none["wire_bytes_per_record"]
        figures["cpu_ratio"] = figures["cpu_us_per_record"] / none["cpu_us_per_record"]
    return result


def print_table(result: dict[str, Any]) -> None:
    print(f"\n  {result['events']:,} Taobao events; CPU: the median of {result['rounds']} rounds")
    print(
        f"  {'batch':>6} {'codec':<7} {'records/batch':>13} {'bytes/record':>12} {'vs none':>7} "
        f"{'CPU us/record':>13} {'rounds':>11} {'vs none':>7}"
    )
    for run in result["by_batch_size"]:
        for codec, f in run["codecs"].items():
            rounds = f["cpu_us_per_record_by_round"]
            spread = f"{min(rounds):.2f}-{max(rounds):.2f}"
            print(
                f"  {run['batch_size']:>6} {codec:<7} {f['records_per_wire_batch']:>13.1f} "
                f"{f['wire_bytes_per_record']:>12.1f} {f['wire_ratio']:>7.2f} "
                f"{f['cpu_us_per_record']:>13.2f} {spread:>11} {f['cpu_ratio']:>7.2f}"
            )
        print(
            f"  (batches of {run['batch_size']:,} events: {run['records']:,} records out, "
            f"{run['value_bytes_per_record']:.0f} bytes of value each)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--save", default=str(SAVED), help="append the run to this file")
    parser.add_argument(
        "--batch-sizes",
        default="2000,100",
        help="input events per worker batch, comma separated (2000: INTENT_BATCH_SIZE, full)",
    )
    args = parser.parse_args()
    with EmbeddedStack(Path(tempfile.mkdtemp(prefix="intent-codecs-"))) as stack:
        settings = Settings(
            app_id=f"codecs-{uuid.uuid4().hex[:6]}",
            kafka_bootstrap=stack.kafka_bootstrap,
            redis_url=stack.redis_url,
        )
        sizes = [int(part) for part in args.batch_sizes.split(",")]
        result = run(settings, args.events, args.rounds, sizes)
    result["machine"] = (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    path = Path(args.save)
    runs = json.loads(path.read_text()) if path.exists() else []
    runs.append(result)
    path.write_text(json.dumps(runs, indent=2) + "\n")
    print_table(result)


if __name__ == "__main__":
    main()
