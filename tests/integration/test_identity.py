"""Identity stitching through the worker's pipelines on a real Redis: two workers, each
owning half of intent.events' partitions, and a bus that brings what they send to
intent.events back to the partition's owner, as the broker does. The anonymous id and
the known id are chosen on partitions of different workers, so the state moves from one
owner to the other through the topic.

(The same journey through the real broker and worker processes:
`test_identity_workers.py`.)"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime, timedelta
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from stream.core.detectors.engine import cart_at
from stream.core.identity import merge_id
from stream.core.ingest import RawRecord
from stream.metrics import Metrics
from stream.offline.replay import replay
from stream.rulesfile import load_rules
from stream.settings import Settings
from stream.state.store import StateReader, partition_of
from stream.worker import pipeline as agents
from stream.worker.control import forget_request
from stream.worker.main import redis_client
from stream.worker.outbox import OutRecord
from stream.worker.views import read_shopper
from tests.integration.servers import Servers, drop_keys
from tests.scenarios import T0, ev

pytestmark = pytest.mark.integration
WORKERS = 2
SIGN_IN = 6  # the minute of the journey's sign-in
ID_FIELDS = {"tier_changes": "change_id", "retargeting": "action_id", "nurture": "action_id",
             "cart_recovery": "trigger_id", "suppression": "record_id"}  # fmt: skip


def ids_on(worker: int, prefix: str, n: int, partitions: int = 8) -> list[str]:
    """`n` shopper ids whose intent.events partition the given worker owns."""
    found = []
    for i in count():
        shopper = f"{prefix}-{i}"
        if partition_of(shopper, partitions) % WORKERS == worker:
            found.append(shopper)
            if len(found) == n:
                return found
    raise AssertionError("unreachable")


class Crash(Exception):
    """A worker that dies between its send and its write (`Bus.crash_after_send`)."""


class Bus:
    """Two pipelines on one Redis; worker w owns the partitions p with p % 2 == w."""

    def __init__(self, redis_url: str, **overrides: Any) -> None:
        self.redis_url = redis_url
        self.settings = Settings(
            app_id=f"ident-{uuid.uuid4().hex[:8]}", redis_url=redis_url, **overrides
        )
        self.loop = asyncio.new_event_loop()
        self.sent: list[OutRecord] = []
        self.queues: dict[int, list[RawRecord]] = defaultdict(list)
        self.offsets = count()
        self.registries = [CollectorRegistry() for _ in range(WORKERS)]
        self.clients = [redis_client(self.settings) for _ in range(WORKERS)]
        self.fail_next_write: int | None = None  # a worker whose next write fails once
        self.workers = [self._worker(i) for i in range(WORKERS)]

    def _worker(self, index: int) -> agents.Pipeline:
        async def send(batch: list[OutRecord]) -> None:
            for topic, key, value, headers in batch:
                self.sent.append((topic, key, value, headers))
                if topic == self.settings.topic_normalised:
                    assert key is not None
                    p = partition_of(key.decode(), self.settings.partitions)
                    record = RawRecord(value, key, topic, p, next(self.offsets))
                    self.queues[p].append(record)

        pipeline = agents.Pipeline(
            None, self.settings, Metrics(self.registries[index]), load_rules(),
            self.clients[index], sender=send,
        )  # fmt: skip
        owned = [p for p in range(self.settings.partitions) if p % WORKERS == index]
        self.loop.run_until_complete(pipeline.owner.take(owned))
        return pipeline

    def feed(self, bodies: list[dict[str, Any]]) -> None:
        """Clickstream records, ingested by worker 0 (ingest holds no state), then
        everything they cause, until the topics are quiet."""
        topic = self.settings.topic_clickstream
        raw = [
            RawRecord(
                json.dumps(b).encode(), b["shopper_id"].encode(), topic, 0, next(self.offsets)
            )
            for b in bodies
        ]
        self.loop.run_until_complete(self.workers[0].handle(raw))
        self.drain()

    def crash_after_send(self, worker: int) -> None:
        """The worker's next write fails once, after its records were sent and acked."""
        owner = self.workers[worker].owner
        write = owner.write

        async def crash(*args: Any) -> Any:
            owner.write = write  # type: ignore[method-assign]
            raise Crash

        owner.write = crash  # type: ignore[method-assign]

    def put(self, key: str, value: bytes) -> None:
        p = partition_of(key, self.settings.partitions)
        topic = self.settings.topic_normalised
        self.queues[p].append(RawRecord(value, key.encode(), topic, p, next(self.offsets)))

    def drain(self) -> None:
        for _ in range(50):
            if not any(self.queues.values()):
                return
            for index, worker in enumerate(self.workers):
                batch: list[RawRecord] = []
                for p in sorted(self.queues):
                    if p % WORKERS == index:
                        batch += self.queues.pop(p)
                if batch:
                    try:
                        self.loop.run_until_complete(worker.handle(batch))
                    except Crash:  # the worker died before its commit: read again
                        self.loop.run_until_complete(worker.handle(batch))
        raise AssertionError("the topics did not go quiet")

    def out(self, topic: str) -> list[dict[str, Any]]:
        name = getattr(self.settings, f"topic_{topic}")
        return [json.loads(v) for t, _, v, _ in self.sent if t == name]

    def metric(self, name: str, **labels: str) -> float:
        return sum(r.get_sample_value(name, labels) or 0.0 for r in self.registries)

    def record(self, shopper: str) -> Any:
        return self.loop.run_until_complete(self._record(shopper))

    async def _record(self, shopper: str) -> Any:
        worker = self.workers[partition_of(shopper, self.settings.partitions) % WORKERS]
        p = partition_of(shopper, self.settings.partitions)
        worker.owner.drop({shopper})
        loaded = await worker.owner.load({shopper: p})
        return loaded[shopper]

    def close(self) -> None:
        for client in self.clients:
            self.loop.run_until_complete(client.aclose())
        drop_keys(self.redis_url, self.settings.app_id)
        self.loop.close()


