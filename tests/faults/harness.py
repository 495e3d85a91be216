"""The fault suite's machinery: its own broker (behind a proxy), Redis servers it can
kill and start again on the same port and data folder, worker processes, steady traffic,
a reader of the output topics, and the verdict against replay.

A `FaultRun` is one test: start the workers, send the journeys at a steady rate (a round
of a shopper per burst, `journeys.py`), let the test inject its fault and say when it
ended (`faulted(began, ended)`), then send the last event, read until everything replay
computes has arrived (and a few seconds more for anything extra), and judge. `finish()`
prints one line of JSON: fault, lost, wrong, extra, redelivered, recovery_s, and more.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaProducer, TopicPartition

from stream.devstack.embedded import (
    Server,
    free_port,
    redis_server,
    spawn,
    stop_process,
    tansu_binary,
    tcp_answers,
)
from stream.settings import Settings
from stream.topics import ensure_topics
from tests.faults.journeys import (
    ACTION_TOPICS,
    Expected,
    Journeys,
    action_id,
    expected,
    journeys,
    judge,
)
from tests.faults.proxy import Proxy
from tests.integration.kafka_io import Reader
from tests.prometheus_text import parse_metrics


# --- servers ---------------------------------------------------------------------------
@dataclass
class Broker:
    """Tansu listening on its own port and advertising the proxy's, so that every client
    (workers, the traffic, the readers) reaches it only through the proxy: cutting the
    proxy makes the broker unreachable while it keeps running."""

    server: Server
    proxy: Proxy

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.proxy.port}"

    def stop(self) -> None:
        self.proxy.stop()
        self.server.stop()


def start_broker(run_dir: Path) -> Broker:
    port = free_port()
    proxy = Proxy(port, name="broker-proxy").start()
    server = Server(
        name="kafka (tansu, behind the fault proxy)",
        port=port,
        argv=[
            str(tansu_binary()),
            "broker",
            "--listener-url", f"tcp://127.0.0.1:{port}",
            "--advertised-listener-url", f"tcp://127.0.0.1:{proxy.port}",
            "--storage-engine", "memory://tansu/",
        ],
        log_path=run_dir / "tansu.log",
        ready=tcp_answers,
    )  # fmt: skip
    try:
        server.start()
    except BaseException:
        proxy.stop()
        raise
    return Broker(server, proxy)


class RedisBox:
    """A real redis-server (AOF, fsync every second: `embedded.redis_server`) on a port
    and data folder of its own, which a test may SIGKILL and start again on both."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.port = free_port()
        self.server: Server | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.server = redis_server(self.port, self.run_dir)
        self.server.log_path = self.run_dir / f"redis-{self.starts}.log"
        self.server.start()
        self.starts += 1

    def kill(self) -> None:
        """SIGKILL, as the OOM killer does; its data folder's lock released."""
        assert self.server is not None and self.server.proc is not None
        self.server.proc.send_signal(signal.SIGKILL)
        self.server.proc.wait(timeout=10)
        self.server.stop()  # the process is gone: this only releases the folder's lock
        self.server = None

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


# --- workers ---------------------------------------------------------------------------
@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    metrics_port: int
    log: Path
    redis_proxy: Proxy | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ready(self) -> bool:
        return http_status(self.metrics_port, "/ready") == 200

    def metrics(self) -> dict[str, float]:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2
            ) as resp:
                text = resp.read().decode()
        except OSError:
            return {}
        return parse_metrics(text)

    def redis_errors(self) -> float:
        return sum(
            v for k, v in self.metrics().items() if k.startswith("intent_redis_errors_total")
        )

    def assignments(self) -> int:
        """How many times the worker logged a new assignment of partitions."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return 0
        return len(re.findall(r"assigned [1-9]\d* partitions", text))

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


def http_status(port: int, path: str) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


def wait_for(check: Callable[[], bool], timeout: float, what: str, step: float = 0.2) -> float:
    """Seconds it took; AssertionError after `timeout`."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if check():
            return time.monotonic() - began
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# --- one run ---------------------------------------------------------------------------
@dataclass
class Sent:
    """What the traffic thread produced: per burst, when it was handed to the producer,
    and the offsets the broker gave its records."""

    at: list[float] = field(default_factory=list)
    offsets: list[dict[int, int]] = field(default_factory=list)  # partition -> last offset
    error: BaseException | None = None


