"""The stream loop's Kafka clients, and what it asks of them about offsets."""

from __future__ import annotations

import asyncio
from typing import Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.errors import IllegalStateError

from stream.settings import Settings

# How long the broker may hold a fetch while it has no new record. Apache Kafka answers as
# soon as one arrives; the embedded broker does not, and a record waited up to about half
# of this there. Not the batch window: on the embedded broker, fetches of a few ms made
# the tail worse, because each fetch costs it CPU (docs/performance.md).
FETCH_WAIT_MS: Final = 20


def stream_producer(settings: Settings) -> AIOKafkaProducer:
    """The stream loop's producer (also the benchmarks')."""
    codec = settings.output_compression
    return AIOKafkaProducer(
        **settings.kafka_options(),
        client_id=f"{settings.app_id}-stream",
        # no linger: every batch is complete when handed over (`BatchSender.send_all`)
        max_batch_size=1 << 20,
        max_request_size=8 << 20,
        acks="all",
        # every batch, `send_all`'s from `create_batch` included, is compressed with it
        compression_type=None if codec == "none" else codec,
    )


def stream_consumer(settings: Settings) -> AIOKafkaConsumer:
    """The stream loop's consumer, in the stream's group, not yet subscribed (also the
    benchmarks')."""
    return AIOKafkaConsumer(
        **settings.kafka_options(),
        client_id=f"{settings.app_id}-stream",
        group_id=settings.stream_group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=int(settings.session_timeout_seconds * 1000),
        heartbeat_interval_ms=int(settings.heartbeat_interval_seconds * 1000),
        fetch_max_wait_ms=FETCH_WAIT_MS,
        max_partition_fetch_bytes=4 << 20,
        # A clickstream written with transactions: records of aborted ones are never
        # read, and those of open ones only once committed. The same for any other.
        isolation_level="read_committed",
        # Range deals each topic's partitions alike, so the worker that reads
        # clickstream partition n also owns intent.events partition n, and events
        # keyed by shopper skip the hop (`Routing`) with any number of workers;
        # round robin (aiokafka's default) pairs them only when the count divides
        # the partitions. Listed second, it is what a group still running older
        # workers agrees on during a rolling upgrade.
        partition_assignment_strategy=(RangePartitionAssignor, RoundRobinPartitionAssignor),
    )


def readable_end(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
    """How far a partition can be read, as of the last fetch: its last stable offset (the
    consumer reads committed records only; records of an open transaction are not there
    yet), or its high-water mark from a broker that reports none. None: never fetched."""
    stable: int | None = consumer.last_stable_offset(tp)
    return stable if stable is not None and stable >= 0 else consumer.highwater(tp)


async def past_skipped(consumer: AIOKafkaConsumer, tp: TopicPartition, end: int) -> int:
    """The consumer's position on a partition whose records up to `end` were handled: past
    `end` by what it skipped after them. `end` if the partition is no longer assigned."""
    try:
        position: int = await consumer.position(tp)
    except IllegalStateError:
        return end
    return max(end, position)


async def committed_offsets(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition]
) -> dict[TopicPartition, int | None]:
    """The group's committed offset of each partition (None: never committed)."""
    found = await asyncio.gather(*(consumer.committed(tp) for tp in partitions))
    return dict(zip(partitions, found, strict=True))
