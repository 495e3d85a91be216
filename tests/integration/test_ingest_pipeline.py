"""1,000 mixed records through the real topics and a real worker: every valid one comes
out normalised and keyed by shopper, every invalid one is dead-lettered with its reason
and original bytes, and the counts add up exactly."""

from __future__ import annotations

import base64
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.adapters import decode_json
from stream.settings import Settings
from stream.topics import ensure_topics
from tests.integration.conftest import scrape_metrics
from tests.integration.kafka_io import Reader, produce

TOTAL = 1000


def mixed_records(
    now: datetime,
) -> tuple[list[tuple[bytes | None, bytes]], Counter[str]]:
    """(key, value) records and the expected outcome count: 'valid' or a rejection reason."""
    records: list[tuple[bytes | None, bytes]] = []
    expected: Counter[str] = Counter()

    def add(outcome: str, body: Any, key: bytes | None = None) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        records.append((key, raw))
        expected[outcome] += 1

    for i in range(TOTAL):
        shopper = f"s-{i % 97}"
        # Within 200 s: keyless records spread over input partitions, so a shopper's
        # events reach the detect stage in any order, and beyond the allowed lateness
        # (5 min) it would rightly dead-letter them as `late`. This test is about ingest.
        ts = (now - timedelta(seconds=(TOTAL - i) * 0.2)).isoformat()
        roll = i % 20
        if roll < 10:  # canonical, half with an explicit event id
            body: dict[str, Any] = {
                "shopper_id": shopper, "type": "product_view", "ts": ts,
                "product": {"sku": f"SKU-{i % 13}", "category": "electronics/cables", "price": 9.5},
            }  # fmt: skip
            if i % 2:
                body["event_id"] = f"evt-{i}"
            add("valid", body, shopper.encode())
        elif roll < 13:
            add("valid", {
                "type": "track", "event": "Product Added", "userId": shopper, "timestamp": ts,
                "messageId": f"seg-{i}", "properties": {"product_id": f"SKU-{i % 13}", "price": 12},
            })  # fmt: skip
        elif roll < 16:
            add("valid", {
                "event_name": "begin_checkout", "user_pseudo_id": shopper,
                "event_timestamp": str(int(datetime.fromisoformat(ts).timestamp() * 1e6)),
                "event_params": [{"key": "ga_session_id", "value": {"int_value": 1234}}],
                "items": [{"item_id": "SKU-1", "price": 10.0, "quantity": 2}],
            })  # fmt: skip
        elif roll == 16:
            add("malformed_json", b'{"shopper_id": "s-1", "type": "page_view", "ts": "2026-')
        elif roll == 17:
            add("missing_shopper_id", {"type": "page_view", "ts": ts, "page": {"type": "home"}})
        elif roll == 18:
            if i % 40 == 18:  # wrong types
                add("invalid_event", {"shopper_id": shopper, "type": "product_view", "ts": ts,
                                      "product": {"sku": "X", "price": "cheap"}})  # fmt: skip
            else:
                add("oversized", {"shopper_id": shopper, "type": "search", "ts": ts,
                                  "properties": {"query": "x" * 70_000}})  # fmt: skip
        else:
            future = (now + timedelta(days=1)).isoformat()
            add("future_timestamp", {"shopper_id": shopper, "type": "cart_view", "ts": future})
    assert len(records) == TOTAL
    return records, expected


def test_mixed_input_is_normalised_or_dead_lettered(
    settings: Settings, env: dict[str, str], start_worker: Any
) -> None:
    now = datetime.now(UTC)
    records, expected = mixed_records(now)
    ensure_topics(settings)
    produce(settings.kafka_bootstrap, settings.topic_clickstream, records)
    # Every valid event through intent.events, to read what ingest made of it (by
    # default, most would be detected at once by this worker, which owns that topic).
    env["INTENT_ALWAYS_REPARTITION"] = "true"
    worker = start_worker()

    reader = Reader(settings.kafka_bootstrap, settings.topic_normalised, settings.topic_dead_letter)
    try:
        out = reader.read_until(TOTAL, timeout=120)
    finally:
        reader.close()
    assert worker.poll() is None, "the worker died on bad input"

    valid = out[settings.topic_normalised]
    dead = [
        r for r in out[settings.topic_dead_letter]
        if json.loads(r.value)["source"]["topic"] == settings.topic_clickstream
    ]  # fmt: skip
    assert len(dead) == len(out[settings.topic_dead_letter]), "the detect stage rejected some"
    reasons = Counter(json.loads(r.value)["reason"] for r in dead)
    assert len(valid) == expected["valid"]
    assert reasons == Counter({k: v for k, v in expected.items() if k != "valid"})
    assert len(valid) + len(dead) == TOTAL

    # Normalised: canonical, re-keyed by shopper, the same ids the core derives offline.
    sent_valid = [v for k, v in records if _is_valid(v, now)]
    expected_ids = sorted(decode_json(v).id for v in sent_valid)
    got_ids = sorted(json.loads(r.value)["event_id"] for r in valid)
    assert got_ids == expected_ids
    for record in valid:
        event = json.loads(record.value)
        assert record.key == event["shopper_id"].encode()
        assert event["source"] in {"canonical", "segment", "ga4"}

    # Dead letters carry the original bytes and where they came from.
    sent = Counter(v for _, v in records)
    for record in dead:
        letter = json.loads(record.value)
        original = base64.b64decode(letter["value_b64"])
        assert sent[original] > 0
        assert letter["source"]["topic"] == settings.topic_clickstream
        assert 0 <= letter["source"]["partition"] < settings.partitions
        assert letter["source"]["offset"] >= 0
        assert dict(record.headers)["intent-reason"] == letter["reason"].encode()

    # And they are counted.
    metrics = scrape_metrics(settings.metrics_port)
    for reason, count in reasons.items():
        assert metrics[f'intent_events_rejected_total{{reason="{reason}"}}'] == count
    consumed = sum(v for k, v in metrics.items() if k.startswith("intent_events_total{"))
    assert consumed == expected["valid"]


def _is_valid(raw: bytes, now: datetime) -> bool:
    from stream.core.ingest import IngestLimits, RawRecord, ingest_batch

    return bool(ingest_batch([RawRecord(raw)], now, IngestLimits()).events)
