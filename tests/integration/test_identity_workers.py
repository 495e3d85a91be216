"""Identity stitching through the real broker and real worker processes
(`python -m stream worker`): the journey of `test_identity.py`, an anonymous visitor
who fills a cart, starts a checkout and signs in, with the anonymous id and the known id
on intent.events partitions of two different workers, so that the anonymous state moves
between processes through the topic. Then a third worker joins, the anonymous id's owner
is killed (SIGKILL), and a fresh pair merges exactly once on the workers left; `intent
forget` on its known id erases both ids.

Which worker owns a partition is found by a probe: one product view of a throwaway
shopper of that partition, detected (`intent_event_lag_seconds{stage="detect"}`) by the
partition's owner alone. The journeys run at the wall clock's time (their later events
ahead of it, INTENT_MAX_CLOCK_SKEW_SECONDS raised): stamped in the past, an idle
partition's sweep would fire the anonymous checkout's deadline by the wall clock before
the sign-in is read, as no live shopper's could."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any

import pytest
import redis

from bench.failover import ready
from stream.devstack.embedded import free_port
from stream.settings import Settings
from stream.state.records import Keys, decode
from stream.state.store import partition_of
from stream.topics import ensure_topics
from tests.integration.conftest import scrape_metrics, wait_for
from tests.integration.kafka_io import Reader, produce
from tests.integration.test_identity import journey, journey_mid
from tests.scenarios import T0, ev

pytestmark = pytest.mark.integration

TIMEOUT = 60.0
SKEW = 6 * 3600  # events up to this far ahead of the wall clock are taken
DETECTED = "intent_event_lag_seconds_count"  # one per event its owner detected
MERGES = "intent_identity_merges_total"
OUTPUTS = ("tier_changes", "retargeting", "cart_recovery", "nurture", "suppression", "signals")
ID_FIELDS = ("change_id", "action_id", "trigger_id", "record_id", "signal_id")
DEPTH = {"viewed_product", "added_to_cart", "started_checkout"}


@dataclass
class Worker:
    name: str
    proc: subprocess.Popen[bytes]
    port: int

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples `name` whose labels include `labels`."""
        total = 0.0
        for key, value in scrape_metrics(self.port).items():
            base, _, rest = key.partition("{")
            if base == name and all(f'{k}="{v}"' in rest for k, v in labels.items()):
                total += value
        return total

    def detected(self) -> float:
        return self.metric(DETECTED, stage="detect")


def id_on(partition: int, prefix: str, partitions: int) -> str:
    """A shopper id whose intent.events partition is `partition`."""
    return next(
        shopper
        for shopper in (f"{prefix}-{i}" for i in count())
        if partition_of(shopper, partitions) == partition
    )


