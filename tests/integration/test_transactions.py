"""A clickstream written with transactions, through a real worker on the real broker.

A transaction ends in a marker record that the consumer skips. The worker must commit
past it (else the group stays one short of the partition's end for good: a lag of 1,
and a takeover hold that never ends), also when the marker comes after the worker
handled the records; and it reads committed records only.

A broker that takes transactions (Apache Kafka) gets them from aiokafka's transactional
producer: one committed, one aborted. One that refuses the transactional producer (the
embedded broker) gets plain records followed by a commit marker written as a raw control
batch, which is what a transactional producer leaves at a partition's end.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from aiokafka import AIOKafkaProducer
from aiokafka import TopicPartition as AioPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.control_record import COMMIT_MARKER
from aiokafka.record.default_records import (
    _DefaultRecordBatchBuilderPy as BatchBuilder,
)
from aiokafka.record.default_records import (
    _DefaultRecordBatchPy as Batch,
)
from aiokafka.record.util import calc_crc32c
from kafka import KafkaConsumer, TopicPartition

from stream.settings import Settings
from stream.state.records import Keys
from stream.state.store import partition_of
from stream.topics import ensure_topics
from tests.integration.conftest import scrape_metrics, wait_for
from tests.integration.kafka_io import Reader

PARTITION = 0


def _checkout(shopper: str, at: datetime) -> tuple[bytes, bytes]:
    body = {
        "event_id": f"{shopper}-checkout",
        "shopper_id": shopper,
        "type": "checkout_started",
        "ts": at.isoformat(),
        "product": {"sku": "X", "category": "c"},
    }
    return shopper.encode(), json.dumps(body).encode()


def _marker_batch(producer_id: int) -> bytes:
    """One control batch holding a commit marker, as a transaction coordinator writes it."""
    builder = BatchBuilder(2, 0, 1, producer_id, 0, -1, 1 << 16)
    key = struct.pack(">hh", COMMIT_MARKER.version, COMMIT_MARKER.type_)
    builder.append(0, timestamp=int(time.time() * 1000), key=key, value=b"\0\0\0\0\0\0", headers=[])
    buf = builder.build()
    (attributes,) = struct.unpack_from(">h", buf, Batch.ATTRIBUTES_OFFSET)
    struct.pack_into(">h", buf, Batch.ATTRIBUTES_OFFSET, attributes | Batch.CONTROL_MASK)
    crc = calc_crc32c(bytes(buf[Batch.ATTRIBUTES_OFFSET :]))
    struct.pack_into(">I", buf, Batch.CRC_OFFSET, crc)
    return bytes(buf)


async def _write_marker(bootstrap: str, topic: str) -> None:
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        await client.force_metadata_update()
        node = client.cluster.leader_for_partition(AioPartition(topic, PARTITION))
        request = ProduceRequest(None, -1, 10_000, [(topic, [(PARTITION, _marker_batch(7))])])
        response = await client.send(node, request)
        ((_, partitions),) = response.topics
        (_, error_code, *_) = partitions[0]
        assert error_code == 0, f"the broker refused the marker (error {error_code})"
    finally:
        await client.close()


async def _transactional(bootstrap: str) -> AIOKafkaProducer | None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id="intent-test-tx")
    try:
        await producer.start()
    except KafkaError:  # the embedded broker refuses InitProducerId
        await producer.stop()
        return None
    return producer


async def _write(
    bootstrap: str, topic: str, records: list[tuple[bytes, bytes]], aborted: list[Any]
) -> bool:
    """Write `records` in one committed transaction and `aborted` in one aborted
    transaction; or, if the broker takes no transactions, `records` plainly and a commit
    marker after them. Returns whether the broker took transactions."""
    producer = await _transactional(bootstrap)
    if producer is None:
        plain = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await plain.start()
        try:
            for key, value in records:
                await plain.send(topic, value, key=key, partition=PARTITION)
            await plain.flush()
        finally:
            await plain.stop()
        await _write_marker(bootstrap, topic)
        return False
    try:
        async with producer.transaction():
            for key, value in records:
                await producer.send(topic, value, key=key, partition=PARTITION)
        await producer.begin_transaction()
        for key, value in aborted:
            await producer.send(topic, value, key=key, partition=PARTITION)
        await producer.flush()
        await producer.abort_transaction()
    finally:
        await producer.stop()
    return True


def _group_offsets(settings: Settings, tp: TopicPartition) -> tuple[int | None, int]:
    """The worker group's committed offset of `tp`, and `tp`'s readable end."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.stream_group,
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    try:
        return consumer.committed(tp), consumer.end_offsets([tp])[tp]
    finally:
        consumer.close()


def test_a_transactional_clickstream_is_committed_to_its_end(
    settings: Settings, start_worker: Any, env: dict[str, str]
) -> None:
    ensure_topics(settings)
    topic = settings.topic_clickstream
    tp = TopicPartition(topic, PARTITION)
    at = datetime.now(UTC) - timedelta(minutes=1)
    kept = [_checkout(f"tx-kept-{i}", at) for i in range(4)]
    dropped = [_checkout(f"tx-aborted-{i}", at) for i in range(3)]
    transactions = asyncio.run(_write(settings.kafka_bootstrap, topic, kept, dropped))
    first_end = _group_offsets(settings, tp)[1]
    assert first_end > len(kept)  # a marker (and, with transactions, more) after the records

    start_worker()
    reader = Reader(settings.kafka_bootstrap, settings.topic_tier_changes)
    changes = reader.records[settings.topic_tier_changes]
    reader.wait(lambda: len(changes) >= len(kept), 60, "the committed shoppers' tier changes")
    wait_for(
        lambda: _group_offsets(settings, tp)[0] == first_end,
        30,
        f"the group's offset of clickstream partition {PARTITION} at its end ({first_end})",
    )

    # A marker that comes after the worker handled its records (an idle partition), or,
    # with transactions, a whole aborted transaction: nothing is handed over.
    late: list[tuple[bytes, bytes]] = []
    if transactions:
        late = [_checkout(f"tx-aborted-late-{i}", at) for i in range(2)]
        asyncio.run(_write(settings.kafka_bootstrap, topic, [], late))
    else:
        asyncio.run(_write_marker(settings.kafka_bootstrap, topic))
    second_end = _group_offsets(settings, tp)[1]
    assert second_end > first_end
    wait_for(
        lambda: _group_offsets(settings, tp)[0] == second_end,
        30,
        f"the group's offset past the later marker ({second_end})",
    )
    port = int(env["INTENT_METRICS_PORT"])
    lag = f'intent_consumer_lag_messages{{partition="{PARTITION}",topic="{topic}"}}'
    wait_for(lambda: scrape_metrics(port).get(lag) == 0.0, 15, "a consumer lag of 0")

    reader.settle(2)
    reader.close()
    shoppers = sorted(json.loads(record.value)["shopper_id"] for record in changes)
    assert shoppers == sorted(key.decode() for key, _ in kept)  # none of the aborted
    # In Redis, a record for each committed shopper and none for an aborted one.
    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    keys = Keys(settings.app_id)

    def stored(shopper: bytes) -> bool:
        name = shopper.decode()
        return bool(client.exists(keys.record(partition_of(name, settings.partitions), name)))

    assert all(stored(key) for key, _ in kept)
    assert not any(stored(key) for key, _ in dropped + late)
    client.close()
