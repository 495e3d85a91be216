"""The fault suite: real workers, a real broker and real Redis servers, steady traffic of
seeded journeys, one fault per test, and what the workers sent compared with `replay`
of the same events (`journeys.py`). Every test prints one line of JSON (fault, lost,
wrong, extra, redelivered, recovery_s, ...) and requires nothing lost, nothing wrong,
nothing extra, and each shopper's final tier as replay has it; a record sent again
unchanged is counted as redelivered (delivery is at least once), not as a failure.

Redis killed, Redis unreachable, the broker unreachable and slow Redis each have a
short variant (faults of ~8 s, 300 rounds of traffic) that the default `pytest` run
includes, and a long one (30 s faults, 720 rounds) marked `faults`; the zombie and the
killed worker are long only (the short kill -9 test is test_failover.py). `make faults`
runs the `faults` ones. docs/operations.md ("Fault suite") has the figures.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from stream.state.records import Keys, decode
from stream.state.store import partition_of
from tests.faults.harness import FaultRun, stop_worker, wait_for


@dataclass(frozen=True)
class Variant:
    shoppers: int  # each sends ROUNDS rounds (bursts)
    rate: float  # bursts per second
    fault_at: float  # seconds into the traffic
    outage: float  # seconds the fault lasts (the Redis kill: always ~8 s)


SHORT = Variant(shoppers=100, rate=10, fault_at=10, outage=8)
LONG = Variant(shoppers=240, rate=8, fault_at=20, outage=30)
VARIANTS = [
    pytest.param(SHORT, id="short"),
    pytest.param(LONG, id="long", marks=[pytest.mark.faults, pytest.mark.timeout(900)]),
]


def assert_clean(out: dict[str, Any], run: FaultRun) -> None:
    assert out["expected_changes"] > 200 and out["expected_actions"] > 200  # a real workload
    assert (out["lost"], out["wrong"], out["extra"]) == (0, 0, 0), out["detail"]
    assert out["final_tier_mismatches"] == 0, out["detail"]["final_tier_examples"]
    for worker in run.workers:
        assert worker.proc.poll() is None, f"a worker exited ({worker.proc.returncode})"


@pytest.mark.parametrize("variant", VARIANTS)
def test_redis_killed_and_restarted_from_its_aof(fault_run: Any, variant: Variant) -> None:
    """Redis SIGKILLed mid-stream, started again ~8 s later on the same port and data
    folder: it reads its AOF back, the worker's retries reconnect, and nothing is lost,
    wrong or extra (the mark of the deployment survived, so the worker goes on)."""
    run: FaultRun = fault_run("redis-sigkill", shoppers=variant.shoppers, rate=variant.rate)
    run.start()
    run.at(variant.fault_at)
    began = time.time()
    run.redis.kill()
    time.sleep(8)
    run.redis.start()
    run.faulted(began, time.time())
    out = run.finish()
    assert_clean(out, run)
    assert out["recovery_s"] is not None


@pytest.mark.parametrize("variant", VARIANTS)
def test_redis_unreachable(fault_run: Any, variant: Variant) -> None:
    """Redis unreachable through the proxy (connections dropped, new ones refused): the
    worker keeps its partitions (no new assignment), answers /ready with 503 and counts
    intent_redis_errors_total meanwhile, and resumes within 5 s of Redis coming back."""
    run: FaultRun = fault_run("redis-unreachable", shoppers=variant.shoppers, rate=variant.rate)
    run.start(redis_proxy=True)
    worker = run.workers[0]
    assert worker.redis_proxy is not None
    run.at(variant.fault_at)
    assignments = worker.assignments()
    errors_before = worker.redis_errors()
    began = time.time()
    worker.redis_proxy.cut()
    statuses = []
    while time.time() - began < variant.outage:
        time.sleep(0.5)
        statuses.append(worker.ready())
    errors_during = worker.redis_errors()
    worker.redis_proxy.restore()
    ended = time.time()
    run.faulted(began, ended)
    ready_again = wait_for(worker.ready, 30, "/ready 200 after the outage")
    run.notes.update(
        ready_503_samples=statuses.count(False),
        ready_samples=len(statuses),
        redis_errors_during=errors_during - errors_before,
        ready_again_s=round(ready_again, 1),
        assignments=(assignments, worker.assignments()),
    )
    out = run.finish()
    assert_clean(out, run)
    # /ready said 503 once the outage was seen (the first sample may precede that)
    assert statuses.count(False) >= len(statuses) - 2, statuses
    assert errors_during > errors_before
    assert worker.assignments() == assignments  # it kept its partitions
    assert out["first_change_s"] is not None and out["first_change_s"] <= 5.0, out


@pytest.mark.parametrize("variant", VARIANTS)
def test_broker_unreachable(fault_run: Any, variant: Variant) -> None:
    """The broker unreachable through its proxy (Tansu advertises the proxy's address,
    so every client goes through it): the workers' and the traffic's connections
    dropped and refused. Sends are retried, a batch whose send or commit failed is read
    again: nothing lost, wrong or extra."""
    run: FaultRun = fault_run("broker-unreachable", shoppers=variant.shoppers, rate=variant.rate)
    run.start()
    run.at(variant.fault_at)
    began, ended = run.broker.proxy.outage(variant.outage)
    run.faulted(began, ended)
    out = run.finish()
    assert_clean(out, run)


@pytest.mark.parametrize("variant", VARIANTS)
def test_slow_redis(fault_run: Any, variant: Variant) -> None:
    """Every Redis reply delayed by 200 ms for the fault's length: the worker goes on
    (tier changes keep coming during the fault: no livelock of retries and timeouts),
    and no id comes with other content."""
    run: FaultRun = fault_run("redis-slow-200ms", shoppers=variant.shoppers, rate=variant.rate)
    run.start(redis_proxy=True)
    worker = run.workers[0]
    assert worker.redis_proxy is not None
    run.at(variant.fault_at)
    began = time.time()
    worker.redis_proxy.set_delay(0.2)
    time.sleep(variant.outage)
    worker.redis_proxy.set_delay(0.0)
    ended = time.time()
    run.faulted(began, ended)
    time.sleep(2)  # the reader has what was sent during the fault
    during = [
        r for r in run.records(run.settings.topic_tier_changes)
        if began + 1 <= r.timestamp / 1000 <= ended
    ]  # fmt: skip
    run.notes["changes_during_fault"] = len(during)
    out = run.finish()
    assert_clean(out, run)
    assert during, "no tier change while Redis was slow"


@pytest.mark.faults
@pytest.mark.timeout(900)
def test_zombie_worker(fault_run: Any) -> None:
    """Two workers; one is stopped (SIGSTOP) just as a fenced write of its goes to
    Redis, for longer than the session timeout (3 s here): the other takes its
    partitions over (a new epoch each) and processes those shoppers' next round. Then
    SIGCONT: the zombie finishes what it had in hand, and its writes of those shoppers'
    state as it was before that round are refused (its epoch is stale).

    Two checks: the outputs against replay, as in every test; and, 3 s after SIGCONT
    (before the shoppers' next round), the detection state of the shoppers in the
    zombie's call: its newest event time (`wm`) must not have gone back behind the
    round the survivor processed (`stale_states`)."""
    variant = LONG
    run: FaultRun = fault_run(
        "zombie-worker",
        shoppers=variant.shoppers,
        rate=variant.rate,
        extra_env={
            "INTENT_SESSION_TIMEOUT_SECONDS": "3",
            "INTENT_HEARTBEAT_INTERVAL_SECONDS": "0.5",
        },
    )
    run.start(workers=2, redis_proxy=True, settle=3)
    zombie, survivor = run.workers
    assert zombie.redis_proxy is not None
    run.at(variant.fault_at)
    stopped = threading.Event()
    caught: dict[str, Any] = {}

    def stop(chunk: bytes) -> None:  # in the proxy's thread, as the call passes
        if not stopped.is_set():
            stop_worker(zombie, signal.SIGSTOP)
            caught.update(at=time.time(), shoppers=set())
            stopped.set()
        # the call, and what else the zombie had written before it stopped
        caught["shoppers"].update(SHOPPER_KEY.findall(chunk))

    taken_before = survivor.assignments()
    zombie.redis_proxy.arm(b"EVALSHA", stop, follow=1.0)
    assert stopped.wait(30), "the zombie never wrote"
    # past the session timeout, and long enough for the survivor to take over and
    # process the next round of the zombie's shoppers (a round is ~30 s of traffic later)
    time.sleep(40)
    took_over = survivor.assignments() > taken_before
    stop_worker(zombie, signal.SIGCONT)
    resumed = time.time()
    run.faulted(caught["at"], resumed)
    time.sleep(3)  # the zombie's call answered, its batch or sweep chunk written
    shoppers = sorted(s.decode() for s in caught["shoppers"])
    stale = stale_states(run, shoppers, processed_by=resumed - 3)
    run.notes.update(
        zombie_fenced_writes=zombie.metrics().get("intent_fenced_writes_total", 0.0),
        survivor_took_over=took_over,
        zombie_shoppers=len(shoppers),
        stale_states=len(stale),
        stale_examples=stale[:3],
    )
    out = run.finish()
    assert took_over, "the survivor never took the zombie's partitions"
    assert shoppers, "the zombie's call named no shopper"
    assert_clean(out, run)
    assert stale == [], "the zombie's late writes took shoppers' detection state back"


SHOPPER_KEY = re.compile(rb":s:\{\d+\}:(f\d+)")


def stale_states(run: FaultRun, shoppers: list[str], processed_by: float) -> list[Any]:
    """The shoppers whose detection state in Redis is older than their newest event sent
    before `processed_by`: (shopper, seconds behind)."""
    newest: dict[str, float] = {}
    for burst, at in zip(run.journeys.bursts, run.sent.at, strict=False):
        if at <= processed_by and burst.shopper in shoppers:
            newest[burst.shopper] = max(e.ts.timestamp() for e in burst.events)
    client = redis.Redis.from_url(run.redis.url)
    keys = Keys(run.settings.app_id)
    try:
        stale = []
        for shopper, ts in sorted(newest.items()):
            partition = partition_of(shopper, run.settings.partitions)
            raw = client.get(keys.record(partition, shopper))
            seen = decode(raw, {}).patterns["wm"] if raw else None
            if seen is None or seen < ts - 1e-6:
                stale.append((shopper, None if seen is None else round(ts - seen)))
        return stale
    finally:
        client.close()


@pytest.mark.faults
@pytest.mark.timeout(900)
def test_worker_killed(fault_run: Any) -> None:
    """Two workers, one killed with kill -9 mid-stream (the long variant of
    test_failover.py, on the journeys and against replay): its batch in hand was not
    committed; the survivor takes its partitions over and processes it again."""
    variant = LONG
    run: FaultRun = fault_run("worker-kill-9", shoppers=variant.shoppers, rate=variant.rate)
    run.start(workers=2, settle=3)
    victim, survivor = run.workers
    run.at(variant.fault_at)
    stop_worker(victim, signal.SIGKILL)
    killed = time.time()
    run.faulted(killed, killed)
    victim.proc.wait(timeout=10)
    out = run.finish()
    run.workers.remove(victim)  # its death is the fault, not a failure
    assert_clean(out, run)
    assert survivor.proc.poll() is None