@pytest.fixture
def bus(servers: Servers) -> Iterator[Bus]:
    made = Bus(servers.redis_url)
    yield made
    made.close()


def journey_mid(anonymous: str, known: str, start: datetime = T0) -> str:
    """The merge id of `journey`'s sign-in, the journey starting at `start`."""
    return merge_id(anonymous, known, (start + timedelta(minutes=SIGN_IN)).timestamp())


def journey(anonymous: str, known: str) -> list[list[dict[str, Any]]]:
    """An anonymous visitor browses, fills a cart and starts a checkout, then signs in;
    the known id had browsed a little before, on another device. Batches in order."""
    browse = [
        ev(anonymous, 0, "page_view", session="v1", page="home"),
        ev(anonymous, 1, "product_view", session="v1", sku="SKU-1", category="shoes"),
        ev(anonymous, 2, "product_view", session="v1", sku="SKU-2", category="shoes"),
        ev(anonymous, 3, "product_view", session="v1", sku="SKU-1", category="shoes"),
        ev(anonymous, 4, "add_to_cart", session="v1", sku="SKU-1", category="shoes"),
        ev(anonymous, 5, "checkout_started", session="v1"),
        ev(known, -600, "page_view", session="k0", page="home"),
    ]
    sign_in = [{**ev(known, SIGN_IN, "identify", session="v1"), "anonymous_id": anonymous}]
    later = [ev(anonymous, 7, "product_view", session="v1", sku="SKU-3", category="shoes")]
    back = [ev(known, 90, "page_view", session="k1", page="home")]  # the checkout timed out
    return [browse, sign_in, later, back]


