"""Errors that retrying does not heal, on a real Redis, through the pipeline: a shopper
whose stored record cannot be read is dead-lettered alone; a Redis out of memory stops
the worker, with its batch uncommitted and nothing dead-lettered; a partition's write
that fails on one of its keys leaves nothing written."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import redis

from stream.state.records import Keys
from stream.state.store import partition_of
from stream.worker import retry
from stream.worker.retry import RedisGaveUp, RedisUnusable
from tests.integration.test_isolation import Harness
from tests.scenarios import ev


def _batch(harness: Harness, shoppers: list[str]) -> list[object]:
    start = datetime.now(UTC) - timedelta(hours=1)
    bodies = [ev(s, m, "add_to_cart", sku="MUG", start=start) for m in (0, 1) for s in shoppers]
    return [harness.event(b, i) for i, b in enumerate(bodies)]


@pytest.mark.parametrize(
    ("raw", "error"),
    [(b"\x07{}", "FormatError: record format 7 is not 3"), (b"\x03not zlib", "error: ")],
    ids=["unknown-format", "corrupt"],
)
def test_a_shopper_whose_record_cannot_be_read_is_dead_lettered_alone(
    harness: Harness, raw: bytes, error: str
) -> None:
    """s-2's stored record is of a format this version does not know, or corrupt: its
    records are dead-lettered as processing_error naming the error, and s-1 and s-3, in
    the same batch, are scored and sent. The record is left as it was, for someone to
    look at."""
    pipeline = harness.pipeline
    settings = harness.settings
    key = Keys(settings.app_id).record(partition_of("s-2", settings.partitions), "s-2")
    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    client.set(key, raw)
    harness.run(pipeline.handle(_batch(harness, ["s-1", "s-2", "s-3"])))

    letters = harness.out(settings.topic_dead_letter)
    assert [(k, d["reason"]) for k, d in letters] == [(b"s-2", "processing_error")] * 2
    for _, letter in letters:
        assert letter["detail"].startswith(error)
    changed = {k for k, _ in harness.out(settings.topic_tier_changes)}
    assert changed == {b"s-1", b"s-3"}
    assert harness.metric("intent_shopper_failures_total", stage="load") == 1
    assert client.get(key) == raw
    client.close()


def test_a_redis_out_of_memory_stops_the_batch_and_dead_letters_nothing(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis refuses writes (maxmemory reached, noeviction): the batch's write is
    retried for UNUSABLE_SECONDS, then the batch raises RedisUnusable (the loop crashes
    and the worker stops, uncommitted). Its output went out before the write; once
    Redis has memory again the same batch goes through and sends the same records
    again, with the same ids. Nothing is dead-lettered."""
    monkeypatch.setattr(retry, "UNUSABLE_SECONDS", 1.0)
    pipeline = harness.pipeline
    records = _batch(harness, ["m-1", "m-2"])
    client = redis.Redis.from_url(harness.settings.redis_url.get_secret_value())
    before = client.config_get("maxmemory")["maxmemory"]
    client.config_set("maxmemory", 1)
    try:
        with pytest.raises(RedisUnusable, match=r"OutOfMemoryError|OOM command not allowed"):
            harness.run(pipeline.handle(records))
    finally:
        client.config_set("maxmemory", before)
    first = list(harness.sent)
    assert first  # sent before the write, which Redis refused
    assert harness.metric("intent_redis_errors_total", stage="write") >= 2
    assert harness.run(pipeline.reader.record("m-1")) is None  # nothing written
    harness.sent.clear()
    harness.run(pipeline.handle(records))  # the batch again, as after a restart
    assert harness.sent == first
    changed = {k for k, _ in harness.out(harness.settings.topic_tier_changes)}
    assert changed == {b"m-1", b"m-2"}
    assert harness.out(harness.settings.topic_dead_letter) == []
    assert harness.run(pipeline.reader.record("m-1")) is not None
    client.close()


def test_a_partition_write_that_fails_on_one_key_writes_nothing(harness: Harness) -> None:
    """A partition's deadline index holds a value of another type (not the worker's):
    its fenced write fails, every try, and the batch raises. The records are written
    last, after the index moves: no record is left written, so the batch, processed
    again once the key is cleared, finds its events new and sends and writes the same
    as the first time, the shopper's tier set included."""
    settings = harness.settings
    pipeline = harness.pipeline
    keys = Keys(settings.app_id)
    partition = partition_of("w-1", settings.partitions)
    deadlines = keys.deadlines(partition)
    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    client.set(deadlines, "not what the worker wrote")
    records = _batch(harness, ["w-1"])
    try:
        with pytest.raises(RedisGaveUp, match="WRONGTYPE"):
            harness.run(pipeline.handle(records))
        first = list(harness.sent)
        client.delete(deadlines)
        assert harness.run(pipeline.reader.record("w-1")) is None
        harness.sent.clear()
        harness.run(pipeline.handle(records))  # the batch again, as after a restart
        assert harness.sent == first
        tier = harness.out(settings.topic_tier_changes)[-1][1]["to_tier"]
        assert client.smembers(keys.tier(partition, tier)) == {b"w-1"}
    finally:
        client.close()
