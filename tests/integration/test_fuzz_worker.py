"""10,000 fuzzed records through the real topics and a real worker process: it stays
ready, every record is accounted for (an event or a dead letter), and a normal shopper
sent after them, on the partition the fuzz hit hardest, still gets their tier change,
and their cart recovery on time."""

from __future__ import annotations

import json
import random
import time
import urllib.request
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from kafka.partitioner.default import murmur2

from schemas import errors
from stream.settings import Settings
from stream.topics import ensure_topics
from tests import fuzzing
from tests.integration.conftest import scrape_metrics, wait_for
from tests.integration.kafka_io import Reader, produce
from tests.scenarios import ev

RECORDS = 10_000
SEED = 20261205
CHECKOUT_WAIT = 30 * 60  # the default rules' checkout_abandoned window
DUE_IN = 20.0  # the normal shopper's checkout is abandoned this long after it is sent
ON_TIME = 10.0  # ... and its cart recovery must come out within this after that


def _partition(key: bytes, partitions: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % partitions  # the producers' default partitioner


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def test_ten_thousand_fuzzed_records_leave_a_normal_shopper_untouched(
    settings: Settings, start_worker: Any
) -> None:
    rng = random.Random(SEED)
    now = datetime.now(UTC)
    records = []
    for _ in range(RECORDS):
        value = fuzzing.record(rng, now)
        records.append((fuzzing.key(rng, value), value))
    keyed = Counter(_partition(k, settings.partitions) for k, _ in records if k)
    busiest = keyed.most_common(1)[0][0]
    normal = next(
        f"normal-{n}"
        for n in range(1000)
        if _partition(f"normal-{n}".encode(), settings.partitions) == busiest
    )
    ensure_topics(settings)
    start_worker()
    wait_for(lambda: _ready(settings.metrics_port), 60, "the worker to be ready")
    reader = Reader(
        settings.kafka_bootstrap,
        settings.topic_dead_letter,
        settings.topic_tier_changes,
        settings.topic_cart_recovery,
    )
    produce(settings.kafka_bootstrap, settings.topic_clickstream, records)

    # The normal shopper: a cart add (a tier change at once) and a checkout whose
    # 30 minutes run out DUE_IN seconds from now, sent after the fuzz.
    checkout_at = datetime.now(UTC) - timedelta(seconds=CHECKOUT_WAIT - DUE_IN)
    start = checkout_at - timedelta(minutes=1)
    mine = [
        ev(normal, 0, "add_to_cart", sku="MUG", start=start),
        ev(normal, 1, "checkout_started", sku="MUG", start=start),
    ]
    produce(
        settings.kafka_bootstrap,
        settings.topic_clickstream,
        [(normal.encode(), json.dumps(b).encode()) for b in mine],
    )
    due = time.monotonic() + DUE_IN
    sent = RECORDS + len(mine)

    def mine_out(topic: str) -> list[dict[str, Any]]:
        return [json.loads(r.value) for r in reader.records[topic] if r.key == normal.encode()]

    ready_seen: list[bool] = []

    def recovered() -> bool:
        reader.poll()
        ready_seen.append(_ready(settings.metrics_port))
        return bool(mine_out(settings.topic_cart_recovery))

    wait_for(recovered, DUE_IN + 120, "the normal shopper's cart recovery", step=0.5)
    late_by = time.monotonic() - due
    assert late_by <= ON_TIME, f"the cart recovery came {late_by:.1f} s after it was due"
    assert late_by >= -2.0, "the cart recovery came before the checkout was abandoned"
    assert all(ready_seen), "the worker was not ready at some point"
    changes = mine_out(settings.topic_tier_changes)
    assert changes and changes[0]["to_tier"] != "none"
    [recovery] = mine_out(settings.topic_cart_recovery)
    assert recovery["cart"]["items"][0]["sku"] == "MUG"

    def counted() -> bool:
        reader.poll()
        samples = scrape_metrics(settings.metrics_port)
        consumed = sum(v for k, v in samples.items() if k.startswith("intent_events_total"))
        letters = [json.loads(r.value) for r in reader.records[settings.topic_dead_letter]]
        at_ingest = [
            d
            for d in letters
            if d["source"]["topic"] == settings.topic_clickstream
            and d["reason"] not in (errors.LATE, errors.PROCESSING_ERROR)
        ]
        counts["consumed"], counts["ingest_dead"] = int(consumed), len(at_ingest)
        bugs[:] = [d for d in letters if d["reason"] == errors.PROCESSING_ERROR]
        counts["processing_error"] = len(bugs)
        return counts["consumed"] + counts["ingest_dead"] == sent

    counts: Counter[str] = Counter()
    bugs: list[dict[str, Any]] = []
    try:
        wait_for(counted, 60, f"consumed + dead-lettered at ingest to reach {sent}", step=1.0)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {dict(counts)}") from None
    assert counts["processing_error"] == 0, bugs[:3]
    assert counts["ingest_dead"] > RECORDS // 3  # the fuzz is mostly bad input
    assert counts["consumed"] > RECORDS // 5  # and a good share of it valid
    assert _ready(settings.metrics_port)
    print(f"fuzz through the worker: {dict(counts)}, cart recovery {late_by:+.1f} s after due")
    reader.close()
