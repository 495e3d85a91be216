"""The signal engine on the real broker and Redis, through a real worker process."""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from stream.core import scoring
from stream.settings import Settings
from stream.state.records import Keys, decode
from stream.state.store import partition_of
from stream.topics import ensure_topics
from tests.integration.conftest import scrape_metrics, wait_for
from tests.integration.kafka_io import Reader, produce
from tests.scenarios import ev, scenarios


def _send(settings: Settings, bodies: list[dict[str, Any]]) -> None:
    records = [(b["shopper_id"].encode(), json.dumps(b).encode()) for b in bodies]
    produce(settings.kafka_bootstrap, settings.topic_clickstream, records)


def _warm_up(settings: Settings, reader: Reader) -> None:
    """Wait until the worker consumes (it counts a first event; most skip intent.events),
    so group start-up is not part of what a test measures."""
    _send(settings, [ev("warm", 0, "page_view", page="home", start=datetime.now(UTC))])

    def consumed() -> bool:
        try:
            samples = scrape_metrics(settings.metrics_port)
        except AssertionError:  # its /metrics not up yet
            return False
        return sum(v for k, v in samples.items() if k.startswith("intent_events_total{")) >= 1

    wait_for(consumed, 60, "the worker to start consuming")
    reader.poll()


def _signals_by_shopper(records: list[Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        signal = json.loads(record.value)
        assert record.key == signal["shopper_id"].encode()
        out.setdefault(signal["shopper_id"], []).append(signal)
    return out


def test_playbook_scenarios_fire_exactly_their_signals(
    settings: Settings, start_worker: Any
) -> None:
    # Three days ago: every window and deadline in the scripts has passed, so the sweep
    # fires the absences and visit ends at once, with no further input.
    cases = scenarios(prefix="it-", start=datetime.now(UTC) - timedelta(days=3))
    expected_total = sum(len(case.fires) for case in cases)
    ensure_topics(settings)
    _send(settings, [body for case in cases for body in case.events])
    start_worker()

    reader = Reader(settings.kafka_bootstrap, settings.topic_signals, settings.topic_dead_letter)
    try:
        out = reader.read_until(expected_total, timeout=120, settle=4)
        assert out[settings.topic_dead_letter] == []
        by_shopper = _signals_by_shopper(out[settings.topic_signals])
        for case in cases:
            shoppers = {body["shopper_id"] for body in case.events}
            fired = [s for shopper in shoppers for s in by_shopper.get(shopper, [])]
            rules = Counter(s["rule_id"] for s in fired)
            assert rules == Counter(case.fires), case.name
            assert not rules.keys() & case.never, case.name
        signals = out[settings.topic_signals]
        ids = [json.loads(r.value)["signal_id"] for r in signals]
        assert len(ids) == len(set(ids)) == expected_total

        # Replaying the same input emits nothing new: re-sent events are recognised
        # (as duplicates, or as late for their shopper) and no signal id is repeated.
        client = redis.Redis.from_url(settings.redis_url.get_secret_value())
        keys = sorted(client.scan_iter(f"{settings.app_id}:s:*"))  # the shoppers' records
        record_keys = Keys(settings.app_id).record
        shoppers = {body["shopper_id"] for case in cases for body in case.events}
        assert set(keys) == {
            record_keys(partition_of(s, settings.partitions), s).encode() for s in shoppers
        }
        before = {k: client.get(k) for k in keys}
        _send(settings, [body for case in cases for body in case.events])
        replayed = reader.read_until(expected_total + 1, timeout=20, settle=4)
        assert len(replayed[settings.topic_signals]) == expected_total
        late = [json.loads(r.value) for r in replayed[settings.topic_dead_letter]]
        assert {d["reason"] for d in late} <= {"late"}
        after = {k: client.get(k) for k in keys}
        assert after == before, "replaying the input changed the shoppers' state"
        # The state is bounded and expires.
        # (the score keeps its shopper's record until it has decayed below a hundredth of
        # a point, and a suppression until it ends: opt-outs for years)
        for key in keys:
            ttl = client.pttl(key)
            score = decode(client.get(key) or b"", {}).score
            assert 0 < ttl <= max(31 * 86400, scoring.lifetime(score)) * 1000
            assert client.memory_usage(key) < 4096
    finally:
        reader.close()


def test_out_of_order_and_late_events(settings: Settings, start_worker: Any) -> None:
    now = datetime.now(UTC) - timedelta(hours=2)
    cable = {"sku": "CBL-USB-C", "category": "electronics/cables"}
    bodies = [
        # The returns page arrives before the product view it follows (2 min out of
        # order, within the 5 min lateness): the sequence still matches.
        ev("ooo", 3, "page_view", session="v1", page="returns", start=now),
        ev("ooo", 0, "product_view", session="v1", start=now, **cable),
        # Far ahead, then an event 20 min older than that: late, dead-lettered.
        ev("ooo", 40, "page_view", session="v1", page="home", start=now),
        ev("ooo", 15, "wishlist_add", session="v1", start=now, **cable),
    ]
    ensure_topics(settings)
    _send(settings, bodies)
    start_worker()
    reader = Reader(settings.kafka_bootstrap, settings.topic_signals, settings.topic_dead_letter)
    try:
        out = reader.read_until(3, timeout=90, settle=3)
    finally:
        reader.close()
    rules = Counter(json.loads(r.value)["rule_id"] for r in out[settings.topic_signals])
    assert rules == Counter(product_viewed=1, product_then_returns=1)
    (late,) = [json.loads(r.value) for r in out[settings.topic_dead_letter]]
    assert late["reason"] == "late"
    assert json.loads(__import__("base64").b64decode(late["value_b64"]))["type"] == "wishlist_add"
    # Dead-lettered by detection (ingest never says "late"), naming the record it read:
    # on intent.events, or on the clickstream if the event skipped that topic.
    assert late["source"]["topic"] in (settings.topic_normalised, settings.topic_clickstream)


ABSENCE_RULES = """
version: 1
defaults: {allowed_lateness: 1s}
rules:
  - id: checkout_abandoned
    kind: absence
    when: {type: checkout_started}
    unless: {type: purchase}
    within: 3s
    points: 15
"""


@pytest.fixture
def quick_absence(env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(ABSENCE_RULES)
    env["INTENT_RULES"] = str(rules)
    monkeypatch.setenv("INTENT_RULES", str(rules))


def test_absence_fires_on_time_with_no_further_input(
    quick_absence: None, settings: Settings, start_worker: Any
) -> None:
    ensure_topics(settings)
    start_worker()
    reader = Reader(settings.kafka_bootstrap, settings.topic_normalised, settings.topic_signals)
    try:
        _warm_up(settings, reader)

        started = datetime.now(UTC)
        _send(settings, [ev("late-buyer", 0, "checkout_started", start=started)])
        deadline = started + timedelta(seconds=3)
        wait_for(lambda: bool(reader.poll() and reader.records[settings.topic_signals]), 30,
                 "the absence signal")  # fmt: skip
        arrived = datetime.now(UTC)
    finally:
        reader.close()
    (signal,) = [json.loads(r.value) for r in reader.records[settings.topic_signals]]
    assert signal["rule_id"] == "checkout_abandoned"
    assert signal["shopper_id"] == "late-buyer"
    assert datetime.fromisoformat(signal["at"]) == deadline
    lag = (arrived - deadline).total_seconds()
    print(f"absence fired {lag:.2f} s after its deadline")
    assert 0 <= lag <= 5.0


BACKLOG = 20_000


def test_a_restarted_worker_reads_what_waited_before_it_fires_by_the_wall_clock(
    quick_absence: None, env: dict[str, str], settings: Settings, start_worker: Any
) -> None:
    """A checkout is pending when the worker dies; the purchase that cancels it comes
    while no worker runs, and the deadline passes. The next worker must read that
    purchase before its sweep (here every 50 ms) turns to the wall clock: it owes
    nobody a cart-recovery nudge. (Before the fix, a partition nothing had been read
    from yet counted as idle, and the first sweeps fired by the wall clock.)"""
    env["INTENT_SWEEP_INTERVAL_SECONDS"] = "0.05"
    ensure_topics(settings)
    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    deadlines = [f"{settings.app_id}:deadlines:{{{p}}}" for p in range(settings.partitions)]

    def pending() -> bool:
        return any(client.zscore(key, "buyer") is not None for key in deadlines)

    record_key = Keys(settings.app_id).record(partition_of("buyer", settings.partitions), "buyer")

    def seen() -> int:  # the buyer's events the detector has taken in
        raw = client.get(record_key)
        return len(decode(raw, {}).patterns["seen"]) if raw else 0

    first = start_worker()
    reader = Reader(settings.kafka_bootstrap, settings.topic_normalised, settings.topic_signals)
    try:
        _warm_up(settings, reader)
        started = datetime.now(UTC)
        _send(settings, [ev("buyer", 0, "checkout_started", start=started)])
        wait_for(pending, 30, "the checkout's deadline to be indexed", step=0.02)
        first.kill()  # kill -9: before its deadline (3 s), so it fired nothing
        first.wait()
        assert datetime.now(UTC) < started + timedelta(seconds=3)
        # The purchase (1 s after the checkout), then a backlog of other shoppers' views
        # in the same second: reading it all takes the next worker a few seconds.
        backlog = [
            ev(f"browser-{i % 2000}", 1.5 / 60, "page_view", page="home", start=started)
            for i in range(BACKLOG)
        ]
        _send(settings, [ev("buyer", 1 / 60, "purchase", start=started), *backlog])
        time.sleep(max(0.0, (started + timedelta(seconds=5) - datetime.now(UTC)).total_seconds()))

        start_worker()
        wait_for(lambda: seen() == 2, 90, "the second worker to take in the purchase")
        out = reader.settle(3)
    finally:
        reader.close()
    fired = [json.loads(r.value) for r in out[settings.topic_signals]]
    assert [s for s in fired if s["shopper_id"] == "buyer"] == []
