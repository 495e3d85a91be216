"""Every topic the processor uses, declared in one place, and created right the first time.

Partitions cannot be added later on the embedded broker, and a producer that writes to
a missing topic gets it auto-created with the broker's default partition count, so every
command that produces calls `ensure_topics` first.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Final

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from stream.errors import BrokerUnavailable
from stream.settings import Settings

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS: Final = 30.0  # a broker that just started may need a moment


def admin_client(settings: Settings, timeout: float = CONNECT_TIMEOUT_SECONDS) -> KafkaAdminClient:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return KafkaAdminClient(
                **settings.kafka_options(), client_id=f"{settings.app_id}-admin"
            )
        except KafkaError as exc:
            if time.monotonic() >= deadline:
                raise BrokerUnavailable(
                    f"no Kafka broker answers at {settings.kafka_bootstrap}: start one "
                    "(`intent dev` starts an embedded one) or set INTENT_KAFKA_BOOTSTRAP"
                    f"{settings.kafka_security_hint()}"
                ) from exc
            time.sleep(0.5)


# The suppression topic is where consent is rebuilt from after Redis lost its data
# (`stream.worker.store_guard`): opt-outs last for years, so it keeps every record. Not
# compacted: its key is the shopper, and a shopper may hold several suppressions.
KEPT_FOREVER: Final = {"retention.ms": "-1", "retention.bytes": "-1"}


def ensure_topics(settings: Settings) -> list[str]:
    """Create every missing topic with `settings.partitions`; return the ones created."""
    admin = admin_client(settings)
    try:
        existing = set(admin.list_topics())
        wanted = sorted(set(settings.topic_names().values()))
        missing = [name for name in wanted if name not in existing]
        created: list[str] = []
        for name in missing:
            configs = KEPT_FOREVER if name == settings.topic_suppression else {}
            with contextlib.suppress(TopicAlreadyExistsError):  # a racing worker made it
                admin.create_topics([NewTopic(name, settings.partitions, 1, topic_configs=configs)])
                created.append(name)
        _warn_on_partition_mismatch(admin, settings, [n for n in wanted if n in existing])
        return created
    finally:
        admin.close()


def _warn_on_partition_mismatch(
    admin: KafkaAdminClient, settings: Settings, names: list[str]
) -> None:
    if not names:
        return
    for description in admin.describe_topics(names):
        count = len(description.get("partitions") or [])
        if count and count != settings.partitions:
            log.warning(
                "topic %s has %d partitions, INTENT_PARTITIONS is %d; "
                "keyed data stays consistent, but the worker count is capped at %d",
                description.get("topic"), count, settings.partitions, count,
            )  # fmt: skip
