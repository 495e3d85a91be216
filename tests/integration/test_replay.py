"""Replay gives identical results with the in-process store and with Redis (the Lua)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import redis

from stream.offline.outputs import action_lines
from stream.offline.replay import replay
from stream.rulesfile import load_rules
from stream.settings import Settings
from tests.conftest import REES46_EVENTS
from tests.integration.servers import Servers
from tests.scenarios import generated_file


def test_memory_and_redis_stores_agree_on_a_rees46_file(
    servers: Servers, rees46_file: Path
) -> None:
    sample = rees46_file
    rules = load_rules()
    memory = replay(sample, "rees46", rules)
    # in shards, so the Redis store also serves a run of several (one Redis client, one
    # key prefix, dropped at the end)
    in_redis = replay(sample, "rees46", rules, redis_url=servers.redis_url, shard_events=5000)
    assert (memory.shards, in_redis.shards) == (1, 5)
    assert redis.Redis.from_url(servers.redis_url).keys("replay-*") == []  # cleaned up
    assert memory.events == in_redis.events == REES46_EVENTS
    assert len(memory.changes) > 1000  # a real workload, not a trivial one
    assert [c.model_dump() for c in memory.changes] == [c.model_dump() for c in in_redis.changes]
    topics = Settings().output_topics()
    assert list(action_lines(memory.actions, topics)) == list(
        action_lines(in_redis.actions, topics)
    )


def test_the_command_in_two_processes_scores_in_redis_as_in_process(
    servers: Servers, rees46_file: Path, tmp_path: Path
) -> None:
    from tests.unit.test_replay_shards import OUTPUT_FILES, run_command

    sample = rees46_file
    run_command(sample, tmp_path / "memory")
    output = run_command(
        sample, tmp_path / "redis", "--redis", servers.redis_url, "--jobs", "2",
        "--shard-events", "5000",
    )  # fmt: skip
    assert "5 shards" in output
    for name in OUTPUT_FILES:
        assert (tmp_path / "redis" / name).read_bytes() == (tmp_path / "memory" / name).read_bytes()
    assert redis.Redis.from_url(servers.redis_url).keys("replay-*") == []  # each fork cleaned up


@pytest.mark.parametrize("order", ["time", "file"])
def test_memory_and_redis_stores_agree_on_generated_shoppers(
    servers: Servers, tmp_path: Path, order: str
) -> None:
    """Shoppers who check out, abandon carts, opt out and send events of one second and
    out of order: every scoring path (groups, late absences, suppressions in force) as
    the script and the reference take it, with their events in time order and as they
    come (`--order file`: late events too)."""
    path = generated_file(tmp_path, 7, 400)
    rules = load_rules()
    memory = replay(path, "canonical", rules, order=order)
    in_redis = replay(path, "canonical", rules, redis_url=servers.redis_url, order=order)
    assert (memory.late > 0) == (order == "file") and in_redis.late == memory.late
    fired = Counter(s.rule_id for s in memory.signals)
    assert fired["checkout_abandoned"] > 20 and fired["spam_complaint"] > 0
    assert len(memory.changes) > 1000
    assert [c.model_dump() for c in memory.changes] == [c.model_dump() for c in in_redis.changes]
    topics = Settings().output_topics()
    assert list(action_lines(memory.actions, topics)) == list(
        action_lines(in_redis.actions, topics)
    )
