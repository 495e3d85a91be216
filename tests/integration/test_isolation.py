"""One shopper's bad data affects only that shopper, on a real Redis: a shopper whose
detection, scoring or outputs raise is dead-lettered alone, and a sweep skips a shopper
that fails, counts it, and finishes its pass. And a property test: fuzzed records
(random, mutated bytes, JSON text and JSON trees of the canonical, Segment and GA4
shapes) never raise out of a batch, and every record consumed is processed or
dead-lettered, never both and never neither."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from schemas import errors
from stream.core import process
from stream.core.ingest import RawRecord
from stream.metrics import Metrics
from stream.rulesfile import load_rules
from stream.settings import Settings
from stream.state.store import partition_of
from stream.worker import pipeline as agents
from stream.worker.main import redis_client
from stream.worker.outbox import OutRecord
from tests import fuzzing
from tests.integration.servers import Servers, drop_keys
from tests.scenarios import ev

pytestmark = pytest.mark.integration
INGEST_REASONS = set(errors.REASONS) - {errors.LATE, errors.PROCESSING_ERROR}


class Harness:
    """A pipeline of its own (app id, keys) on the test Redis; `sent` is what it sent."""

    def __init__(self, redis_url: str, **overrides: Any) -> None:
        self.settings = Settings(
            app_id=f"iso-{uuid.uuid4().hex[:8]}", redis_url=redis_url, **overrides
        )
        self.sent: list[OutRecord] = []
        self.registry = CollectorRegistry()
        self.loop = asyncio.new_event_loop()
        self.client = redis_client(self.settings)

        async def send(batch: list[OutRecord]) -> None:
            self.sent.extend(batch)

        self.pipeline = agents.Pipeline(
            None, self.settings, Metrics(self.registry), load_rules(), self.client, sender=send
        )
        # as at an assignment: this pipeline owns every partition
        self.run(self.pipeline.owner.take(range(self.settings.partitions)))

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def event(self, body: dict[str, Any], offset: int) -> RawRecord:
        partition = partition_of(body["shopper_id"], self.settings.partitions)
        topic = self.settings.topic_normalised
        return RawRecord(
            json.dumps(body).encode(), body["shopper_id"].encode(), topic, partition, offset
        )

    def out(self, topic: str) -> list[tuple[bytes | None, dict[str, Any]]]:
        return [(k, json.loads(v)) for t, k, v, _ in self.sent if t == topic]

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def close(self) -> None:
        self.run(self.client.aclose())
        self.loop.close()
        drop_keys(self.settings.redis_url.get_secret_value(), self.settings.app_id)


@pytest.mark.parametrize("stage", ["detect", "score", "outputs"])
def test_a_shopper_whose_processing_raises_is_dead_lettered_alone(
    harness: Harness, stage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """s-2's detection, scoring or outputs raise: its records are dead-lettered as
    processing_error with the exception's type, nothing of it goes out, and s-1 and
    s-3 (in the same batch and group) are scored and their outputs sent."""
    pipeline = harness.pipeline
    real = (pipeline.core.engine.process, process.score_signals, process.outputs_for)

    def fail_for_s2(index: int, name: str) -> Any:
        def call(first: Any, *args: Any) -> Any:
            shopper = first if isinstance(first, str) else first[0].shopper_id
            if stage == name and shopper == "s-2":
                raise OverflowError("int too large to convert to float")
            return real[index](first, *args)

        return call

    monkeypatch.setattr(pipeline.core.engine, "process", fail_for_s2(0, "detect"))
    monkeypatch.setattr(process, "score_signals", fail_for_s2(1, "score"))
    monkeypatch.setattr(process, "outputs_for", fail_for_s2(2, "outputs"))
    monkeypatch.setattr(agents, "PROCESS_GROUPS", 1)
    now = datetime.now(UTC) - timedelta(hours=1)
    bodies = [
        ev(f"s-{n}", minutes, "add_to_cart", sku="MUG", start=now)
        for minutes in (0, 1)
        for n in (1, 2, 3)
    ]
    harness.run(pipeline.handle([harness.event(b, i) for i, b in enumerate(bodies)]))

    settings = harness.settings
    letters = harness.out(settings.topic_dead_letter)
    assert [(k, d["reason"], d["source"]["offset"]) for k, d in letters] == [
        (b"s-2", "processing_error", 1),
        (b"s-2", "processing_error", 4),
    ]
    assert all(d["detail"].startswith("OverflowError: int too large") for _, d in letters)
    sent = [(t, k) for t, k, _, _ in harness.sent if t != settings.topic_dead_letter]
    assert b"s-2" not in {k for _, k in sent}
    for shopper in (b"s-1", b"s-3"):
        assert (settings.topic_signals, shopper) in sent
        assert (settings.topic_tier_changes, shopper) in sent
    assert harness.metric("intent_shopper_failures_total", stage=stage) == 1
    rejected = harness.metric("intent_events_rejected_total", reason="processing_error")
    assert rejected == 2
    # s-2's state was not written (nor kept in memory): its events are new to it next time
    assert harness.run(pipeline.reader.record("s-1")) is not None
    assert harness.run(pipeline.reader.record("s-2")) is None
    assert "s-2" not in pipeline.owner.cache


def test_the_sweep_skips_a_failing_shopper_and_finishes_its_pass(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five shoppers start checkouts and buy nothing; the timer's pass fires their
    absences. Detection of one of them raises: it is skipped, counted, logged and taken
    off the timer's indexes, and the four others get their cart recovery in the same
    pass. Later passes run on without failing on it again."""
    pipeline = harness.pipeline
    start = datetime.now(UTC) - timedelta(hours=2)
    shoppers = [f"chk-{n}" for n in range(5)]
    bodies = [ev(s, 0, "checkout_started", sku="MUG", start=start) for s in shoppers]
    records = [harness.event(b, i) for i, b in enumerate(bodies)]
    harness.run(pipeline.handle(records))
    poisoned = shoppers[2]
    advance = pipeline.core.engine.advance

    def failing(shopper: str, *args: Any) -> Any:
        if shopper == poisoned:
            raise OverflowError("int too large to convert to float")
        return advance(shopper, *args)

    monkeypatch.setattr(pipeline.core.engine, "advance", failing)
    monkeypatch.setattr(pipeline.loop, "caught_up", True)
    pipeline.sweeper.last_input = {}  # idle: the timer goes by the wall clock
    partitions = {r.partition for r in records}
    handled = harness.run(pipeline.sweeper.sweep_partitions(partitions))

    recovered = {k for k, _ in harness.out(harness.settings.topic_cart_recovery)}
    assert recovered == {s.encode() for s in shoppers if s != poisoned}
    assert handled >= len(shoppers)
    assert harness.metric("intent_shopper_failures_total", stage="sweep") == 1
    due = harness.run(pipeline.reader.due_deadlines(records[2].partition, float("inf"), 100))
    assert poisoned not in due  # quarantined: no pass fails on it again
    for _ in range(5):
        harness.run(pipeline.sweeper.sweep_partitions(partitions))
    assert harness.metric("intent_shopper_failures_total", stage="sweep") == 1
    assert harness.metric("intent_worker_ready") == 1  # the pass itself never failed