def test_an_anonymous_cart_becomes_the_known_customers(bus: Bus) -> None:
    (anonymous,), (known,) = ids_on(0, "anon", 1), ids_on(1, "known", 1)
    for batch in journey(anonymous, known):
        bus.feed(batch)
    mid = journey_mid(anonymous, known)

    changes = bus.out("tier_changes")
    merged = [c for c in changes if c["shopper_id"] == known and c["reason"] == "merge"]
    assert len(merged) == 1 and merged[0]["merged_with"] == anonymous
    assert merged[0]["to_tier"] in ("mid", "high")
    left = [c for c in changes if c["shopper_id"] == anonymous and c["reason"] == "merge"]
    assert len(left) == 1 and left[0]["to_tier"] == "none" and left[0]["merged_with"] == known

    moved = {
        (a["shopper_id"], a["op"], a["audience"])
        for a in bus.out("retargeting")
        if a["action_id"].startswith(f"{mid}:")
    }
    depth = {"viewed_product", "added_to_cart", "started_checkout"}
    assert moved == {(anonymous, "remove", name) for name in {*depth, "tier:high"}} | {
        (known, "add", name) for name in depth
    }

    # the anonymous id's later product view landed on the known profile
    views = [s for s in bus.out("signals") if s.get("rule_id") == "product_viewed"]
    assert {s["shopper_id"] for s in views if s.get("sku") == "SKU-3"} == {known}

    # the checkout the anonymous visitor abandoned is recovered for the known customer,
    # with the anonymous cart
    recoveries = bus.out("cart_recovery")
    assert [r["shopper_id"] for r in recoveries] == [known]
    assert [i["sku"] for i in recoveries[0]["cart"]["items"]] == ["SKU-1"]

    a_record, k_record = bus.record(anonymous), bus.record(known)
    assert a_record.identity["into"][0] == known and a_record.score["tier"] == "none"
    assert list(k_record.identity["ids"]) == [anonymous] and k_record.identity["known"]
    assert bus.metric("intent_identity_merges_total", outcome="merged") == 1

    # `intent shopper` and GET /shoppers/{id}: the profile shows its merged ids, and the
    # anonymous id reads as the profile it went to
    reader = StateReader(bus.clients[0], bus.settings.app_id, bus.settings.partitions)
    shown = bus.loop.run_until_complete(read_shopper(reader, known, 1.9e9))
    assert shown["merged_ids"] == [anonymous] and shown["shopper_id"] == known
    via = bus.loop.run_until_complete(read_shopper(reader, anonymous, 1.9e9))
    assert via == {**shown, "requested_id": anonymous}


def test_a_merge_runs_once_whatever_is_read_again(bus: Bus) -> None:
    """At-least-once: the merge request and the hand-over read twice (a crash before the
    commit) merge once, with the same ids."""
    (anonymous,), (known,) = ids_on(0, "anon", 1), ids_on(1, "known", 1)
    batches = journey(anonymous, known)
    bus.feed(batches[0])
    bus.feed(batches[1])
    handovers = [(k, v) for t, k, v, _ in bus.sent if v.startswith(b'{"handover":')]
    merges = [(k, v) for t, k, v, _ in bus.sent if v.startswith(b'{"merge":')]
    assert len(handovers) == 1 and len(merges) == 1
    before = list(bus.sent)
    for key, value in [*merges, *handovers]:
        assert key is not None
        bus.put(key.decode(), value)
    bus.drain()
    assert bus.sent[len(before) :] == []  # nothing new: both were applied already
    assert bus.metric("intent_identity_merges_total", outcome="duplicate") == 2


