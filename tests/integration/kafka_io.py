"""Plain kafka-python producing and reading for tests (no group: reads every partition)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord


def produce(bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes]]) -> int:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=10, acks=1)
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
