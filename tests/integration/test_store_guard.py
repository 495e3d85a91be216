"""Redis data loss is detected, never silent, and consent survives it: on the real broker
and a real Redis, through the worker's pipeline and its store guard."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from stream.state.store import profile
from stream.topics import ensure_topics
from stream.worker.store_guard import StoreLost
from tests.integration.kafka_io import produce
from tests.integration.servers import Servers, drop_keys
from tests.integration.test_isolation import Harness
from tests.scenarios import ev


@pytest.fixture
def harness(servers: Servers) -> Iterator[Harness]:
    tag = uuid.uuid4().hex[:8]
    made = Harness(
        servers.redis_url,
        kafka_bootstrap=servers.kafka_bootstrap,
        topic_clickstream=f"guard-clicks-{tag}",
        topic_suppression=f"guard-suppression-{tag}",
    )
    ensure_topics(made.settings)
    yield made
    made.close()


def _consumer(harness: Harness) -> AIOKafkaConsumer:
    """A consumer of the stream's group, as the loop has at an assignment."""

    async def start() -> AIOKafkaConsumer:
        settings = harness.settings
        consumer = AIOKafkaConsumer(
            **settings.kafka_options(), group_id=settings.stream_group, enable_auto_commit=False
        )
        await consumer.start()
        await consumer.topics()  # the metadata of every topic
        return consumer

    consumer: AIOKafkaConsumer = harness.run(start())
    return consumer


def _group_commits(harness: Harness) -> None:
    """The group commits the clickstream, as a deployment that processed input has."""
    settings = harness.settings
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.stream_group,
        enable_auto_commit=False,
    )
    tp = TopicPartition(settings.topic_clickstream, 0)
    consumer.assign([tp])
    consumer.commit({tp: OffsetAndMetadata(5, "", -1)})
    consumer.close()


def _wipe(harness: Harness) -> None:
    drop_keys(harness.settings.redis_url.get_secret_value(), harness.settings.app_id)


def _batch(harness: Harness, shopper: str, types: list[str], start: datetime) -> list[Any]:
    bodies = [
        ev(shopper, m, t, start=start, channel="email")
        if t == "opt_out"
        else ev(shopper, m, t, sku="MUG", start=start)
        for m, t in enumerate(types)
    ]
    return [harness.event(b, i) for i, b in enumerate(bodies)]


def test_a_new_deployment_marks_redis_and_a_wipe_stops_the_worker(harness: Harness) -> None:
    pipeline = harness.pipeline
    guard = pipeline.store_guard
    consumer = _consumer(harness)
    try:
        partitions = set(range(harness.settings.partitions))
        harness.run(pipeline.on_assigned(consumer, partitions))  # never committed: new
        assert harness.run(harness.client.exists(guard.key)) == 1
        start = datetime.now(UTC) - timedelta(hours=1)
        harness.run(pipeline.handle(_batch(harness, "w-1", ["add_to_cart"], start)))
        assert pipeline.loop.crash_reason is None

        _wipe(harness)  # Redis loses everything under the running worker
        with pytest.raises(StoreLost, match=r"lost this deployment's state while .*NOEPOCH"):
            harness.run(pipeline.handle(_batch(harness, "w-2", ["add_to_cart"], start)))
        assert isinstance(pipeline.loop.crash_reason, StoreLost)

        # Started again: the mark is missing and the group has committed.
        _group_commits(harness)
        with pytest.raises(StoreLost, match="INTENT_START_FROM_EMPTY_REDIS=true"):
            harness.run(guard.on_assigned(consumer))
        assert harness.run(harness.client.exists(guard.key)) == 0
    finally:
        harness.run(consumer.stop())


def test_started_from_empty_the_opted_out_stay_suppressed(harness: Harness) -> None:
    """Two shoppers complain of spam or opt out; their suppression records go out on the
    suppression topic. Redis then loses everything. Started from empty, the worker
    rebuilds the suppressions from the topic: both are still suppressed, and a new cart
    of the one who complained is scored without any action."""
    pipeline = harness.pipeline
    settings = harness.settings
    harness.run(pipeline.owner.take(range(settings.partitions)))
    start = datetime.now(UTC) - timedelta(hours=2)
    records = _batch(harness, "c-1", ["product_view", "spam_complaint"], start)
    records += _batch(harness, "c-2", ["opt_out"], start)
    records += _batch(harness, "c-3", ["add_to_cart"], start)  # never suppressed
    harness.run(pipeline.handle(records))
    sent = harness.out(settings.topic_suppression)
    assert {k for k, _ in sent} == {b"c-1", b"c-2"}
    produce(
        settings.kafka_bootstrap,
        settings.topic_suppression,
        [(k, json.dumps(v).encode()) for k, v in sent],
    )
    before = {s: _profile(harness, s) for s in ("c-1", "c-2")}
    assert before["c-1"]["tier"] == "suppressed"

    _wipe(harness)
    _group_commits(harness)
    guard = pipeline.store_guard  # started again, with the flag
    guard.settings = settings.model_copy(update={"start_from_empty_redis": True})
    consumer = _consumer(harness)
    try:  # the assignment: the mark, then the partitions' epochs, all missing
        harness.run(pipeline.on_assigned(consumer, set(range(settings.partitions))))
    finally:
        harness.run(consumer.stop())
    assert harness.metric("intent_store_restarts_total") == 1
    for shopper in ("c-1", "c-2"):
        after = _profile(harness, shopper)
        assert after["tier"] == before[shopper]["tier"]
        assert after["suppressions"] == before[shopper]["suppressions"]
    assert _profile(harness, "c-3")["known"] is False  # scores start from nothing

    actions = {settings.topic_retargeting, settings.topic_cart_recovery, settings.topic_nurture}
    count = len(harness.sent)
    later = datetime.now(UTC) - timedelta(minutes=30)
    harness.run(pipeline.handle(_batch(harness, "c-1", ["add_to_cart"], later)))
    assert [t for t, k, _, _ in harness.sent[count:] if k == b"c-1" and t in actions] == []


def _profile(harness: Harness, shopper: str) -> dict[str, Any]:
    record = harness.run(harness.pipeline.reader.record(shopper))
    return profile(shopper, record, datetime.now(UTC).timestamp())
