"""Redis errors that retrying does not heal, on a real Redis, through the pipeline: a
shopper whose keys have the wrong type is dead-lettered alone; a Redis out of memory
stops the worker, with its batch uncommitted and nothing dead-lettered."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import redis

from stream.worker import retry
from stream.worker.retry import RedisUnusable
from tests.integration.test_isolation import Harness
from tests.scenarios import ev


def _batch(harness: Harness, shoppers: list[str]) -> list[object]:
    start = datetime.now(UTC) - timedelta(hours=1)
    bodies = [ev(s, m, "add_to_cart", sku="MUG", start=start) for m in (0, 1) for s in shoppers]
    return [harness.event(b, i) for i, b in enumerate(bodies)]


@pytest.mark.parametrize("stage", ["load", "score"])
def test_a_shopper_whose_keys_have_the_wrong_type_is_dead_lettered_alone(
    harness: Harness, stage: str
) -> None:
    """s-2's detection state (`load`) or score hash (`score`) is a list: its records are
    dead-lettered as processing_error naming WRONGTYPE, and s-1 and s-3, in the same
    batch, are scored and sent."""
    pipeline = harness.pipeline
    key = pipeline.store.state_key("s-2") if stage == "load" else pipeline.scores.keys("s-2")[0]
    client = redis.Redis.from_url(harness.settings.redis_url.get_secret_value())
    client.rpush(key, "not what the worker wrote")
    harness.run(pipeline.handle(_batch(harness, ["s-1", "s-2", "s-3"])))

    settings = harness.settings
    letters = harness.out(settings.topic_dead_letter)
    assert [(k, d["reason"]) for k, d in letters] == [(b"s-2", "processing_error")] * 2
    for _, letter in letters:  # the script's error names the line and the Redis error
        assert letter["detail"].startswith("ResponseError: ")
        assert "WRONGTYPE Operation against a key" in letter["detail"]
    changed = {k for k, _ in harness.out(settings.topic_tier_changes)}
    assert changed == {b"s-1", b"s-3"}
    assert harness.metric("intent_shopper_failures_total", stage=stage) == 1
    assert client.type(key) == b"list"  # left as it was, for someone to look at
    client.close()


def test_a_redis_out_of_memory_stops_the_batch_and_dead_letters_nothing(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis refuses writes (maxmemory reached, noeviction): the score step is retried
    for UNUSABLE_SECONDS, then the batch raises RedisUnusable (the loop crashes and the
    worker stops, uncommitted). Nothing is sent or dead-lettered; once Redis has memory
    again the same batch goes through."""
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
    assert harness.sent == []
    assert harness.metric("intent_redis_errors_total", stage="score") >= 2
    harness.run(pipeline.handle(records))  # the batch again, as after a restart
    changed = {k for k, _ in harness.out(harness.settings.topic_tier_changes)}
    assert changed == {b"m-1", b"m-2"}
    assert harness.out(harness.settings.topic_dead_letter) == []
    client.close()
