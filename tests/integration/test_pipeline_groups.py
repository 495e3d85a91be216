"""The worker detects and scores a batch's shoppers in concurrent groups
(`agents.PROCESS_GROUPS`), so its CPU work overlaps Redis's. On a real Redis, each
shopper's records must come out exactly as with one group, in the same order, and a
batch's output must be the same from run to run."""

from __future__ import annotations

import asyncio
import uuid
import zlib
from collections import defaultdict
from itertools import islice
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from schemas.events import Event
from stream.core.ingest import RawRecord
from stream.metrics import Metrics
from stream.offline.files import read_events
from stream.rulesfile import load_rules
from stream.settings import Settings
from stream.worker import pipeline as agents
from stream.worker.main import redis_client
from stream.worker.outbox import OutRecord
from tests.integration.servers import Servers, drop_keys

EVENTS = 6000
BATCH = 1000  # the worker's default batch size is larger; several batches test the state


def _records(sample: Path, settings: Settings) -> list[RawRecord]:
    events = [e for e in islice(read_events(sample, "rees46"), EVENTS) if isinstance(e, Event)]
    return [
        RawRecord(
            e.to_json(),
            e.shopper_id.encode(),
            settings.topic_normalised,
            zlib.crc32(e.shopper_id.encode()) % settings.partitions,
            offset,
        )
        for offset, e in enumerate(events)
    ]


def _run(redis_url: str, sample: Path, groups: int, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    monkeypatch.setattr(agents, "PROCESS_GROUPS", groups)
    settings = Settings(app_id=f"groups-{uuid.uuid4().hex[:8]}", redis_url=redis_url)
    records = _records(sample, settings)
    sent: list[OutRecord] = []

    async def send(batch: list[OutRecord]) -> None:
        sent.extend(batch)

    async def run() -> None:
        client = redis_client(settings)
        rules = load_rules()
        pipeline = agents.Pipeline(
            None, settings, Metrics(CollectorRegistry()), rules, client, sender=send
        )
        await pipeline.owner.take(range(settings.partitions))  # as at an assignment
        try:
            for i in range(0, len(records), BATCH):
                await pipeline.handle(records[i : i + BATCH])
        finally:
            await client.aclose()

    asyncio.run(run())
    drop_keys(redis_url, settings.app_id)
    return sent


def _per_key(sent: list[OutRecord]) -> dict[bytes | None, list[OutRecord]]:
    out: dict[bytes | None, list[OutRecord]] = defaultdict(list)
    for record in sent:
        out[record[1]].append(record)
    return dict(out)


def test_concurrent_groups_send_each_shopper_what_one_group_sends(
    servers: Servers, rees46_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sample = rees46_file
    one = _run(servers.redis_url, sample, 1, monkeypatch)
    two = _run(servers.redis_url, sample, 2, monkeypatch)
    again = _run(servers.redis_url, sample, 2, monkeypatch)
    topics = {record[0] for record in one}
    settings = Settings()
    assert {settings.topic_signals, settings.topic_tier_changes} <= topics  # a real workload
    assert len(_per_key(one)) > 500  # many shoppers, most batches hold several events of one
    assert _per_key(two) == _per_key(one)
    assert sorted(two) == sorted(one)
    assert two == again  # the batch's order is fixed, not the groups' finishing order
