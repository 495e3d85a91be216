"""Redis Cluster, on a real cluster of three masters: the worker, `intent shopper` and
`intent forget` find out from INTENT_REDIS_URL alone that it names a cluster node, and
two workers on the real broker emit exactly what replay computes while slots holding
their partitions move from one master to another under traffic."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from redis.crc import key_slot

from stream.cli import main
from stream.devstack.embedded import free_port
from stream.settings import Settings
from stream.state.connection import is_cluster_server
from stream.state.records import Keys
from stream.topics import ensure_topics
from tests.integration.cluster import Cluster, redis_cluster
from tests.integration.conftest import scrape_metrics, wait_for
from tests.integration.kafka_io import produce
from tests.integration.servers import Servers
from tests.integration.test_live_matches_replay import assert_outputs_match, workload

pytestmark = pytest.mark.integration
MOVED = 2000  # slots moved from the first master to the second, under traffic


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with redis_cluster(tmp_path / "cluster") as made:
        yield made


def test_two_workers_on_a_cluster_match_replay_through_a_reshard(
    cluster: Cluster,
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    start_worker: Any,
    rees46_file: Path,
    tmp_path: Path,
) -> None:
    env["INTENT_REDIS_URL"] = cluster.url  # one node: the rest is found from it
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    keys = Keys(settings.app_id)
    first, second = cluster.ports[0], cluster.ports[1]
    # the partitions whose keys the reshard moves: those whose slot is among the first
    # master's lowest MOVED slots (redis-cli moves a source's slots from its first)
    owned = sorted(s for s in range(16384) if cluster.slot_owner(s) == first)[:MOVED]
    moving = [p for p in range(settings.partitions) if key_slot(keys.epoch(p).encode()) in owned]
    assert moving, "the reshard would move none of the partitions' slots"

    lines, late_ids, expected = workload(rees46_file, tmp_path)
    ensure_topics(settings)
    half = len(lines) // 2
    records = [(json.loads(line)["shopper_id"].encode(), line) for line in lines]
    produce(settings.kafka_bootstrap, settings.topic_clickstream, records[:half])
    start_worker()
    metrics = settings.metrics_port
    env["INTENT_METRICS_PORT"], env["INTENT_WEB_PORT"] = str(free_port()), str(free_port())
    start_worker()  # the second worker, on ports of its own
    wait_for(lambda: _written(metrics) > 0, 90, "the workers' first writes")
    resharding = cluster.reshard_async(MOVED, first, second, tmp_path / "reshard.log")
    produce(settings.kafka_bootstrap, settings.topic_clickstream, records[half:])
    assert resharding.wait(timeout=180) == 0, (tmp_path / "reshard.log").read_text()[-2000:]
    cluster.wait_stable()
    assert all(cluster.slot_owner(key_slot(keys.epoch(p).encode())) == second for p in moving)

    assert_outputs_match(settings, expected, late_ids)

    # Reads find the cluster too: a shopper's profile, then a forget through its owner.
    shopper = next(c["shopper_id"] for c in expected.changes.values())
    shown = CliRunner().invoke(main, ["shopper", shopper])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["known"] is True
    forgot = CliRunner().invoke(main, ["forget", shopper, "--yes", "--wait", "60"])
    assert forgot.exit_code == 0, forgot.output
    assert f"forgot {shopper}" in forgot.output
    client = redis.cluster.RedisCluster.from_url(cluster.url)
    try:
        tiers = [keys.tier(p, t) for p in range(settings.partitions) for t in ("low", "mid")]
        assert not any(client.sismember(key, shopper) for key in tiers)
    finally:
        client.close()


def _written(port: int) -> float:
    try:
        metrics = scrape_metrics(port)
    except OSError:
        return 0.0
    return metrics.get('intent_redis_roundtrips_total{op="write"}', 0.0)


def test_a_cluster_node_is_told_from_a_standalone_server(
    cluster: Cluster, servers: Servers
) -> None:
    assert is_cluster_server(cluster.url, {}) is True
    assert is_cluster_server(servers.redis_url, {}) is False