def test_a_crash_between_the_hand_over_and_its_write_merges_once(bus: Bus) -> None:
    """The anonymous id's owner sends the hand-over, then dies before writing the
    redirect: it reads the merge again from what Redis holds and sends the same
    hand-over; the profile takes it once, and every output keeps its id."""
    (anonymous,), (known,) = ids_on(0, "anon", 1), ids_on(1, "known", 1)
    batches = journey(anonymous, known)
    bus.feed(batches[0])
    bus.crash_after_send(0)
    bus.feed(batches[1])
    handovers = [v for _, _, v, _ in bus.sent if v.startswith(b'{"handover":')]
    assert len(handovers) == 2 and handovers[0] == handovers[1]
    assert bus.metric("intent_identity_merges_total", outcome="merged") == 1
    assert bus.metric("intent_identity_merges_total", outcome="duplicate") == 1
    for batch in batches[2:]:
        bus.feed(batch)
    outputs = [json.loads(v) for t, _, v, _ in bus.sent if t != bus.settings.topic_normalised]
    by_id: dict[str, Any] = {}
    for body in outputs:
        key = next((body[f] for f in ID_FIELDS.values() if f in body), None)
        if key is not None:
            assert by_id.setdefault(key, body) == body, "one id, two contents"
    merged = [o for o in outputs if o.get("reason") == "merge" and "change_id" in o]
    assert len({o["change_id"] for o in merged}) == 2  # the profile's and the anonymous id's
    assert bus.record(anonymous).identity["into"][0] == known
    assert [r["shopper_id"] for r in bus.out("cart_recovery")] == [known]


def _ids(sent: list[OutRecord]) -> list[str]:
    out = []
    for _, _, value, _ in sent:
        body = json.loads(value)
        for name in ("change_id", "action_id", "trigger_id", "record_id", "signal_id"):
            if name in body:
                out.append(body[name])
    return sorted(out)


def test_the_same_input_twice_gives_the_same_ids(servers: Servers) -> None:
    (anonymous,), (known,) = ids_on(0, "anon", 1), ids_on(1, "known", 1)
    runs = []
    for _ in range(2):
        bus = Bus(servers.redis_url)
        try:
            for batch in journey(anonymous, known):
                bus.feed(batch)
            runs.append(_ids(bus.sent))
        finally:
            bus.close()
    assert runs[0] == runs[1] and len(runs[0]) > 10


def test_two_anonymous_ids_merge_into_one_profile_up_to_the_cap(servers: Servers) -> None:
    bus = Bus(servers.redis_url, identity_max_ids=1)
    try:
        first, second = ids_on(0, "anon", 2)
        (known,) = ids_on(1, "known", 1)
        for anonymous in (first, second):
            bus.feed([
                ev(anonymous, 0, "product_view", session=f"s-{anonymous}", sku="SKU-9"),
                ev(anonymous, 1, "add_to_cart", session=f"s-{anonymous}", sku="SKU-9"),
            ])  # fmt: skip
            bus.feed([{**ev(known, 2, "identify"), "anonymous_id": anonymous}])
        assert bus.metric("intent_identity_merges_total", outcome="merged") == 1
        assert bus.metric("intent_identity_merges_total", outcome="capped") == 1
        kept = bus.record(second)
        assert "into" not in kept.identity and kept.identity["refused"] == [known]
        assert kept.patterns["seen"] and kept.score["s"], "the refused id keeps its state"
        # its later events stay its own, and the link is not handed over again
        bus.feed([{**ev(known, 3, "page_view"), "anonymous_id": second},
                  ev(second, 4, "product_view", sku="SKU-9")])  # fmt: skip
        handovers = [v for _, _, v, _ in bus.sent if v.startswith(b'{"handover":')]
        assert len(handovers) == 2
        views = [
            s for s in bus.out("signals") if s.get("anchors") and s["rule_id"] == "product_viewed"
        ]
        assert views[-1]["shopper_id"] == second
    finally:
        bus.close()


def test_known_ids_merge_only_by_an_alias(bus: Bus) -> None:
    (old,), (new,) = ids_on(0, "user", 1), ids_on(1, "known", 1)
    bus.feed([{**ev(old, 0, "add_to_cart", sku="SKU-1"), "identified": True}])
    bus.feed([{**ev(new, 1, "identify"), "anonymous_id": old}])
    assert bus.metric("intent_identity_merges_total", outcome="known") == 1
    assert bus.record(old).patterns["seen"], "a known id is not merged by an identify"
    bus.feed([{**ev(new, 2, "alias"), "anonymous_id": old}])
    assert bus.metric("intent_identity_merges_total", outcome="merged") == 1
    assert bus.record(old).identity["into"][0] == new


