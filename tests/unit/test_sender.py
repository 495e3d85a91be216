"""`BatchSender.send_all` (stream/worker/sender.py): closed batches, one per partition."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from tests.unit.worker_fakes import _loop


def test_send_all_hands_the_producer_closed_batches_one_per_partition() -> None:
    """An open batch waits out the producer's linger for records that will not come
    (2.2 ms of a 4.2 ms flush of 40 batches on the embedded broker); a closed one goes
    out at once. Records are placed by key, as a plain send would."""
    from aiokafka import AIOKafkaProducer

    async def main() -> list[tuple[str, int, Any]]:
        producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1")  # never started
        handed: list[tuple[str, int, Any]] = []

        async def send_batch(batch: Any, topic: str, *, partition: int) -> Any:
            handed.append((topic, partition, batch))
            done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            done.set_result(SimpleNamespace(topic=topic, partition=partition, offset=0))
            return done

        producer.send_batch = send_batch  # type: ignore[method-assign]
        loop, _ = _loop(None)
        loop.sender.producer = producer
        loop.sender.partitions = {"out": [0, 1, 2, 3]}
        await loop.sender.send_all([("out", b"s-%d" % i, b"{}", None) for i in range(20)])
        await producer.stop()
        return handed

    handed = asyncio.run(main())
    assert len({(topic, partition) for topic, partition, _ in handed}) == len(handed)
    assert sum(batch.record_count() for _, _, batch in handed) == 20
    for _, _, batch in handed:  # closed: it takes no more records
        assert batch.append(key=b"k", value=b"v", timestamp=None) is None
