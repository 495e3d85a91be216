"""Real Kafka and Redis for the integration tests.

Order of preference: servers named by INTENT_TEST_KAFKA_BOOTSTRAP / INTENT_TEST_REDIS_URL;
testcontainers (Apache Kafka in KRaft mode, Redis) when a Docker engine answers; else the
embedded stack (Tansu + redis-server). Kafka tests never skip.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from stream.devstack.embedded import EmbeddedStack

KAFKA_IMAGE = "confluentinc/cp-kafka:7.6.0"  # Apache Kafka (community build) with KRaft
REDIS_IMAGE = "redis:7"


@dataclass(frozen=True)
class Servers:
    kafka_bootstrap: str
    redis_url: str
    kind: str


def docker_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def _containers() -> Iterator[Servers]:
    try:
        from testcontainers.community.kafka import KafkaContainer
        from testcontainers.community.redis import RedisContainer
    except ImportError:  # older testcontainers
        from testcontainers.kafka import KafkaContainer
        from testcontainers.redis import RedisContainer

    with KafkaContainer(KAFKA_IMAGE).with_kraft() as kafka, RedisContainer(REDIS_IMAGE) as redis:
        host = redis.get_container_host_ip()
        port = redis.get_exposed_port(6379)
        yield Servers(kafka.get_bootstrap_server(), f"redis://{host}:{port}/0", "testcontainers")


@contextlib.contextmanager
def test_servers(run_dir: Path) -> Iterator[Servers]:
    kafka = os.environ.get("INTENT_TEST_KAFKA_BOOTSTRAP")
    redis = os.environ.get("INTENT_TEST_REDIS_URL")
    if kafka and redis:
        yield Servers(kafka, redis, "external")
    elif docker_answers():
        with _containers() as servers:
            yield servers
    else:
        with EmbeddedStack(run_dir) as stack:
            yield Servers(stack.kafka_bootstrap, stack.redis_url, "embedded")


def drop_keys(redis_url: str, app_id: str) -> None:
    """Delete every key of one app id (a test's own prefix)."""
    client = redis.Redis.from_url(redis_url)
    try:
        for key in client.scan_iter(f"{app_id}:*", count=1000):
            client.delete(key)
    finally:
        client.close()
