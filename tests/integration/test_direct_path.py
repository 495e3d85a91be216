"""Clickstream events whose intent.events partition the worker owns (read to its end)
skip that topic (`StreamLoop.direct`). On a real Redis and a REES46 file, the output must
be what the hop gives: the same records per shopper, in the same order."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from itertools import islice
from pathlib import Path
from typing import Any

from aiokafka.partitioner import DefaultPartitioner
from prometheus_client import CollectorRegistry

from bench.failover import ready
from schemas.events import Event
from stream.core.ingest import RawRecord
from stream.devstack.embedded import free_port
from stream.metrics import Metrics
from stream.offline.files import read_events
from stream.rulesfile import load_rules
from stream.settings import Settings
from stream.topics import ensure_topics
from stream.worker import pipeline as agents
from stream.worker.main import redis_client
from stream.worker.outbox import OutRecord
from tests.integration.conftest import scrape_metrics, wait_for
from tests.integration.kafka_io import produce
from tests.integration.servers import Servers, drop_keys

EVENTS = 6000
BATCH = 1000


def _run(redis_url: str, sample: Path, direct: bool) -> tuple[list[OutRecord], float]:
    settings = Settings(app_id=f"direct-{uuid.uuid4().hex[:8]}", redis_url=redis_url)
    events = [e for e in islice(read_events(sample, "rees46"), EVENTS) if isinstance(e, Event)]
    raw = [
        RawRecord(e.to_json(), e.shopper_id.encode(), settings.topic_clickstream, i % 4, i)
        for i, e in enumerate(events)
    ]
    partitions = list(range(settings.partitions))
    partitioner = DefaultPartitioner()
    sent: list[OutRecord] = []
    hop: list[RawRecord] = []  # what went to intent.events, read back by the next batch

    async def send(batch: list[OutRecord]) -> None:
        for record in batch:
            topic, key, value, _ = record
            if topic == settings.topic_normalised:
                partition = partitioner(key, partitions, partitions)
                hop.append(RawRecord(value, key, topic, partition, len(hop)))
            else:
                sent.append(record)

    metrics = Metrics(CollectorRegistry())

    async def run() -> None:
        client = redis_client(settings)
        pipeline = agents.Pipeline(None, settings, metrics, load_rules(), client, sender=send)
        await pipeline.owner.take(range(settings.partitions))  # as at an assignment
        if direct:
            pipeline.loop.routing.own_all(partitions)
        try:
            for i in range(0, len(raw), BATCH):
                await pipeline.handle(raw[i : i + BATCH])
                fetched = sorted(hop, key=lambda r: r.partition)  # as one fetch hands them over
                hop.clear()
                if fetched:
                    await pipeline.handle(fetched)
        finally:
            await client.aclose()

    asyncio.run(run())
    drop_keys(redis_url, settings.app_id)
    return sent, metrics.registry.get_sample_value("intent_events_direct_total") or 0.0


def _per_key(sent: list[OutRecord], skip: str) -> dict[bytes | None, list[Any]]:
    out: dict[bytes | None, list[Any]] = defaultdict(list)
    for topic, key, value, _ in sent:
        if topic != skip:
            out[key].append((topic, value))
    return dict(out)


def test_events_that_skip_intent_events_give_what_the_hop_gives(
    servers: Servers, rees46_file: Path
) -> None:
    sample = rees46_file
    hop, hop_direct = _run(servers.redis_url, sample, direct=False)
    direct, direct_count = _run(servers.redis_url, sample, direct=True)
    settings = Settings()
    assert hop_direct == 0
    assert direct_count == EVENTS  # every event skipped the topic
    topics = {record[0] for record in hop}
    assert {settings.topic_signals, settings.topic_tier_changes} <= topics  # a real workload
    dead = settings.topic_dead_letter
    per_key = _per_key(hop, dead)
    assert len(per_key) > 500
    assert _per_key(direct, dead) == per_key
    # dead letters (late events) name the record they came from, so only their number
    assert sum(r[0] == dead for r in direct) == sum(r[0] == dead for r in hop)


def test_three_workers_each_detect_their_own_input_directly(
    settings: Settings, env: dict[str, str], start_worker: Any, rees46_file: Path
) -> None:
    """The range assignor gives each worker clickstream partition n together with
    intent.events partition n, so input keyed by shopper skips the hop on every worker.
    (With aiokafka's round robin, three workers on 8 + 8 partitions pair none.)"""
    ports = []
    for _ in range(3):
        env["INTENT_METRICS_PORT"] = str(free_port())
        env["INTENT_WEB_PORT"] = str(free_port())
        ports.append(int(env["INTENT_METRICS_PORT"]))
        start_worker()

    ensure_topics(settings)
    wait_for(lambda: all(ready(port) for port in ports), 90, "three workers in the group")
    time.sleep(2 * settings.heartbeat_interval_seconds)  # the last rebalance settles
    events = [e for e in islice(read_events(rees46_file, "rees46"), EVENTS) if isinstance(e, Event)]
    produce(
        settings.kafka_bootstrap,
        settings.topic_clickstream,
        [(e.shopper_id.encode(), e.to_json()) for e in events],
    )

    def counted(port: int, name: str) -> float:
        samples = scrape_metrics(port)
        return sum(v for k, v in samples.items() if k == name or k.startswith(name + "{"))

    wait_for(
        lambda: sum(counted(port, "intent_events_total") for port in ports) >= len(events),
        90,
        "every event consumed",
    )
    direct = [counted(port, "intent_events_direct_total") for port in ports]
    consumed = [counted(port, "intent_events_total") for port in ports]
    assert all(n > 0 for n in consumed), consumed  # the input was shared out
    # Every worker took its own directly (all of it, unless a late rebalance made one
    # send a batch through intent.events while it had not read that partition yet).
    assert all(n > 0 for n in direct), (direct, consumed)
    assert sum(direct) >= 0.9 * sum(consumed), (direct, consumed)
