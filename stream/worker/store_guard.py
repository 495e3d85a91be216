"""Redis data loss is detected, never silent; and consent survives it.

A deployment marks its Redis (`<app>:deployment`) when it first starts. Each worker
checks the mark at every assignment, and every write checks its partition's epoch
(`lua/fence.lua`), which Redis loses with the rest:

- The mark is there: Redis holds this deployment's state.
- It is missing and the consumer group has never committed the clickstream: a new
  deployment. The worker marks Redis.
- It is missing and the group has committed: Redis lost its data (a restart without
  persistence, a flush, a failover to an empty replica). The worker stops with that
  message: carrying on would score every shopper from nothing, and market again to
  shoppers who opted out. With INTENT_START_FROM_EMPTY_REDIS the worker instead says
  loudly that it starts from empty, rebuilds the suppressions, and marks Redis.
- A partition's epoch goes missing while the worker runs: the worker stops
  (`StoreLost`), its batch uncommitted.

Suppressions (opt-outs, spam complaints: kept for years) are rebuilt from the
suppression topic, `intent.actions.suppression`, which the project creates with
unlimited retention: every suppression the worker ever applied went out there first.
Each partition's owner rebuilds its own partition's when it finds the partition's epoch
missing in a deployment whose group has committed (`after_taken`): after a start from
empty, and after an upgrade from the state format before epochs.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.core.detectors.engine import ADVANCED
from stream.core.scoring import ScoreSignal
from stream.settings import Settings
from stream.state.store import partition_of
from stream.worker.kafka import committed_offsets
from stream.worker.outbox import Outbox
from stream.worker.retry import RedisUnusable

if TYPE_CHECKING:
    from stream.worker.pipeline import Pipeline

log = logging.getLogger(__name__)

REBUILD_BATCH: Final = 500  # shoppers per load and fenced write while rebuilding
REBUILD_HALF_LIFE: Final = 3600.0  # a rebuilt suppression carries no points


class StoreLost(RedisUnusable):
    """Redis does not hold this deployment's state: the worker stops with this message."""

    def __init__(self, message: str) -> None:
        Exception.__init__(self, message)
        self.what = "deployment mark"
        self.error: Exception = self


class StoreGuard:
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.settings: Settings = pipeline.settings
        self.key = f"{self.settings.app_id}:deployment"
        self.checked = False  # set once an assignment found or made the mark

    # --- at an assignment -----------------------------------------------------------
    async def on_assigned(self, consumer: AIOKafkaConsumer) -> None:
        redis = self.pipeline.redis
        if await redis.exists(self.key):
            self.checked = True
            return
        if not await self._group_has_committed(consumer):
            await redis.set(self.key, self._stamp("created"), nx=True)
            log.info("a new deployment: marked its Redis (%s)", self.key)
            self.checked = True
            return
        where = _where(self.settings.redis_url.get_secret_value())
        if not self.settings.start_from_empty_redis:
            raise StoreLost(
                f"Redis at {where} does not hold this deployment's state: its mark "
                f"{self.key} is missing, but the consumer group {self.settings.stream_group} "
                "has committed offsets. Redis lost its data (no persistence, a flush, or "
                "a failover to an empty replica). Restore it from a backup, or set "
                "INTENT_START_FROM_EMPTY_REDIS=true to start from empty: every score and "
                "partial match starts again, and the suppressions are rebuilt from "
                f"{self.settings.topic_suppression}."
            )
        log.critical(
            "STARTING FROM AN EMPTY REDIS (INTENT_START_FROM_EMPTY_REDIS): Redis at %s "
            "lost this deployment's state. Scores and partial matches start again from "
            "nothing; rebuilding the suppressions from %s",
            where,
            self.settings.topic_suppression,
        )
        await redis.set(self.key, self._stamp("restarted from empty"))
        self.pipeline.metrics.store_restarts.inc()
        log.critical(
            "the deployment goes on from empty; each partition's owner rebuilds its "
            "suppressions as it takes the partition"
        )
        self.checked = True

    async def _group_has_committed(self, consumer: AIOKafkaConsumer) -> bool:
        topic = self.settings.topic_clickstream
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        found = await committed_offsets(consumer, partitions)
        return any(offset for offset in found.values())

    def _stamp(self, what: str) -> str:
        return f"{what} {datetime.now(UTC).isoformat()} by {socket.gethostname()}"

    async def after_taken(self, consumer: AIOKafkaConsumer, fresh: list[int]) -> None:
        """`fresh`: partitions whose epoch this worker found missing and created. In a
        deployment whose group has committed, their suppressions are rebuilt."""
        if not await self._group_has_committed(consumer):
            return
        rebuilt = await rebuild_suppressions(self.pipeline, set(fresh))
        if rebuilt:
            log.warning(
                "rebuilt %d suppressions of partitions %s from %s",
                rebuilt,
                ", ".join(map(str, fresh)),
                self.settings.topic_suppression,
            )

    # --- in every write -----------------------------------------------------------
    def lost(self, reply: str) -> StoreLost:
        """The worker stops: a write found its partition's epoch gone."""
        exc = StoreLost(
            f"Redis lost this deployment's state while the worker ran ({reply}). The "
            "worker stops; its batch is not committed."
        )
        self.pipeline.loop.give_up(exc)
        return exc


