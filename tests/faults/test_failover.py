"""Two workers share the input; one is killed with `kill -9` mid-stream. The survivor
takes over its partitions (after the takeover hold, `StreamLoop.hold`) and nothing is
lost: every event, a product view of a new shopper, gets its one tier change. A change
may arrive twice (at-least-once), always with the same id. `make failover` is the same
run, longer, with its figures.

Moved here from tests/integration with the fault suite: it is the short variant of its
"worker killed" fault (test_faults.py has the long one, on the journeys and against
replay). Beyond its own assertions it reads every tier change back and prints the
suite's line of JSON: a change id sent with two contents is wrong, a second id for a
shopper (each must get exactly one change) extra, the same record again redelivered."""

from __future__ import annotations

import json
import time
from argparse import Namespace
from typing import Any

from bench.failover import ready, traffic
from stream.devstack.embedded import free_port
from stream.settings import Settings
from stream.topics import ensure_topics
from tests.integration.conftest import wait_for
from tests.integration.kafka_io import Reader


def test_no_event_is_lost_when_a_worker_is_killed(
    settings: Settings, env: dict[str, str], start_worker: Any
) -> None:
    ensure_topics(settings)
    workers, ports = [], []
    for _ in range(2):
        env["INTENT_METRICS_PORT"] = str(free_port())
        env["INTENT_WEB_PORT"] = str(free_port())
        ports.append(int(env["INTENT_METRICS_PORT"]))
        workers.append(start_worker())
    wait_for(lambda: all(ready(port) for port in ports), 90, "both workers in the group")
    time.sleep(3)  # the group settles on its final assignment
    result = traffic(settings, Namespace(rate=200, seconds=20, kill_at=8.0), workers[0])
    print(json.dumps(result))
    reader = Reader(settings.kafka_bootstrap, settings.topic_tier_changes)
    try:
        records = reader.read_until(result["tier_changes_received"], timeout=60)[
            settings.topic_tier_changes
        ]
    finally:
        reader.close()
    contents: dict[str, set[str]] = {}
    ids: dict[str, set[str]] = {}
    for record in records:
        change = json.loads(record.value)
        contents.setdefault(change["change_id"], set()).add(json.dumps(change, sort_keys=True))
        ids.setdefault(change["shopper_id"], set()).add(change["change_id"])
    line = {
        "fault": "worker-kill-9 (failover traffic)",
        "lost": result["lost"],
        "wrong": sum(1 for found in contents.values() if len(found) > 1),
        "extra": sum(len(found) - 1 for found in ids.values()),
        "redelivered": len(records) - sum(len(found) for found in contents.values()),
        "recovery_s": result["worst_after_kill_s"],
        "events": result["events"],
    }
    print(json.dumps(line))
    assert workers[0].poll() is not None  # it was killed
    assert workers[1].poll() is None  # the survivor is still up
    assert result["tier_changes_received"] == result["events"] == 4000
    assert result["lost"] == 0
    assert result["worst_after_kill_s"] is not None  # events after the kill were detected
    assert (line["lost"], line["wrong"], line["extra"]) == (0, 0, 0)
    assert set(ids) == {f"fo-{i}" for i in range(4000)}