def test_a_partition_whose_chunk_fails_does_not_stop_the_others(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not one shopper's fault: a partition's chunk raises. That partition's pass ends
    (its output dropped, so all of it is due again), and the other partitions' go on."""
    pipeline = harness.pipeline
    start = datetime.now(UTC) - timedelta(hours=2)
    bodies = [ev(f"p-{n}", 0, "checkout_started", sku="MUG", start=start) for n in range(40)]
    records = [harness.event(b, i) for i, b in enumerate(bodies)]
    harness.run(pipeline.handle(records))
    partitions = sorted({r.partition for r in records})
    broken = partitions[0]
    sweeper = pipeline.sweeper
    sweep = sweeper._deadlines

    async def failing(partition: int, *args: Any) -> int:
        if partition == broken:
            raise RuntimeError("a bug in the sweep")
        return await sweep(partition, *args)

    monkeypatch.setattr(sweeper, "_deadlines", failing)
    monkeypatch.setattr(pipeline.loop, "caught_up", True)
    sweeper.last_input = {}
    harness.run(sweeper.sweep_partitions(set(partitions)))

    recovered = {k.decode() for k, _ in harness.out(harness.settings.topic_cart_recovery) if k}
    expected = {r.key.decode() for r in records if r.key and r.partition != broken}
    assert recovered == expected
    assert harness.metric("intent_shopper_failures_total", stage="sweep_chunk") == 1
    monkeypatch.setattr(sweeper, "_deadlines", sweep)
    harness.run(sweeper.sweep_partitions(set(partitions)))  # fixed: it is all still due
    recovered = {k.decode() for k, _ in harness.out(harness.settings.topic_cart_recovery) if k}
    assert recovered == {r.key.decode() for r in records if r.key}


@pytest.fixture(scope="module")
def fuzz_harness(servers: Servers) -> Iterator[Harness]:
    made = Harness(servers.redis_url)
    yield made
    made.close()


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rng=st.randoms(use_true_random=False), size=st.integers(1, 40))
def test_fuzzed_records_never_raise_out_of_a_batch_and_all_are_accounted_for(
    fuzz_harness: Harness, rng: random.Random, size: int
) -> None:
    """Hypothesis drives the records (its random source can be shrunk and replayed);
    the same generator makes the 10,000 records of the worker's fuzz test. Each example
    runs ingest on a batch, then detection and scoring on what ingest passed, as the
    worker's two stages do, on a real Redis. Nothing raises; every clickstream record
    becomes one intent.events record or one dead letter; every event of the second
    stage is processed or dead-lettered (late); no processing_error: what passes
    ingest is safe for every later stage."""
    harness = fuzz_harness
    pipeline = harness.pipeline
    settings_ = harness.settings
    now = datetime.now(UTC)
    pipeline.clock = lambda: now
    values = [fuzzing.record(rng, now) for _ in range(size)]
    offset = rng.randrange(10**9)
    raw = [
        RawRecord(v, fuzzing.key(rng, v), settings_.topic_clickstream, 0, offset + i)
        for i, v in enumerate(values)
    ]
    harness.sent.clear()
    harness.run(pipeline.handle(raw))

    events = [(k, v) for t, k, v, _ in harness.sent if t == settings_.topic_normalised]
    letters = harness.out(settings_.topic_dead_letter)
    assert len(events) + len(letters) == len(raw)
    assert sorted(d["source"]["offset"] for _, d in letters) == sorted(
        set(d["source"]["offset"] for _, d in letters)
    )
    assert {d["reason"] for _, d in letters} <= INGEST_REASONS

    harness.sent.clear()
    internal = []
    for i, (k, v) in enumerate(events):
        assert k is not None  # ingest keys each event by its shopper
        partition = partition_of(k.decode(), settings_.partitions)  # as its producer picks
        internal.append(RawRecord(v, k, settings_.topic_normalised, partition, offset + i))
    before = Counter(
        {r: harness.metric("intent_events_rejected_total", reason=r) for r in errors.REASONS}
    )
    harness.run(pipeline.handle(internal))
    letters = harness.out(settings_.topic_dead_letter)
    assert {d["reason"] for _, d in letters} <= {errors.LATE}, letters[:3]
    assert len(letters) <= len(internal)
    after = Counter(
        {r: harness.metric("intent_events_rejected_total", reason=r) for r in errors.REASONS}
    )
    assert after - before == Counter(d["reason"] for _, d in letters)
    assert harness.metric("intent_shopper_failures_total", stage="detect") == 0
