"""Plain kafka-python producing and reading for tests (no group: reads every partition),
reading with librdkafka (confluent-kafka), and every codec's libraries checked.

Every reader here decodes gzip, snappy, lz4 and zstd batches; `stored_batches` (from
`bench/codecs.py`) reads a topic's batches raw, to see how each was compressed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, Final

import aiokafka.codec
import kafka.codec
from confluent_kafka import Consumer, KafkaException
from confluent_kafka import TopicPartition as RdTopicPartition
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from bench.codecs import StoredBatch, stored_batches

__all__ = [
    "CODECS",
    "Reader",
    "StoredBatch",
    "missing_codecs",
    "produce",
    "rd_read",
    "stored_batches",
]

CODECS: Final = ("gzip", "snappy", "lz4", "zstd")


def missing_codecs() -> list[str]:
    """The codecs kafka-python (the tests' readers, `intent produce`, `intent dev`) or
    aiokafka (the worker) cannot compress and decompress: none, when installed right."""
    missing = []
    for client in (kafka.codec, aiokafka.codec):
        for codec in CODECS:
            if not getattr(client, f"has_{codec}")():
                missing.append(f"{client.__name__}: {codec}")
    return missing


def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes]],
    compression: str | None = None,
) -> int:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=10, acks=1, compression_type=compression
    )
    futures = [producer.send(topic, key=key, value=value) for key, value in records]
    producer.flush()
    for future in futures:
        future.get(timeout=30)  # raises if any send failed
    producer.close()
    return len(futures)


class Reader:
    """Reads topics from the beginning, accumulating everything seen."""

    def __init__(self, bootstrap: str, *topics: str) -> None:
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        parts = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(self.consumer.partitions_for_topic(topic) or [])
        ]
        assert parts, f"topics {topics} do not exist"
        self.consumer.assign(parts)
        self.consumer.seek_to_beginning()
        self.records: dict[str, list[ConsumerRecord]] = {topic: [] for topic in topics}

    def poll(self) -> int:
        for batch in self.consumer.poll(timeout_ms=200).values():
            for record in batch:
                self.records[record.topic].append(record)
        return sum(len(v) for v in self.records.values())

    def read_until(
        self, total: int, timeout: float, settle: float = 2.0
    ) -> dict[str, list[ConsumerRecord]]:
        """Poll until `total` records are in, then `settle` seconds more to catch extras."""
        deadline = time.monotonic() + timeout
        while self.poll() < total and time.monotonic() < deadline:
            pass
        end = time.monotonic() + settle
        while time.monotonic() < end:
            self.poll()
        return self.records

    def settle(self, seconds: float) -> dict[str, list[ConsumerRecord]]:
        """Keep reading for `seconds` (to see what else arrives), then return everything."""
        return self.read_until(0, timeout=0, settle=seconds)

    def wait(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        """Read until `check()` holds on what has arrived; fail after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll()
            if check():
                return
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")

    def close(self) -> None:
        self.consumer.close()


def rd_read(
    bootstrap: str, topic: str, check: Callable[[list[Any]], bool], timeout: float
) -> list[Any]:
    """Read a topic from the beginning with librdkafka (confluent-kafka's Consumer,
    every partition assigned, no group join) until `check(messages)` holds; fail after
    `timeout` seconds. Each message's value is decompressed by librdkafka."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"rd-read-{time.monotonic_ns()}",  # never joined: assign, no commits
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    messages: list[Any] = []
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        assert partitions, f"topic {topic} does not exist"
        consumer.assign([RdTopicPartition(topic, p, 0) for p in sorted(partitions)])
        deadline = time.monotonic() + timeout
        while not check(messages):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"librdkafka read {len(messages)} records of {topic} in {timeout:.0f} s"
                )
            for message in consumer.consume(num_messages=1000, timeout=0.2):
                if message.error():
                    raise KafkaException(message.error())
                messages.append(message)
    finally:
        consumer.close()
    return messages