class FaultRun:
    """One fault test's run; see the module docstring."""

    def __init__(
        self,
        fault: str,
        broker: Broker,
        redis: RedisBox,
        run_dir: Path,
        *,
        shoppers: int,
        rate: float,
        seed: int = 7,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.fault = fault
        self.broker = broker
        self.redis = redis
        self.run_dir = run_dir
        self.rate = rate  # bursts (rounds of one shopper) per second
        tag = f"{fault}-{uuid.uuid4().hex[:8]}"
        base = Settings(kafka_bootstrap=broker.bootstrap)
        self.env: dict[str, str] = {
            "INTENT_KAFKA_BOOTSTRAP": broker.bootstrap,
            "INTENT_REDIS_URL": redis.url,
            "INTENT_APP_ID": f"faults-{tag}",
            "INTENT_WEB_PORT": "0",
            "INTENT_RUN_DIR": str(run_dir / "run"),
            "INTENT_DATA_DIR": str(run_dir / "data"),
            **{f"INTENT_{k.upper()}": f"{v}.{tag}" for k, v in base.topic_names().items()},
            **(extra_env or {}),
        }
        self.settings = Settings(**{k[len("INTENT_") :].lower(): v for k, v in self.env.items()})
        self.journeys: Journeys = journeys(seed, shoppers)
        self.file = self.journeys.write(run_dir / "journeys.jsonl")
        self.want: Expected = expected(self.file, self.settings.output_topics())
        self.workers: list[Worker] = []
        self.sent = Sent()
        self.window: tuple[float, float] | None = None
        self.traffic_began = 0.0
        self._traffic: threading.Thread | None = None
        self._reader: Reader | None = None
        self._reading: threading.Thread | None = None
        self._monitor: threading.Thread | None = None
        self._stop = threading.Event()
        self.commits: list[tuple[float, dict[int, int]]] = []  # (time, clickstream commits)
        self.notes: dict[str, Any] = {}

    # --- set-up ----------------------------------------------------------------------
    def start_worker(self, redis_proxy: bool = False, **env: str) -> Worker:
        """A `python -m stream worker` process; its Redis through a proxy of its own if
        asked (`Worker.redis_proxy`)."""
        index = len(self.workers)
        port = free_port()
        proxy = Proxy(self.redis.port, name=f"redis-proxy-{index}").start() if redis_proxy else None
        values = {**self.env, "INTENT_METRICS_PORT": str(port), **env}
        if proxy is not None:
            values["INTENT_REDIS_URL"] = f"redis://127.0.0.1:{proxy.port}/0"
        log = self.run_dir / f"worker-{index}.log"
        proc = spawn([sys.executable, "-m", "stream", "worker"], log, env={**os.environ, **values})
        worker = Worker(proc, port, log, proxy)
        self.workers.append(worker)
        return worker

    def start(self, workers: int = 1, redis_proxy: bool = False, settle: float = 0.0) -> None:
        """Topics, workers (ready: in the group with partitions, Redis answering), the
        reader, the committed-offset monitor, then the traffic."""
        ensure_topics(self.settings)
        for _ in range(workers):
            self.start_worker(redis_proxy=redis_proxy)
        wait_for(lambda: all(w.ready() for w in self.workers), 90, "the workers ready")
        time.sleep(settle)  # two workers: the group settles on its final assignment
        if workers > 1:
            wait_for(lambda: all(w.ready() for w in self.workers), 30, "both with partitions")
        topics = self.settings.output_topics()
        self._reader = Reader(
            self.broker.bootstrap,
            self.settings.topic_tier_changes,
            self.settings.topic_dead_letter,
            *(topics[name] for name in ACTION_TOPICS),
        )
        self._reading = threading.Thread(target=self._read, name="reader", daemon=True)
        self._reading.start()
        self._monitor = threading.Thread(target=self._watch_commits, name="commits", daemon=True)
        self._monitor.start()
        self.traffic_began = time.time()
        self._traffic = threading.Thread(target=self._send, name="traffic", daemon=True)
        self._traffic.start()

    def at(self, seconds: float) -> None:
        """Wait until `seconds` into the traffic."""
        time.sleep(max(0.0, self.traffic_began + seconds - time.time()))

    def faulted(self, began: float, ended: float) -> None:
        self.window = (began, ended)

    # --- the threads -------------------------------------------------------------------
    def _send(self) -> None:
        producer = KafkaProducer(
            bootstrap_servers=self.broker.bootstrap,
            acks=1,
            enable_idempotence=False,
            max_in_flight_requests_per_connection=1,  # retries never reorder
            linger_ms=1000,  # a burst is appended as one batch: `flush` sends it
            batch_size=1 << 18,
            request_timeout_ms=5000,
            delivery_timeout_ms=300_000,  # an outage is waited out, not an error
            max_block_ms=300_000,
            reconnect_backoff_max_ms=1000,
        )
        topic = self.settings.topic_clickstream
        try:
            bursts = [b.records() for b in self.journeys.bursts]
            bursts.append([(b"closer", self.journeys.closer.to_json())])
            for i, records in enumerate(bursts):
                if i < len(self.journeys.bursts):
                    due = self.traffic_began + i / self.rate
                    time.sleep(max(0.0, due - time.time()))
                else:  # the closer: once the test says the fault is over
                    while self.window is None and not self._stop.is_set():
                        time.sleep(0.1)
                self.sent.at.append(time.time())
                futures = [producer.send(topic, key=k, value=v) for k, v in records]
                producer.flush()
                last: dict[int, int] = {}
                for future in futures:
                    meta = future.get(timeout=300)
                    last[meta.partition] = max(meta.offset, last.get(meta.partition, -1))
                self.sent.offsets.append(last)
        except BaseException as exc:  # reported by `finish`
            self.sent.error = exc
        finally:
            producer.close(timeout=10)

    def _read(self) -> None:
        assert self._reader is not None
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # an outage: the reader reconnects
                self._reader.poll()

    def _watch_commits(self) -> None:
        """The stream group's committed offsets on the clickstream, every half second."""
        admin: KafkaAdminClient | None = None
        topic = self.settings.topic_clickstream
        partitions = [TopicPartition(topic, p) for p in range(self.settings.partitions)]
        while not self._stop.is_set():
            try:
                if admin is None:
                    admin = KafkaAdminClient(
                        bootstrap_servers=self.broker.bootstrap, request_timeout_ms=3000
                    )
                group = self.settings.stream_group
                found = admin.list_group_offsets({group: partitions})[group]
                commits = {
                    tp.partition: o.offset
                    for tp, o in found.items()
                    if o is not None and o.offset >= 0
                }
                self.commits.append((time.time(), commits))
            except Exception as exc:
                self.notes["commit_watch_error"] = repr(exc)[:200]
                if admin is not None:
                    with contextlib.suppress(Exception):
                        admin.close()
                admin = None
            self._stop.wait(0.5)
        if admin is not None:
            with contextlib.suppress(Exception):
                admin.close()

    # --- the end -------------------------------------------------------------------------
    def finish(self, drain_timeout: float = 120.0, settle: float = 5.0) -> dict[str, Any]:
        """The closer sent, everything read (or `drain_timeout` passed), the verdict."""
        assert self.window is not None, "the test did not say when its fault ended"
        assert self._traffic is not None and self._reader is not None
        self._traffic.join(timeout=len(self.journeys.bursts) / self.rate + 330)
        if self.sent.error is not None:
            raise AssertionError(f"the traffic failed: {self.sent.error!r}")
        sent_all = time.time()
        want = len(self.want.changes) + len(self.want.actions)

        def everything() -> bool:
            changes, actions = self._outputs()
            have = {c["change_id"] for c in changes} | {(t, _aid(v)) for t, v in actions}
            return (
                sum(1 for k in self.want.changes if k in have)
                + sum(1 for k in self.want.actions if k in have)
                >= want
            )

        drained = True
        try:
            wait_for(everything, drain_timeout, "every output replay computes", step=0.5)
        except AssertionError:
            drained = False
        drain_s = time.time() - sent_all
        time.sleep(settle)  # anything extra, sent again, or late
        self._stop.set()
        for thread in (self._reading, self._monitor):
            if thread is not None:
                thread.join(timeout=10)
        changes, actions = self._outputs()
        verdict = judge(self.want, changes, actions)
        began, ended = self.window
        out: dict[str, Any] = {
            "fault": self.fault,
            "lost": verdict.lost,
            "wrong": verdict.wrong,
            "extra": verdict.extra,
            "redelivered": verdict.redelivered,
            "recovery_s": self._recovery(ended),
            "first_change_s": self._first_change(ended),
            "backlog_s": self._backlog(ended),
            "fault_s": round(ended - began, 1),
            "final_tier_mismatches": verdict.final_tier_mismatches,
            "events": self.journeys.events,
            "bursts": len(self.journeys.bursts),
            "expected_changes": len(self.want.changes),
            "expected_actions": len(self.want.actions),
            "drained": drained,
            "drain_s": round(drain_s, 1),
            "dead_letters": len(self.records(self.settings.topic_dead_letter)),
            **self.notes,
            "detail": verdict.detail,
        }
        print(json.dumps(out, default=str))
        return out

    def close(self) -> None:
        self._stop.set()
        for worker in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGCONT)  # a stopped worker cannot stop
        for worker in self.workers:
            stop_process(worker.proc, grace=15)
            if worker.redis_proxy is not None:
                worker.redis_proxy.stop()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                self._reader.close()

    # --- reading the outputs --------------------------------------------------------------
    def records(self, topic: str) -> list[Any]:
        """What the reader has of an output topic so far."""
        assert self._reader is not None
        return list(self._reader.records.get(topic, []))

    def _outputs(self) -> tuple[list[dict[str, Any]], list[tuple[str, dict[str, Any]]]]:
        topics = self.settings.output_topics()
        changes = [json.loads(r.value) for r in self.records(self.settings.topic_tier_changes)]
        actions = [
            (topics[name], json.loads(r.value))
            for name in ACTION_TOPICS
            for r in self.records(topics[name])
        ]
        return changes, actions

    def _first_change(self, ended: float) -> float | None:
        """Seconds from the end of the fault to the first tier change sent after it."""
        after = [
            r.timestamp / 1000
            for r in self.records(self.settings.topic_tier_changes)
            if r.timestamp / 1000 >= ended
        ]
        return round(min(after) - ended, 2) if after else None

    def _recovery(self, ended: float) -> float | None:
        """Seconds from the end of the fault until every partition of the tier-change
        topic that got any change afterwards had its first one (a worker's, or its
        partitions' new owner's)."""
        first: dict[int, float] = {}
        for r in self.records(self.settings.topic_tier_changes):
            ts = r.timestamp / 1000
            if ts >= ended:
                first[r.partition] = min(ts, first.get(r.partition, ts))
        return round(max(first.values()) - ended, 2) if first else None

    def _backlog(self, ended: float) -> float | None:
        """Seconds from the end of the fault until the group had committed every record
        sent before it ended: the backlog of the fault worked off (lag back to zero)."""
        target: dict[int, int] = defaultdict(lambda: -1)
        for at, offsets in zip(self.sent.at, self.sent.offsets, strict=False):
            if at <= ended:
                for partition, offset in offsets.items():
                    target[partition] = max(target[partition], offset + 1)
        for at, committed in self.commits:
            if at >= ended and all(committed.get(p, -1) >= o for p, o in target.items()):
                return round(at - ended, 2)
        return None


def _aid(value: dict[str, Any]) -> str:
    return action_id(value)


def stop_worker(worker: Worker, sig: int) -> None:
    """A signal to the worker's process group (SIGSTOP, SIGCONT, SIGKILL)."""
    os.killpg(worker.pid, sig)