def test_the_most_restrictive_consent_wins_across_the_merge(bus: Bus) -> None:
    """The known customer withdrew consent; the anonymous cart they abandoned before
    signing in brings no cart recovery, and the profile is suppressed."""
    (anonymous,), (known,) = ids_on(0, "anon", 1), ids_on(1, "known", 1)
    bus.feed([ev(known, -60, "consent_update", status="withdrawn")])
    for batch in journey(anonymous, known):
        bus.feed(batch)
    assert bus.out("cart_recovery") == []
    assert bus.record(known).score["tier"] == "suppressed"
    # the other way round: the anonymous side's opt-out suppresses the known profile
    (anonymous2,), (known2,) = ids_on(0, "anon2", 1), ids_on(1, "known2", 1)
    bus.feed([ev(anonymous2, 0, "spam_complaint"), ev(known2, 1, "add_to_cart", sku="SKU-1")])
    bus.feed([{**ev(known2, 2, "identify"), "anonymous_id": anonymous2}])
    assert bus.record(known2).score["tier"] == "suppressed"


def test_forgetting_the_profile_forgets_its_merged_ids(bus: Bus) -> None:
    (anonymous,), (known,) = ids_on(0, "anon", 1), ids_on(1, "known", 1)
    for batch in journey(anonymous, known):
        bus.feed(batch)
    bus.put(known, forget_request(known, 4102444800.0))
    bus.drain()
    for shopper in (anonymous, known):
        record = bus.record(shopper)
        assert record.forgotten == 4102444800.0 and record.identity is None
        assert record.patterns["seen"] == [] and record.score["s"] == {}
    forgets = [r for r in bus.out("suppression") if r["op"] == "forget"]
    assert {r["shopper_id"] for r in forgets} == {anonymous, known}


def test_replay_makes_the_same_merges_with_the_same_ids(bus: Bus, tmp_path: Path) -> None:
    (anonymous,), (known,) = ids_on(0, "anon", 1), ids_on(1, "known", 1)
    batches = journey(anonymous, known)
    for batch in batches:
        bus.feed(batch)
    path = tmp_path / "journey.jsonl"
    path.write_text("".join(json.dumps(body) + "\n" for batch in batches for body in batch))
    result = replay(path, "canonical", load_rules())
    assert result.merges == 1

    replayed = sorted(
        [c.change_id for c in result.changes]
        + [getattr(o.value, ID_FIELDS[o.topic.value]) for o in result.actions]
    )
    live = sorted(body[ID_FIELDS[topic]] for topic in ID_FIELDS for body in bus.out(topic))
    assert replayed == live
    assert any(i.startswith(f"{journey_mid(anonymous, known)}:") for i in live)


def test_several_anonymous_ids_merge_into_one_profile(bus: Bus) -> None:
    """A phone and a laptop, each browsing anonymously, then the same sign-in on both."""
    phone, laptop = ids_on(0, "anon", 2)
    (known,) = ids_on(1, "known", 1)
    for i, anonymous in enumerate((phone, laptop)):
        bus.feed([ev(anonymous, i, "add_to_cart", session=f"s{i}", sku=f"SKU-{i}")])
    for i, anonymous in enumerate((phone, laptop)):
        bus.feed([{**ev(known, 5 + i, "identify"), "anonymous_id": anonymous}])
    assert bus.metric("intent_identity_merges_total", outcome="merged") == 2
    profile = bus.record(known)
    assert sorted(profile.identity["ids"]) == sorted([phone, laptop])
    assert {sku for sku, *_ in _cart(profile.patterns)} == {"SKU-0", "SKU-1"}


def _cart(patterns: dict[str, Any]) -> list[tuple[str, int]]:
    return [(sku, item[0]) for sku, item in cart_at(patterns, 2e9).items()]


def _dead(bus: Bus, prefix: bytes) -> list[dict[str, Any]]:
    """Dead letters of the records that start with `prefix`."""
    return [
        d for d in bus.out("dead_letter")
        if base64.b64decode(d["value_b64"]).startswith(prefix)
    ]  # fmt: skip