class Journeys:
    """The test's view of the deployment: its workers, its input, its outputs."""

    def __init__(self, settings: Settings, env: dict[str, str], start_worker: Any) -> None:
        self.settings = settings
        self.env = env
        self.start_worker: Callable[[], subprocess.Popen[bytes]] = start_worker
        self.workers: list[Worker] = []
        self.reader = Reader(
            settings.kafka_bootstrap, *(getattr(settings, f"topic_{t}") for t in OUTPUTS)
        )
        self.probes = count()

    def start(self) -> Worker:
        port = free_port()
        self.env["INTENT_METRICS_PORT"] = str(port)
        self.env["INTENT_WEB_PORT"] = str(free_port())
        worker = Worker(f"worker-{len(self.workers)}", self.start_worker(), port)
        self.workers.append(worker)
        return worker

    def live(self) -> list[Worker]:
        return [w for w in self.workers if w.proc.poll() is None]

    def send(self, bodies: list[dict[str, Any]]) -> None:
        produce(
            self.settings.kafka_bootstrap,
            self.settings.topic_clickstream,
            [(b["shopper_id"].encode(), json.dumps(b).encode()) for b in bodies],
        )

    def detected(self) -> dict[str, float]:
        return {w.name: w.detected() for w in self.live()}

    def send_and_detect(self, bodies: list[dict[str, Any]], what: str) -> dict[str, float]:
        """Send events and wait until owners detected them all; returns the detections
        per worker."""
        before = self.detected()
        self.send(bodies)

        def grown() -> dict[str, float]:
            return {name: n - before.get(name, 0.0) for name, n in self.detected().items()}

        wait_for(lambda: sum(grown().values()) >= len(bodies), TIMEOUT, what, step=0.1)
        return grown()

    def owner_of(self, partition: int) -> Worker:
        """The live worker that owns an intent.events partition: the one that detects a
        probe event of a shopper of that partition."""
        shopper = id_on(partition, f"probe{next(self.probes)}", self.settings.partitions)
        body = ev(shopper, 0, "product_view", sku="SKU-P", start=datetime.now(UTC))
        grown = self.send_and_detect([body], f"a probe of partition {partition} detected")
        owners = [w for w in self.live() if grown.get(w.name)]
        assert len(owners) == 1, (partition, grown)
        return owners[0]

    def pair(self, tag: str) -> tuple[str, str, Worker, Worker]:
        """(A, K, A's owner, K's owner): ids on partitions of two different workers."""
        partitions = self.settings.partitions
        anonymous = f"anon-{tag}"
        pa = partition_of(anonymous, partitions)
        a_owner = self.owner_of(pa)
        owners: dict[int, Worker] = {pa: a_owner}
        # the opposite partition first: the range assignor gives each worker a run of them
        for i in range(1, partitions):
            pk = (pa + partitions // 2 + i - 1) % partitions
            if pk == pa:
                continue
            owners[pk] = self.owner_of(pk)
            if owners[pk] is not a_owner:
                known = id_on(pk, f"known-{tag}", partitions)
                return anonymous, known, a_owner, owners[pk]
        raise AssertionError(f"one worker owns every partition: {owners}")

    def outputs(self, topic: str) -> list[dict[str, Any]]:
        name = getattr(self.settings, f"topic_{topic}")
        return [json.loads(r.value) for r in self.reader.records[name]]

    def wait(self, check: Callable[[], bool], what: str) -> None:
        self.reader.wait(check, TIMEOUT, what)

    def merges(self, outcome: str) -> dict[str, float]:
        return {w.name: w.metric(MERGES, outcome=outcome) for w in self.live()}

    def run_journey(self, anonymous: str, known: str, start: datetime) -> None:
        """The journey of `test_identity.journey`, at `start`, batch by batch: each sent
        once the one before has been taken. After the sign-in, A's product view (minute
        7) and K's page view (minute 90) go one at a time: sent at once, K's later event
        could reach K's owner before the forwarded one, which would then be late for the
        merged profile (as it would not be live, where they come 83 minutes apart)."""
        browse, sign_in, *rest = shifted(journey(anonymous, known), start - T0)
        self.send_and_detect(browse, "the anonymous browsing detected")
        merged = sum(self.merges("merged").values())
        self.send(sign_in)
        wait_for(
            lambda: sum(self.merges("merged").values()) > merged,
            TIMEOUT,
            f"{anonymous} merged into {known}",
        )
        view, last = [body for batch in rest for body in batch]
        assert view["shopper_id"] == anonymous and view["product"]["sku"] == "SKU-3"
        self.send([view])
        self.wait(lambda: bool(self.views("SKU-3", anonymous, known)), "the later product view")
        self.send([last])
        self.wait(
            lambda: any(r["shopper_id"] == known for r in self.outputs("cart_recovery")),
            f"the cart recovery of {known}",
        )

    def views(self, sku: str, *shoppers: str) -> list[dict[str, Any]]:
        """The product view signals of `sku` for these shoppers."""
        return [
            s
            for s in self.outputs("signals")
            if s.get("rule_id") == "product_viewed"
            and s.get("sku") == sku
            and s["shopper_id"] in shoppers
        ]

    def settle(self) -> None:
        """Read on a little: what else the workers send (duplicates, late outputs)."""
        self.reader.settle(2.0)


def shifted(batches: list[list[dict[str, Any]]], by: timedelta) -> list[list[dict[str, Any]]]:
    return [
        [{**b, "ts": (datetime.fromisoformat(b["ts"]) + by).isoformat()} for b in batch]
        for batch in batches
    ]


def assert_merged(j: Journeys, anonymous: str, known: str, start: datetime) -> None:
    """The outputs of one journey's merge (the journey run at `start`), each once."""
    mid = journey_mid(anonymous, known, start)
    changes = j.outputs("tier_changes")
    merged = unique([c for c in changes if c["shopper_id"] == known and c["reason"] == "merge"])
    assert len(merged) == 1, merged
    assert merged[0]["merged_with"] == anonymous and merged[0]["to_tier"] in ("mid", "high")
    left = unique([c for c in changes if c["shopper_id"] == anonymous and c["reason"] == "merge"])
    assert len(left) == 1, left
    assert left[0]["to_tier"] == "none" and left[0]["merged_with"] == known

    moved = {
        (a["shopper_id"], a["op"], a["audience"])
        for a in j.outputs("retargeting")
        if a["action_id"].startswith(f"{mid}:")
    }
    assert moved == {(anonymous, "remove", name) for name in {*DEPTH, "tier:high"}} | {
        (known, "add", name) for name in DEPTH
    }

    # the anonymous id's product view after the sign-in is the known profile's
    assert {s["shopper_id"] for s in j.views("SKU-3", anonymous, known)} == {known}

    # the checkout the anonymous visitor abandoned is recovered for the known customer
    recoveries = unique([r for r in j.outputs("cart_recovery") if r["shopper_id"] == anonymous])
    assert recoveries == []
    recoveries = unique([r for r in j.outputs("cart_recovery") if r["shopper_id"] == known])
    assert len(recoveries) == 1, recoveries
    assert [i["sku"] for i in recoveries[0]["cart"]["items"]] == ["SKU-1"]

    # in Redis: A redirects to K, K holds the merge
    a_record, k_record = stored(j.settings, anonymous), stored(j.settings, known)
    assert a_record.identity["into"][:3:2] == [known, mid] and a_record.score["tier"] == "none"
    assert k_record.identity["ids"][anonymous][0] == mid and k_record.identity["known"]


def stored(settings: Settings, shopper: str) -> Any:
    """The shopper's record as Redis holds it."""
    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    try:
        key = Keys(settings.app_id).record(partition_of(shopper, settings.partitions), shopper)
        raw = client.get(key)
        assert isinstance(raw, bytes), f"no record of {shopper}"
        return decode(raw, {})
    finally:
        client.close()


def unique(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records without their repeats (at-least-once delivery sends a record again)."""
    out: list[dict[str, Any]] = []
    for record in records:
        if record not in out:
            out.append(record)
    return out


def assert_ids_unique(j: Journeys) -> int:
    """No two output records share an id with different content; returns the ids."""
    by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for topic in OUTPUTS:
        for record in j.outputs(topic):
            for name in ID_FIELDS:
                if name in record:
                    by_id[f"{name}={record[name]}"].append(record)
    clashes = {i: unique(rs) for i, rs in by_id.items() if len(unique(rs)) > 1}
    assert not clashes, clashes
    return len(by_id)


@pytest.fixture
def journeys(settings: Settings, env: dict[str, str], start_worker: Any) -> Iterator[Journeys]:
    env["INTENT_MAX_CLOCK_SKEW_SECONDS"] = str(SKEW)
    ensure_topics(settings)
    made = Journeys(settings, env, start_worker)
    yield made
    made.reader.close()


def test_an_anonymous_cart_moves_between_worker_processes_and_survives_a_kill(
    journeys: Journeys, settings: Settings
) -> None:
    j = journeys
    first = [j.start(), j.start()]
    wait_for(lambda: all(ready(w.port) for w in first), TIMEOUT, "two workers in the group")

    # --- two workers: A's state goes from one process to the other -------------------
    anonymous, known, a_owner, k_owner = j.pair("1")
    assert a_owner is not k_owner
    start = datetime.now(UTC) - timedelta(minutes=10)
    j.run_journey(anonymous, known, start)
    j.settle()
    assert_merged(j, anonymous, known, start)
    # the hand-over left A's owner, the merge happened at K's
    assert j.merges("handed_over") == {a_owner.name: 1, k_owner.name: 0}
    assert j.merges("merged") == {a_owner.name: 0, k_owner.name: 1}
    assert_ids_unique(j)

    # --- a third worker joins, A's owner is killed: a fresh pair merges once ------------
    third = j.start()
    wait_for(lambda: ready(third.port), TIMEOUT, "the third worker in the group")
    a_owner.proc.send_signal(signal.SIGKILL)
    a_owner.proc.wait(timeout=10)
    # Every partition served by a worker left: the dead one's were taken over. (A first
    # product view makes a tier change, none -> low, whichever worker detects it.)
    probes = [
        ev(id_on(p, "after-kill", settings.partitions), 0, "product_view", sku="SKU-P")
        for p in range(settings.partitions)
    ]
    j.send(shifted([probes], start - T0)[0])
    served = {b["shopper_id"] for b in probes}
    j.wait(
        lambda: served <= {c["shopper_id"] for c in j.outputs("tier_changes")},
        "every partition served after the kill",
    )
    before = {w.name: w.metric(MERGES) for w in j.live()}

    # ahead of the first journey, whose last event moved its partition's time on
    start2 = start + timedelta(hours=2)
    anonymous2, known2, a2_owner, k2_owner = j.pair("2")
    assert a2_owner is not k2_owner and a_owner not in (a2_owner, k2_owner)
    j.run_journey(anonymous2, known2, start2)
    j.settle()
    assert_merged(j, anonymous2, known2, start2)
    assert j.merges("merged")[k2_owner.name] == 1 + (k2_owner is k_owner)
    assert j.merges("handed_over")[a2_owner.name] == 1  # neither handed one over before
    after = {w.name: w.metric(MERGES) for w in j.live()}
    assert sum(after.values()) - sum(before.values()) == 2  # one hand-over, one merge
    # the first journey's outputs were not sent again otherwise by the takeover
    assert_merged(j, anonymous, known, start)
    assert assert_ids_unique(j) > 20

    # --- `intent forget` on the known id erases the anonymous id merged into it --------
    done = subprocess.run(
        [sys.executable, "-m", "stream", "forget", known2, "--yes"],
        env={**os.environ, **j.env}, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"forgot {known2} and the ids merged with it ({anonymous2})" in done.stdout
    for shopper in (known2, anonymous2):
        record = stored(settings, shopper)
        assert record.forgotten is not None and record.identity is None
        assert record.patterns["seen"] == [] and record.score["s"] == {}
