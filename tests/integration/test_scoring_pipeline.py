"""Scores, tiers and actions on the real broker and Redis, through a real worker."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from schemas.signals import Signal
from stream.core import scoring as reference
from stream.core.detectors.engine import Engine
from stream.core.outputs import change_id, to_score_signal
from stream.core.scoring import ScoreConfig
from stream.settings import Settings
from stream.state.records import Keys, Record, decode, encode
from stream.state.store import partition_of
from stream.state.store import profile as shopper_view
from stream.topics import ensure_topics
from tests.integration.conftest import wait_for
from tests.integration.kafka_io import Reader, produce
from tests.scenarios import ev, scenarios

OUT = (
    "topic_tier_changes",
    "topic_retargeting",
    "topic_cart_recovery",
    "topic_nurture",
    "topic_suppression",
)
CFG = ScoreConfig(0.5, 15.0, 60.0, 0.1)  # the default rules' tiers


def _send(settings: Settings, bodies: list[dict[str, Any]]) -> None:
    records = [(b["shopper_id"].encode(), json.dumps(b).encode()) for b in bodies]
    produce(settings.kafka_bootstrap, settings.topic_clickstream, records)


def _by_shopper(records: list[Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        value = json.loads(record.value)
        assert record.key == value["shopper_id"].encode()
        out[value["shopper_id"]].append(value)
    for values in out.values():
        values.sort(key=lambda v: v["at"])  # stable: a shopper's records in topic order
    return out


def _get(port: int, path: str) -> Any:
    url = f"http://127.0.0.1:{port}{urllib.parse.quote(path)}"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


@pytest.fixture
def run(settings: Settings, start_worker: Any) -> Any:
    """Send the scenarios (three days ago: every window has passed), read every output."""
    cases = scenarios(prefix="sc-", start=datetime.now(UTC) - timedelta(days=3))
    bodies = [b for c in cases for b in c.events]
    ensure_topics(settings)
    _send(settings, bodies)
    start_worker()
    topics = [str(getattr(settings, t)) for t in OUT] + [settings.topic_signals]
    reader = Reader(settings.kafka_bootstrap, *topics)
    changes = settings.topic_tier_changes
    # 20 transitions in all (decay demotions included); then let the sweep settle.
    reader.wait(lambda: len(reader.records[changes]) >= 20, 90, "the tier changes")
    reader.settle(3)
    yield settings, reader, bodies
    reader.close()


def test_playbook_tiers_and_actions(run: Any) -> None:
    settings, reader, _ = run
    out = {t: _by_shopper(reader.records[str(getattr(settings, t))]) for t in OUT}
    tiers = {
        s: [(c["to_tier"], c["reason"]) for c in cs] for s, cs in out["topic_tier_changes"].items()
    }
    assert tiers == {
        "sc-s1": [("low", "signal"), ("high", "signal"), ("mid", "decay")],
        # a wishlist add (30) on top of the variant keeps mid for six days
        "sc-s2": [("low", "signal"), ("mid", "signal")],
        "sc-s3": [("low", "signal"), ("mid", "signal"), ("high", "signal"), ("mid", "decay")],
        "sc-s4": [("low", "signal"), ("mid", "signal"), ("high", "signal"), ("mid", "decay")],
        "sc-s5": [("low", "signal")],
        # an unclicked email (2 points) stays above low's 0.5 for six days
        "sc-s6": [("low", "signal")],
        "sc-s6b": [("suppressed", "suppression")],
        # the cart add (30) and the checkout (34) reach high before the purchase
        "sc-s6c": [("low", "signal"), ("mid", "signal"), ("high", "signal"), ("none", "purchase")],
    }
    for shopper, changes in out["topic_tier_changes"].items():
        # Each id is the digest of its record's cause, time, from, to and reason.
        assert [c["change_id"] for c in changes] == [
            change_id(
                shopper,
                c["cause_signal_id"],
                datetime.fromisoformat(c["at"]),
                c["from_tier"],
                c["to_tier"],
                c["reason"],
            )
            for c in changes
        ]
        assert len({c["change_id"] for c in changes}) == len(changes)
    s1_high = out["topic_tier_changes"]["sc-s1"][1]
    assert s1_high["signals"][0]["name"] == "product_then_returns"
    assert s1_high["cause_event_id"] is not None

    # 1: returns terms and compatibility; 2: size help and a wishlist reminder, no discount.
    nurture = {s: {a["action"] for a in acts} for s, acts in out["topic_nurture"].items()}
    assert nurture["sc-s1"] == {"returns_terms", "compatibility"}
    assert nurture["sc-s2"] == {"size_help", "product_education", "wishlist_reminder"}
    assert nurture["sc-s5"] == {"category_guide", "how_to_choose"}
    assert "sc-s6b" not in nurture  # suppressed: nothing
    # 4: exactly one cart-recovery trigger, with the cart; none for the buyer in 6.
    assert set(out["topic_cart_recovery"]) == {"sc-s4"}
    (trigger,) = out["topic_cart_recovery"]["sc-s4"]
    assert [i["sku"] for i in trigger["cart"]["items"]] == ["JKT-RAIN"]
    # Audiences: depth and tier audiences, removed on suppression and purchase.
    audiences = {
        s: [(a["op"], a["audience"]) for a in acts] for s, acts in out["topic_retargeting"].items()
    }
    assert ("add", "started_checkout") in audiences["sc-s4"]
    assert ("add", "tier:high") in audiences["sc-s4"]
    assert ("remove", "started_checkout") in audiences["sc-s6c"]
    assert ("add", "retarget:subscriptions/coffee") in audiences["sc-s3"]
    # 6: opt-out suppresses the channel, a spam complaint everything, a purchase its category.
    sup = {
        s: [(r["op"], r["scope"], r["value"]) for r in recs]
        for s, recs in out["topic_suppression"].items()
    }
    assert sup == {
        "sc-s6": [("suppress", "channel", "email")],
        "sc-s6b": [("suppress", "all", None)],
        "sc-s6c": [("suppress", "category", "electronics/cables")],
    }

    # The decay demotion came with no new input, stamped with the computed crossing time.
    signals = [Signal.model_validate_json(r.value) for r in reader.records[settings.topic_signals]]
    mine = [to_score_signal(s) for s in signals if s.shopper_id == "sc-s1"]
    state = reference.new_state()
    crossing = reference.apply(state, mine, None, CFG).deadline
    decayed = out["topic_tier_changes"]["sc-s1"][2]
    assert crossing is not None
    assert abs(datetime.fromisoformat(decayed["at"]).timestamp() - crossing) < 1e-3
    assert decayed["score"] == pytest.approx(60 * 0.9, abs=1e-6)  # high's line, hysteresis

    # The HTTP views.
    view = _get(settings.web_port, "/shoppers/sc-s1")
    assert view["tier"] == "mid" and view["top_signals"][0]["name"] == "product_then_returns"
    assert _get(settings.web_port, "/shoppers/sc-s6b")["suppressions"][0]["scope"] == "all"
    page = _get(settings.web_port, "/audiences/tier:mid")
    assert {"sc-s1", "sc-s4"} <= set(page["members"]) and page["size"] == len(page["members"])


def test_replay_changes_nothing(run: Any) -> None:
    settings, reader, bodies = run
    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    keys = sorted(client.scan_iter(f"{settings.app_id}:*"))
    before = {k: _dump(client, k) for k in keys}
    counts = {t: len(r) for t, r in reader.records.items()}
    _send(settings, bodies)
    reader.settle(8)
    assert {t: len(r) for t, r in reader.records.items()} == counts
    assert {k: _dump(client, k) for k in keys} == before
    assert sorted(client.scan_iter(f"{settings.app_id}:*")) == keys  # and no new key


def _dump(client: Any, key: bytes) -> Any:
    kind = client.type(key)
    if kind == b"hash":
        return client.hgetall(key)
    if kind == b"zset":
        return client.zrange(key, 0, -1, withscores=True)
    if kind == b"set":
        return client.smembers(key)
    return client.get(key)


def test_forget_erases_the_shopper(run: Any, env: dict[str, str]) -> None:
    settings, reader, _ = run
    assert _get(settings.web_port, "/shoppers/sc-s4")["known"] is True
    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    keys = Keys(settings.app_id)
    partition = partition_of("sc-s4", settings.partitions)
    held = _holding(client, settings, "sc-s4")  # its tier, audiences and timers
    assert keys.tier(partition, "mid").encode() in held
    assert keys.audience(partition, "started_checkout").encode() in held
    done = subprocess.run(
        [sys.executable, "-m", "stream", "forget", "sc-s4", "--yes"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "forgot sc-s4: its state, tier and audiences are erased" in done.stdout
    # Only a tombstone is left: when the shopper was forgotten, so that older events are
    # dropped, beside a state that knows nothing of the shopper; and nothing of the
    # shopper in any tier, audience or timer index.
    record = _record(client, settings, "sc-s4")
    assert record is not None and abs((record.forgotten or 0) - time.time()) < 60
    tombstone = Record(Engine.new_state(), reference.new_state(), record.forgotten)
    assert client.get(keys.record(partition, "sc-s4")) == encode(tombstone)
    assert _holding(client, settings, "sc-s4") == set()
    assert _get(settings.web_port, "/shoppers/sc-s4")["known"] is False
    reader.wait(
        lambda: any(
            json.loads(r.value)["op"] == "forget"
            for r in reader.records[settings.topic_suppression]
        ),
        20,
        "the forget record",
    )
    # The signals audit topic is told too, the record marked by its header.
    reader.wait(
        lambda: any(
            ("intent-kind", b"forget") in (r.headers or [])
            and json.loads(r.value)["shopper_id"] == "sc-s4"
            for r in reader.records[settings.topic_signals]
        ),
        20,
        "the forget record on the signals topic",
    )
    shown = subprocess.run(
        [sys.executable, "-m", "stream", "shopper", "sc-s1"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0 and json.loads(shown.stdout)["tier"] == "mid"


def test_out_of_order_reaches_the_same_score(settings: Settings, start_worker: Any) -> None:
    start = datetime.now(UTC) - timedelta(hours=1)
    cable = {"sku": "CBL-USB-C", "category": "electronics/cables"}
    script = [
        ("product_view", {}),
        ("page_view", {"page": "returns"}),
        ("add_to_cart", {}),
        ("wishlist_add", {}),
        ("page_view", {"page": "faq"}),
        ("search", {"query": "best price"}),
    ]

    def events(shopper: str) -> list[dict[str, Any]]:
        out = []
        for i, (kind, extra) in enumerate(script):
            product = cable if kind in ("product_view", "add_to_cart", "wishlist_add") else {}
            out.append(ev(shopper, i * 0.5, kind, session="v1", start=start, **product, **extra))
        return out

    in_order = events("ino")
    shuffled = events("ooo")
    random.Random(5).shuffle(shuffled)  # all within 3 minutes: inside the allowed lateness
    ensure_topics(settings)
    _send(settings, in_order + shuffled)
    start_worker()
    client = redis.Redis.from_url(settings.redis_url.get_secret_value())

    def scored(shopper: str) -> bool:
        record = _record(client, settings, shopper)
        return record is not None and record.score["T"] is not None

    wait_for(lambda: scored("ino") and scored("ooo"), 60, "both scores")
    reader = Reader(settings.kafka_bootstrap, settings.topic_signals)
    reader.settle(4)
    reader.close()
    now = datetime.now(UTC).timestamp()
    views = [shopper_view(s, _record(client, settings, s), now) for s in ("ino", "ooo")]
    assert views[0]["score"] == pytest.approx(views[1]["score"], abs=1e-9)
    assert views[0]["tier"] == views[1]["tier"] == "high"
    assert views[0]["top_signals"] == views[1]["top_signals"]


def _holding(client: Any, settings: Settings, shopper: str) -> set[bytes]:
    """The sets and sorted sets of the deployment that hold `shopper`."""
    found = set()
    for key in client.scan_iter(f"{settings.app_id}:*"):
        kind = client.type(key)
        if (kind == b"set" and client.sismember(key, shopper)) or (
            kind == b"zset" and client.zscore(key, shopper) is not None
        ):
            found.add(key)
    return found


def _record(client: Any, settings: Settings, shopper: str) -> Record | None:
    key = Keys(settings.app_id).record(partition_of(shopper, settings.partitions), shopper)
    raw = client.get(key)
    return None if raw is None else decode(raw, {})