def _where(url: str) -> str:
    """The Redis URL without its credentials, for messages."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path}"


async def rebuild_suppressions(
    pipeline: Pipeline,
    partitions: set[int],
    progress: Callable[[int, int], Awaitable[None]] | None = None,
) -> int:
    """Apply every suppression still in force on the suppression topic again, for the
    shoppers of these intent.events partitions, through the scoring maths (the same
    state, tier and expiry as the first time); returns how many. A later `unsuppress`
    of the same scope, or a `forget`, cancels what came before it."""
    settings = pipeline.settings
    active = {
        shopper: signals
        for shopper, signals in (await _active_suppressions(settings)).items()
        if partition_of(shopper, settings.partitions) in partitions
    }
    shoppers = sorted(active)
    done = 0
    for i in range(0, len(shoppers), REBUILD_BATCH):
        chunk = {s: partition_of(s, settings.partitions) for s in shoppers[i : i + REBUILD_BATCH]}
        failures = pipeline.failures()
        records = await pipeline.load(chunk, failures)
        apply = pipeline.apply(records, failures, "score")
        results = await apply({s: (active[s], None) for s in records})
        outbox = Outbox()
        for shopper in results:
            outbox.saved[shopper] = (chunk[shopper], records[shopper])
        pipeline.index(results, {}, chunk, {}, outbox)
        await pipeline.flush(outbox)
        done += sum(len(active[s]) for s in results)
        log.info("rebuilt the suppressions of %d/%d shoppers", i + len(chunk), len(shoppers))
        if progress is not None:
            await progress(i + len(chunk), len(shoppers))
    return done


async def _active_suppressions(settings: Settings) -> dict[str, list[ScoreSignal]]:
    """shopper -> the suppressions in force now, read from the whole topic."""
    now = time.time()
    by_shopper: dict[str, dict[str, tuple[int, ScoreSignal]]] = defaultdict(dict)
    consumer = AIOKafkaConsumer(
        **settings.kafka_options(), enable_auto_commit=False, isolation_level="read_committed"
    )
    await consumer.start()
    try:
        topic = settings.topic_suppression
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not partitions:
            return {}
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        left = {tp for tp in partitions if ends[tp] > 0}
        while left:
            batches = await consumer.getmany(*left, timeout_ms=1000)
            for tp, records in batches.items():
                for record in records:
                    _take(by_shopper, tp.partition, record.value, now)
            for tp in list(left):
                if await consumer.position(tp) >= ends[tp]:
                    left.discard(tp)
    finally:
        await consumer.stop()
    return {
        shopper: [signal for _, signal in held.values()]
        for shopper, held in by_shopper.items()
        if held
    }


def _take(
    by_shopper: dict[str, dict[str, tuple[int, ScoreSignal]]],
    partition: int,
    value: bytes | None,
    now: float,
) -> None:
    try:
        record = orjson.loads(value or b"")
        shopper, op = record["shopper_id"], record["op"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        log.warning("skipping an unreadable suppression record on partition %d", partition)
        return
    held = by_shopper[shopper]
    if op == "forget":
        held.clear()
        return
    key = record["scope"] if not record.get("value") else f"{record['scope']}:{record['value']}"
    if op == "unsuppress":
        held.pop(key, None)
        return
    until = datetime.fromisoformat(record["until"]).timestamp() if record.get("until") else 0.0
    if op != "suppress" or until <= now:
        held.pop(key, None)
        return
    at = datetime.fromisoformat(record["at"]).timestamp()
    held[key] = (
        partition,
        ScoreSignal(
            id=f"rebuilt:{record['record_id']}",
            t=at,
            points=0.0,
            half_life=REBUILD_HALF_LIFE,
            rule=record.get("rule_id") or "suppression",
            suppress=key,
            until=until,
            group=ADVANCED,
        ),
    )