def test_a_profile_that_fails_dead_letters_the_hand_over_it_held(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The profile's detection raises (a bug of ours) on the sign-in read just before the
    hand-over: the shopper is left out whole, so the hand-over, which carries the
    anonymous state, is dead-lettered beside the event, and nothing of the merge goes
    out."""
    (anonymous,), (known,) = ids_on(0, "anon", 1), ids_on(1, "known", 1)
    batches = journey(anonymous, known)
    bus.feed(batches[0])
    engine = bus.workers[1].core.engine
    process = engine.process

    def failing(shopper: str, state: Any, events: Any) -> Any:
        if shopper == known:
            raise RuntimeError("a bug")
        return process(shopper, state, events)

    monkeypatch.setattr(engine, "process", failing)
    bus.feed(batches[1])
    dead = _dead(bus, b'{"handover":')
    assert len(dead) == 1 and dead[0]["reason"] == "processing_error"
    assert len(_dead(bus, b'{"event_id":')) == 1  # the sign-in
    assert [c for c in bus.out("tier_changes") if c["shopper_id"] == known] == []
    assert bus.record(known).identity is None
    assert bus.metric("intent_identity_merges_total", outcome="merged") == 0


def test_a_link_made_again_after_the_redirect_expired_merges_again(bus: Bus) -> None:
    (anonymous,), (known,) = ids_on(0, "anon", 1), ids_on(1, "known", 1)
    bus.feed([ev(anonymous, 0, "add_to_cart", sku="SKU-1")])
    bus.feed([{**ev(known, 1, "identify"), "anonymous_id": anonymous}])
    # the redirect expires (INTENT_IDENTITY_TTL_SECONDS); the cookie comes back
    partition = partition_of(anonymous, bus.settings.partitions)
    key = bus.workers[0].owner.keys.record(partition, anonymous)
    bus.loop.run_until_complete(bus.clients[0].delete(key))
    bus.workers[0].owner.drop({anonymous})
    bus.feed([ev(anonymous, 60 * 24 * 10, "add_to_cart", sku="SKU-2")])
    bus.feed([{**ev(known, 60 * 24 * 10 + 1, "identify"), "anonymous_id": anonymous}])
    assert bus.metric("intent_identity_merges_total", outcome="merged") == 2
    assert {sku for sku, _ in _cart(bus.record(known).patterns)} >= {"SKU-2"}


def test_a_forget_after_a_merge_in_one_batch_erases_the_profile(bus: Bus) -> None:
    """Control records apply in their order: the merge first, then the forget, which
    finds the anonymous id merged and erases its profile too."""
    (anonymous,), (known,) = ids_on(0, "anon", 1), ids_on(1, "known", 1)
    bus.feed([ev(anonymous, 0, "add_to_cart", sku="SKU-1")])
    at = (T0 + timedelta(minutes=1)).timestamp()
    request = {"merge": anonymous, "into": known, "at": at,
               "id": merge_id(anonymous, known, at), "kind": "identify"}  # fmt: skip
    bus.put(anonymous, json.dumps(request).encode())
    bus.put(anonymous, forget_request(anonymous, at + 60))
    bus.drain()
    for shopper in (anonymous, known):
        record = bus.record(shopper)
        assert record.forgotten == at + 60 and record.score["s"] == {}, shopper


def test_aliases_that_cross_dead_letter_the_states_they_carry(bus: Bus) -> None:
    (first,), (second,) = ids_on(0, "user", 1), ids_on(1, "user", 1)
    bus.feed([ev(first, 0, "add_to_cart", sku="SKU-1"), ev(second, 0, "add_to_cart", sku="SKU-2")])
    bus.feed([
        {**ev(second, 1, "alias"), "anonymous_id": first},
        {**ev(first, 1, "alias"), "anonymous_id": second},
    ])  # fmt: skip
    dead = _dead(bus, b'{"handover":')
    assert len(dead) == 2
    assert all("aliases in a loop" in d["detail"] for d in dead)
    assert bus.metric("intent_identity_merges_total", outcome="loop") >= 2
