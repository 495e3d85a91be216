"""Failover after `kill -9`: two workers, steady traffic, one killed mid-stream.

    python -m bench.failover [--rate 200] [--seconds 40] [--kill-at 15]

Each event is a product view of a new shopper, so each must produce exactly one tier
change (none -> low). The run reports whether every one arrived (nothing lost), how many
arrived twice (at-least-once), and the latency from producing an event to its tier
change: before the kill, and the worst one after it, which is the failover time as a
shopper sees it. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kafka import KafkaProducer

from bench.run import tier_change_reader
from stream.devstack.embedded import EmbeddedStack, free_port, spawn, stop_process
from stream.settings import Settings
from stream.topics import ensure_topics


def log(message: str) -> None:
    print(f"[failover {time.strftime('%H:%M:%S')}] {message}", flush=True)


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=200, help="events per second")
    parser.add_argument("--seconds", type=int, default=40, help="how long traffic runs")
    parser.add_argument("--kill-at", type=float, default=15.0, help="seconds into traffic")
    args = parser.parse_args()

    run_dir = Path(tempfile.mkdtemp(prefix="intent-failover-"))
    with EmbeddedStack(run_dir / "stack") as stack:
        env = {
            "INTENT_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
            "INTENT_REDIS_URL": stack.redis_url,
            "INTENT_APP_ID": f"failover-{uuid.uuid4().hex[:6]}",
            "INTENT_WEB_PORT": "0",
        }
        os.environ.update(env)
        settings = Settings()
        ensure_topics(settings)
        ports = [free_port(), free_port()]
        workers = [
            spawn(
                [sys.executable, "-m", "stream", "worker", "--loglevel", "warning"],
                run_dir / f"worker{i}.log",
                env={**os.environ, "INTENT_METRICS_PORT": str(port)},
            )
            for i, port in enumerate(ports)
        ]
        try:
            started = time.monotonic()
            while not all(ready(p) for p in ports):
                if time.monotonic() - started > 60:
                    raise RuntimeError(f"workers not ready in 60 s; logs in {run_dir}")
                time.sleep(0.2)
            log(f"both workers ready after {time.monotonic() - started:.1f} s")
            time.sleep(3)  # let the group settle on its final assignment
            result = traffic(settings, args, workers[0])
        finally:
            for proc in workers:
                stop_process(proc)
    print(json.dumps(result, indent=2))


def traffic(settings: Settings, args: Any, victim: Any) -> dict[str, Any]:
    reader = tier_change_reader(settings)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=2, acks=1)
    sent: dict[str, float] = {}
    killed: dict[str, float] = {}
    total = args.rate * args.seconds

    def send() -> None:
        t0 = time.perf_counter()
        for i in range(total):
            due = t0 + i / args.rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            if not killed and i >= args.kill_at * args.rate:
                victim.send_signal(signal.SIGKILL)
                killed["at"] = time.time()
                log(f"killed worker 0 (pid {victim.pid}) after {i} events")
            shopper = f"fo-{i}"
            body = {
                "event_id": f"fo-{i}",
                "shopper_id": shopper,
                "type": "product_view",
                "ts": datetime.now(UTC).isoformat(),
                "product": {"sku": "SKU-1", "category": "c"},
            }
            sent[shopper] = time.time()
            value = json.dumps(body).encode()
            producer.send(settings.topic_clickstream, key=shopper.encode(), value=value)
        producer.flush()

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    seen: dict[str, list[float]] = {}
    deadline = time.time() + args.seconds + 90
    while time.time() < deadline and (thread.is_alive() or len(seen) < total):
        for batch in reader.poll(timeout_ms=200).values():
            for record in batch:
                change = json.loads(record.value)
                if change["shopper_id"] in sent and change["reason"] == "signal":
                    seen.setdefault(change["shopper_id"], []).append(record.timestamp / 1000)
    thread.join()
    reader.close()
    kill_at = killed["at"]
    before = [seen[s][0] - sent[s] for s in seen if sent[s] < kill_at - 1]
    after = [seen[s][0] - sent[s] for s in seen if sent[s] >= kill_at]
    return {
        "events": total,
        "tier_changes_received": len(seen),
        "lost": total - len(seen),
        "delivered_twice": sum(1 for times in seen.values() if len(times) > 1),
        "p50_ms_before_kill": 1000 * statistics.median(before) if before else None,
        "worst_after_kill_s": max(after) if after else None,
        "p50_ms_after_kill": 1000 * statistics.median(after) if after else None,
    }


if __name__ == "__main__":
    main()
