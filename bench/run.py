"""End-to-end benchmark on the embedded stack: `make bench` (or `python -m bench.run`).

1. Preload N events into the input topic: real Taobao UserBehavior events, cycled with new
   ids (and new shoppers per cycle) up to N.
2. Start one worker cold; measure events/s through ingest, detection, Redis and tier
   changes (from its first event until its consumer group has committed every input
   record and its sweep has fired what they left due in event time, where the Quix
   Streams run stops too; the sweep's part after the last input is reported), Redis
   round trips and server CPU per event (INFO), the CPU of the worker and of the
   broker per event (/proc), and Redis memory per active shopper (MEMORY USAGE of a
   sample). The scale figure beside it: one Redis's ceiling, 1e6 / (Redis CPU µs per
   event), the events/s at which that Redis would be busy all the time.
3. Latency at half the capacity just measured (`--rate` to choose another): p50/p99
   from producing an event to producing the tier change it causes, once the worker has
   caught up with the jump from the preloaded events' time (2017) to now (`settle`; the
   catch-up time is reported). A fixed rate above what the worker sustains measures its
   queue, not its latency. Beside it, at the same rate, the bare path's p99 (the
   forwarder of bench/floors.py: the worker's transport and nothing else), and the goal
   that the worker add at most 25 ms to it.
4. Baselines on the same topic: a bare aiokafka consumer (the transport ceiling), a bare
   Faust agent that only counts (the framework floor), the same workload in Quix Streams
   (bench/quix_workload.py, the `bench` extra), the transport floor of one worker
   (bench/floors.py, consume + ingest + send per event, in a process of its own); and
   replay (offline) events/s, in one process and in one per core (`intent replay --jobs
   N`, reading included).
5. The micro workload (bench/micro.py) on a topic of its own holding the same events:
   our worker with a one-rule-per-type rules file, and Quix Streams, Bytewax and
   Pathway written natively (bench/micro_peers.py), each one's tier changes read back
   and checked record by record against the single-pass reference (`--no-peers` skips
   the three peers, `--no-micro` the whole step, `--micro-only` runs nothing else).
Appends one object to bench/results.json (`--results`) and prints the table: measured
figures and ratios, no absolute targets (what this 2-core machine allows is in
docs/performance.md).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import itertools
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, NamedTuple

import redis
from aiokafka.partitioner import DefaultPartitioner
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from stream.devstack.embedded import EmbeddedStack, free_port, spawn, stop_process
from stream.settings import Settings
from stream.topics import ensure_topics

ROOT = Path(__file__).resolve().parents[1]
TAOBAO = ROOT.parent / "shared" / "data" / "taobao_userbehavior_2017-11-26.csv.gz"
RESULTS = ROOT / "bench" / "results.json"
# The bench's worker (and the Quix Streams run) keep to event time when input stops: its
# sweep would move on to the wall clock after a second (INTENT_IDLE_GRACE_SECONDS), and
# the jump from 2017 to now would run into the end of the bulk phase. `settle` moves event
# time to now with a live event on every partition instead.
WORKER_ENV = {"INTENT_IDLE_GRACE_SECONDS": str(10 * 24 * 3600)}
WORKER_TIMEOUT = 3600.0  # the bulk phase and its sweep, at most
TYPES = {"pv": "product_view", "cart": "add_to_cart", "fav": "wishlist_add", "buy": "purchase"}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def taobao_rows(path: Path = TAOBAO) -> list[tuple[str, str, str, str, int]]:
    rows = []
    with gzip.open(path, "rt") as f:
        for line in f:
            user, item, category, kind, ts = line.rstrip("\n").split(",")
            rows.append((user, item, category, kind, int(ts)))
    rows.sort(key=lambda r: r[4])
    return rows


def events(rows: list[Any], n: int) -> list[tuple[bytes, bytes]]:
    """n canonical events; cycle k gets new shoppers (`<user>-k`) and shifted times."""
    span = rows[-1][4] - rows[0][4] + 1
    out = []
    for i in range(n):
        k, row = divmod(i, len(rows))
        user, item, category, kind, ts = rows[row]
        shopper = f"{user}-{k}"
        body = {
            "event_id": f"{k}-{row}",
            "shopper_id": shopper,
            "type": TYPES[kind],
            "ts": datetime.fromtimestamp(ts + k * span, tz=UTC).isoformat(),
            "product": {"sku": item, "category": category},
        }
        out.append((shopper.encode(), json.dumps(body, separators=(",", ":")).encode()))
    return out


def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> float:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=50,
        batch_size=1 << 20,
        acks=1,
        max_request_size=8 << 20,
    )
    started = time.perf_counter()
    for key, value in records:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()
    return time.perf_counter() - started


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def total(samples: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in samples.items() if k.startswith(prefix))


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def bench_worker(
    stack: EmbeddedStack,
    settings: Settings,
    env: dict[str, str],
    n: int,
    run_dir: Path,
    log_name: str = "worker.log",
) -> dict[str, Any]:
    """One worker from cold until its bulk phase is done (module doc, 2.); the returned
    "worker" is still running. A failure stops it."""
    log_path = run_dir / log_name
    worker = spawn(
        [sys.executable, "-m", "stream", "worker", "--loglevel", "warning"],
        log_path,
        env={**os.environ, **env},
    )
    try:
        return _bench_worker(stack, settings, worker, log_path, n)
    except BaseException:
        stop_process(worker)
        raise


def _bench_worker(
    stack: EmbeddedStack,
    settings: Settings,
    worker: subprocess.Popen[bytes],
    log_path: Path,
    n: int,
) -> dict[str, Any]:
    client = redis.Redis.from_url(stack.redis_url)
    offsets = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.stream_group,
        enable_auto_commit=False,
    )
    inputs = [
        TopicPartition(topic, p)
        for topic in (settings.topic_clickstream, settings.topic_normalised)
        for p in sorted(offsets.partitions_for_topic(topic) or [])
    ]
    started = time.perf_counter()
    first = None
    cpu: dict[str, float] = {}
    ingested = 0.0
    next_log = 10.0
    while ingested < n:  # /metrics costs the worker CPU: scraped every 0.5 s only
        time.sleep(0.5)
        check_alive(worker, log_path, started)
        try:
            m = scrape(settings.metrics_port)
        except OSError:
            continue
        ingested = total(m, "intent_events_total{") + total(m, "intent_events_rejected_total{")
        if first is None and ingested > 0:
            first = time.perf_counter()
            cpu = phase_cpu(worker.pid, stack)
            log("worker is consuming")
        if first is not None and time.perf_counter() - first >= next_log:
            next_log += 10
            signals, changes = outputs(m)
            log(f"ingested {ingested:,.0f}/{n:,}, signals {signals:,.0f}, "
                f"tier changes {changes:,.0f}")  # fmt: skip
    assert first is not None
    while unprocessed(offsets, inputs):
        time.sleep(0.1)
        check_alive(worker, log_path, started)
    offsets.close()
    committed = time.perf_counter()
    log("every input record processed; waiting for the sweep to catch up with event time")
    ended = swept(settings, worker.pid, stack, still=3.0, timeout=WORKER_TIMEOUT)
    done_at = ended.at
    log(f"the sweep caught up {max(0.0, done_at - committed):.1f} s after the last input")
    m = ended.metrics
    cpu = {k: v - cpu[k] for k, v in ended.cpu.items()}  # from the first event on
    roundtrips = total(m, "intent_redis_roundtrips_total{")
    # one record per shopper (`stream.state.records`); the per-partition indexes are
    # left out, as they were when a shopper had several keys
    scan = client.scan_iter(f"{settings.app_id}:s:*", count=1000)
    sample = [k for k, _ in zip(scan, range(500), strict=False)]  # at most 500 shoppers
    sizes = [client.memory_usage(k) or 0 for k in sample]
    return {
        "worker": worker,
        "events_per_s": n / (done_at - first),
        "cold_start_to_done_s": done_at - started,
        # the sweep's backlog when every input record was processed (docs/performance.md)
        "sweep_after_input_s": max(0.0, done_at - committed),
        "redis_roundtrips_per_event": roundtrips / n,
        "redis_cpu_us_per_event": cpu["redis"] * 1e6 / n,
        "worker_cpu_us_per_event": cpu["worker"] * 1e6 / n,
        "broker_cpu_us_per_event": cpu["broker"] * 1e6 / n,
        "redis_bytes_per_shopper": statistics.mean(sizes) if sizes else None,
        "signals": total(m, "intent_signals_total{"),
        "tier_changes": total(m, "intent_tier_changes_total{"),
        # events detected without the intent.events hop (the direct path, `Routing`)
        "direct_share": m.get("intent_events_direct_total", 0.0)
        / max(1.0, total(m, "intent_events_total{")),
    }


def check_alive(worker: subprocess.Popen[bytes], log_path: Path, started: float) -> None:
    if worker.poll() is not None:
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        raise RuntimeError(
            f"the worker exited with code {worker.returncode}; the end of "
            f"{log_path}:\n" + "\n".join(tail)
        )
    if time.perf_counter() - started > WORKER_TIMEOUT:
        raise RuntimeError(f"the worker did not finish within {WORKER_TIMEOUT:.0f} s")


class Mark(NamedTuple):
    """A moment of the run: when, each process's CPU so far, the worker's metrics."""

    at: float
    cpu: dict[str, float]
    metrics: dict[str, float]


def swept(
    settings: Settings, worker: int, stack: EmbeddedStack, still: float, timeout: float
) -> Mark:
    """Wait until the worker's output (signals and tier changes) has been still for
    `still` seconds: its sweep has fired everything due (the bench's worker keeps to
    event time, `WORKER_ENV`). Returns the moment of its last signal or tier change, with
    the CPU and metrics read then."""
    mark = Mark(time.perf_counter(), phase_cpu(worker, stack), scrape(settings.metrics_port))
    began = mark.at
    while time.perf_counter() - mark.at < still:
        if time.perf_counter() - began > timeout:
            raise RuntimeError(f"the worker's output did not stop within {timeout:.0f} s")
        time.sleep(0.2)
        m = scrape(settings.metrics_port)
        if outputs(m) != outputs(mark.metrics):
            mark = Mark(time.perf_counter(), phase_cpu(worker, stack), m)
    return mark


def outputs(m: dict[str, float]) -> tuple[float, float]:
    """The worker's signals and tier changes so far."""
    return total(m, "intent_signals_total{"), total(m, "intent_tier_changes_total{")


def unprocessed(reader: KafkaConsumer, parts: list[TopicPartition]) -> int:
    """Input records the worker has not processed yet: the ends of its input topics
    against its consumer group's committed offsets (it commits a batch once the batch is
    scored and its output acknowledged). The offsets are read first, so the ends of
    intent.events include what the committed clickstream batches wrote there."""
    committed = {tp: reader.committed(tp) or 0 for tp in parts}
    ends = reader.end_offsets(parts)
    return sum(max(0, ends[tp] - committed[tp]) for tp in parts)


def tier_change_reader(settings: Settings) -> KafkaConsumer:
    """A consumer of intent.tier-changes from its current end: what comes from now on."""
    reader = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    parts = [
        TopicPartition(settings.topic_tier_changes, p)
        for p in sorted(reader.partitions_for_topic(settings.topic_tier_changes) or [])
    ]
    reader.assign(parts)
    reader.seek_to_end()
    for tp in parts:
        reader.position(tp)  # resolve the end now, before anything is produced
    return reader


def settle(
    settings: Settings,
    worker: int,
    stack: EmbeddedStack,
    quiet_seconds: float = 5.0,
    timeout: float = 900,
) -> dict[str, Any]:
    """Bring the worker to the steady state the latency is measured in.

    The preloaded events are from 2017, and the bulk phase ends with the sweep caught up
    with them (`swept`). A live event on every intent.events partition then moves event
    time to now, and every decay and absence of the preloaded shoppers falls due at once.
    That catch-up is real work (a worker back from a long outage does it too), but it is
    not the latency at a steady offered rate: wait until the worker's output has been
    still for `quiet_seconds` (`swept`). Returns how long it took (to its last output),
    the tier changes it made, and each process's CPU per tier change (is it bound by
    CPU, or by waiting?)."""
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks=1)
    partitions = sorted(producer.partitions_for(settings.topic_normalised))
    partitioner = DefaultPartitioner()  # the worker's, for the shopper's intent.events key
    tag, counter = uuid.uuid4().hex[:8], itertools.count()
    shoppers: dict[int, str] = {}  # intent.events partition -> a shopper keyed to it
    while len(shoppers) < len(partitions):
        shopper = f"settle-{tag}-{next(counter)}"
        shoppers.setdefault(partitioner(shopper.encode(), partitions, partitions), shopper)
    started = Mark(time.perf_counter(), phase_cpu(worker, stack), scrape(settings.metrics_port))
    for shopper in shoppers.values():
        body = {
            "event_id": f"settle-{uuid.uuid4().hex}",
            "shopper_id": shopper,
            "type": "product_view",
            "ts": datetime.now(UTC).isoformat(),
        }
        value = json.dumps(body).encode()
        producer.send(settings.topic_clickstream, key=shopper.encode(), value=value)
    producer.flush()
    producer.close()
    ended = swept(settings, worker, stack, quiet_seconds, timeout)
    changes = outputs(ended.metrics)[1] - outputs(started.metrics)[1]
    seconds = ended.at - started.at
    spent = {k: v - started.cpu[k] for k, v in ended.cpu.items()}
    log(
        f"caught up with event time in {seconds:.1f} s ({changes:,.0f} tier changes; "
        f"worker busy {spent['worker'] / max(seconds, 1e-3):.0%})"
    )
    return {
        "catch_up_s": seconds,
        "catch_up_tier_changes": changes,
        "catch_up_cpu_us_per_change": micros_per(spent, changes),
    }


def micros_per(spent: dict[str, float], n: float) -> dict[str, float]:
    """Each process's CPU seconds as µs per unit of work (event, tier change)."""
    return {name: round(seconds * 1e6 / max(n, 1), 1) for name, seconds in spent.items()}


def phase_cpu(
    worker: int, stack: EmbeddedStack, since: dict[str, float] | None = None
) -> dict[str, float]:
    """CPU seconds used so far by the worker, the broker, Redis and this process (which
    offers the load and reads the tier changes), or since an earlier reading."""
    broker = stack.servers[0].proc
    assert broker is not None
    now = {
        "worker": process_cpu(worker),
        "broker": process_cpu(broker.pid),
        "redis": redis_cpu(redis.Redis.from_url(stack.redis_url)),
        "bench": time.process_time(),
    }
    return {k: v - since[k] for k, v in now.items()} if since else now


def bench_latency(settings: Settings, rate: int, seconds: int) -> dict[str, float | None]:
    """Offer `rate` live checkouts a second for `seconds` (each a new shopper's, so each
    gives one tier change) and time each from its send to its tier change's record.

    The load comes from this process, through aiokafka, in bursts of what is due each
    millisecond, with the bodies made before the clock starts (only the timestamp is
    set at send). With kafka-python and a body built per send, the load generator cost
    127-137 us of CPU per event: at 5k/s, two thirds of a core of this 2-core machine
    taken from the worker it measures."""
    return asyncio.run(_latency(settings, rate, seconds))


async def _latency(settings: Settings, rate: int, seconds: int) -> dict[str, float | None]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka import TopicPartition as AioPartition

    n = rate * seconds
    run = uuid.uuid4().hex[:6]
    shoppers = [f"lat-{run}-{i}" for i in range(n)]
    keys = [shopper.encode() for shopper in shoppers]
    body = {"type": "checkout_started", "product": {"sku": "X", "category": "c"}}
    heads = [  # the JSON up to the time: `{..., "ts":"`; the time and `"}` come at send
        json.dumps({"event_id": f"lat-{i}", "shopper_id": shopper, **body})[:-1].encode()
        + b', "ts": "'
        for i, shopper in enumerate(shoppers)
    ]
    reader = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await reader.start()
    parts = [
        AioPartition(settings.topic_tier_changes, p)
        for p in sorted(reader.partitions_for_topic(settings.topic_tier_changes) or [])
    ]
    reader.assign(parts)
    await reader.seek_to_end(*parts)
    for tp in parts:
        await reader.position(tp)  # resolve the end now, before anything is produced
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=2, acks=1)
    await producer.start()
    sent_at: dict[str, float] = {}
    topic = settings.topic_clickstream

    async def offer() -> None:
        t0 = time.perf_counter()
        i = 0
        while i < n:
            due = min(n, int((time.perf_counter() - t0) * rate) + 1)
            stamp = datetime.now(UTC).isoformat().encode() + b'"}'
            at = time.time()
            while i < due:
                sent_at[shoppers[i]] = at
                await producer.send(topic, key=keys[i], value=heads[i] + stamp)
                i += 1
            await asyncio.sleep(0.001)
        await producer.flush()

    sending = asyncio.create_task(offer())
    latencies: list[float] = []
    deadline = time.time() + seconds + 60
    try:
        while time.time() < deadline and (not sending.done() or len(latencies) < len(sent_at)):
            for batch in (await reader.getmany(timeout_ms=200)).values():
                for record in batch:
                    change = json.loads(record.value)
                    sent = sent_at.get(change["shopper_id"])
                    if sent is not None and change["reason"] == "signal":
                        latencies.append(record.timestamp / 1000 - sent)
        await sending  # raises if offering failed
    finally:
        await producer.stop()
        await reader.stop()
    latencies.sort()
    if not latencies:  # JSON has no NaN: no samples is null
        return {"p50_ms": None, "p99_ms": None, "latency_samples": 0}
    return {
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "latency_samples": len(latencies),
        "latency_offered": len(sent_at),
    }


def bench_aiokafka(bootstrap: str, topic: str, n: int) -> float:
    from aiokafka import AIOKafkaConsumer

    async def run() -> float:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        count, first = 0, None
        try:
            while count < n:
                batches = await consumer.getmany(timeout_ms=500, max_records=10000)
                for records in batches.values():
                    if first is None:
                        first = time.perf_counter()
                    count += len(records)
        finally:
            await consumer.stop()
        assert first is not None
        return n / (time.perf_counter() - first)

    return asyncio.run(run())


def bench_faust(bootstrap: str, topic: str, n: int, run_dir: Path) -> float:
    result = run_dir / "faust_floor.json"
    proc = spawn(
        [
            sys.executable,
            "-m",
            "bench.faust_floor",
            bootstrap,
            topic,
            str(n),
            f"bench-floor-{uuid.uuid4().hex[:6]}",
            str(result),
        ],
        run_dir / "faust_floor.log",
    )
    return events_per_s(proc, result, "the Faust floor run", run_dir / "faust_floor.log")


def events_per_s(proc: Any, result: Path, what: str, log_file: Path) -> float:
    """Wait for a baseline process's {"events", "seconds"} file, then stop the process."""
    try:
        deadline = time.monotonic() + 3600
        while not result.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        stop_process(proc)
    if not result.exists():
        raise RuntimeError(f"{what} did not finish; see {log_file}")
    data = json.loads(result.read_text())
    return float(data["events"] / data["seconds"])


def bench_quix(env: dict[str, str], n: int, run_dir: Path) -> float | None:
    """The same workload in Quix Streams (bench/quix_workload.py) on the same input topic,
    with its own group, topics for everything downstream, and Redis keys."""
    try:
        import quixstreams  # noqa: F401
    except ImportError:
        log("Quix Streams is not installed (pip install -e '.[bench]'): skipped")
        return None
    tag = uuid.uuid4().hex[:6]
    base = Settings()
    overrides: dict[str, Any] = {"app_id": f"quix-{tag}"}
    for name, topic in base.topic_names().items():
        if name != "topic_clickstream":
            overrides[name] = f"quix-{tag}.{topic}"
    settings = base.model_copy(update=overrides)
    ensure_topics(settings)
    result = run_dir / "quix.json"
    proc = spawn(
        [sys.executable, "-m", "bench.quix_workload", str(n), str(result)],
        run_dir / "quix.log",
        env={**os.environ, **env, **{f"INTENT_{k.upper()}": str(v) for k, v in overrides.items()}},
    )
    return events_per_s(proc, result, "the Quix Streams run", run_dir / "quix.log")


def bench_replay() -> float:
    from stream.offline.replay import replay
    from stream.rulesfile import load_rules

    result = replay(TAOBAO, "taobao", load_rules())
    return result.events_per_second


def bench_replay_jobs(jobs: int) -> float:
    """`intent replay --jobs N` without output files: events over the wall clock, reading
    the file included (it is read in one process, then replayed in N forks)."""
    from stream.offline.outputs import OutputFiles
    from stream.offline.replay import Replay
    from stream.rulesfile import load_rules

    run = Replay(TAOBAO, "taobao", load_rules())
    with tempfile.TemporaryDirectory(prefix="intent-bench-replay-") as work:
        outputs = OutputFiles(None, None, Settings().output_topics(), Path(work))
        started = time.perf_counter()
        events: int = sum(tally.events for tally, _ in run.summaries(jobs, outputs))
        outputs.close()
        return events / (time.perf_counter() - started)


LATENCY_SHARE: Final = 0.5  # latency is measured at this share of the measured events/s
LATENCY_GOAL_MS: Final = 25.0  # the worker's p99 at most this much above the bare path's
FLOOR_EVENTS: Final = 100_000  # the transport floor's events at most: a per-event figure
PEER_TIMEOUT: Final = 900.0  # one micro peer, start-up and group join included


def isolated(settings: Settings, prefix: str, **update: Any) -> Settings:
    """`settings` with an app id (consumer group, Redis keys) and every topic of its own,
    so a baseline neither reads nor writes what another part of the run does."""
    overrides: dict[str, Any] = {"app_id": prefix}
    for name, topic in settings.topic_names().items():
        overrides[name] = f"{prefix}.{topic}"
    return settings.model_copy(update={**overrides, **update})


def as_env(settings: Settings, names: list[str]) -> dict[str, str]:
    """The INTENT_* variables that give a worker process these settings."""
    return {f"INTENT_{name.upper()}": str(getattr(settings, name)) for name in names}


def bare_path(
    settings: Settings, rate: int, seconds: int, stack: EmbeddedStack
) -> dict[str, Any] | None:
    """p50/p99 of the bare path (bench/floors.py's forwarder: the worker's transport and
    nothing else) at the rate the worker was measured at, on topics of its own; None,
    with the reason printed, when it cannot run."""
    from bench import floors

    broker = stack.servers[0].proc
    try:
        return floors.latency(settings, rate, seconds, broker.pid if broker else None)
    except Exception as exc:
        log(f"the bare path was not measured: {type(exc).__name__}: {exc}")
        return None


def transport_floor(settings: Settings, n: int) -> float | None:
    """One worker's transport floor (bench/floors.py `throughput`: consume, ingest and
    send per event; detection, scoring and Redis free) on n events, in a process of its
    own: it runs the worker's pipeline, which tunes the collector of its process, and
    replay is measured in this one afterwards. None, with the reason, if it fails."""
    from bench import floors

    floor = isolated(settings, f"floor-{uuid.uuid4().hex[:6]}")
    context = multiprocessing.get_context("spawn")
    try:
        with context.Pool(1) as pool:
            figures: dict[str, Any] = pool.apply(floors.throughput, (floor, n))
    except Exception as exc:
        log(f"the transport floor was not measured: {type(exc).__name__}: {exc}")
        return None
    value = figures.get("worker_floor_events_per_s")
    return float(value) if value else None


def bench_micro(
    stack: EmbeddedStack,
    env: dict[str, str],
    records: list[tuple[bytes, bytes]],
    run_dir: Path,
    peers: bool,
) -> dict[str, Any]:
    """The micro workload (bench/micro.py) on a topic of its own holding `records`: the
    reference, our worker, and the peers of bench/micro_peers.py unless `peers` is
    false. Each figure is None where it could not be measured (the reason is printed);
    each run's check against the reference is in "micro_checks"."""
    from bench import micro
    from bench.micro_peers import PEERS

    n = len(records)
    tag = uuid.uuid4().hex[:6]
    source = f"micro-{tag}.events"
    partitions = Settings().partitions
    micro.create_topic(stack.kafka_bootstrap, source, partitions)
    seconds = micro.produce_exact(stack.kafka_bootstrap, source, records)
    log(f"micro workload: {n:,} events on {source} in {seconds:.1f} s")
    started = time.perf_counter()
    expected = micro.reference(value for _, value in records)
    seconds = time.perf_counter() - started
    changes = sum(len(shopper) for shopper in expected.values())
    log(f"micro reference: {changes:,} tier changes, {n / seconds:,.0f} events/s (one pass)")
    out: dict[str, Any] = {"micro_reference_events_per_s": n / seconds}
    checks: dict[str, Any] = {}
    rate, check = micro_worker(stack, env, source, n, expected, run_dir, tag)
    out["micro_events_per_s"] = rate
    if check is not None:
        checks["worker"] = check._asdict()
    if not peers:
        log("micro peers: not run (--no-peers)")
    for peer in PEERS:
        rate = check = None
        if peers:
            rate, check = micro_peer(peer, stack.kafka_bootstrap, source, n, expected, run_dir)
        out[f"micro_{peer}_events_per_s"] = rate
        if check is not None:
            checks[peer] = check._asdict()
    out["micro_checks"] = checks
    return out


def micro_worker(
    stack: EmbeddedStack,
    env: dict[str, str],
    source: str,
    n: int,
    expected: Any,
    run_dir: Path,
    tag: str,
) -> tuple[float | None, Any]:
    """Our worker on the micro topic, with the micro rules file, an app id and output
    topics of its own; measured as the bulk phase (`bench_worker`); its tier changes read
    back and checked (decays left out: bench/micro.py)."""
    from bench import micro

    rules = run_dir / "micro_rules.yaml"
    rules.write_text(micro.rules_yaml())
    settings = isolated(
        Settings(),
        f"micro-{tag}",
        topic_clickstream=source,
        metrics_port=free_port(),
        data_dir=run_dir / "micro-data",
    )
    ensure_topics(settings)
    names = ["app_id", "metrics_port", "data_dir", *settings.topic_names()]
    worker_env = {**env, **as_env(settings, names), "INTENT_RULES": str(rules)}
    try:
        work = bench_worker(stack, settings, worker_env, n, run_dir, "micro-worker.log")
    except Exception as exc:
        log(f"micro, our worker: not measured: {exc}")
        return None, None
    stop_process(work["worker"], grace=20)
    messages = micro.read_topic(stack.kafka_bootstrap, settings.topic_tier_changes)
    got = [c for c in (micro.worker_change(m.value) for m in messages) if c is not None]
    check = micro.check(expected, got)
    log(f"micro, our worker: {work['events_per_s']:,.0f} events/s; {check.summary()}")
    return float(work["events_per_s"]), check


def micro_peer(
    peer: str, bootstrap: str, source: str, n: int, expected: Any, run_dir: Path
) -> tuple[float | None, Any]:
    """One peer of bench/micro_peers.py in a process of its own, writing to a topic of
    its own, read back and checked. (None, None), with the reason printed, when it
    cannot run here."""
    from bench import micro

    sink = f"{source}.{peer}"
    micro.create_topic(bootstrap, sink, Settings().partitions)
    result = run_dir / f"micro-{peer}.json"
    log_file = run_dir / f"micro-{peer}.log"
    proc = spawn(
        [sys.executable, "-m", "bench.micro_peers", peer, bootstrap, source, sink, str(n),
         str(result), str(run_dir / f"micro-{peer}-state")],
        log_file,
        env={**os.environ, "PATHWAY_THREADS": "1"},
    )  # fmt: skip
    log(f"micro, {peer}: started (log {log_file})")
    try:
        deadline = time.monotonic() + PEER_TIMEOUT
        while not result.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        stop_process(proc)
    if not result.exists():
        log(f"micro, {peer}: not measured: no result (exit code {proc.returncode}); "
            f"see {log_file}")  # fmt: skip
        return None, None
    data = json.loads(result.read_text())
    if "error" in data:
        log(f"micro, {peer}: not measured: {data['error']}")
        return None, None
    got = micro.peer_changes(micro.read_topic(bootstrap, sink))
    check = micro.check(expected, got)
    rate = n / data["seconds"]
    log(f"micro, {peer}: {rate:,.0f} events/s ({data['wall_seconds']:.1f} s from its "
        f"start); {check.summary()}")  # fmt: skip
    return rate, check


MICRO_KEYS: Final = (
    "micro_events_per_s",
    "micro_quix_events_per_s",
    "micro_bytewax_events_per_s",
    "micro_pathway_events_per_s",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument(
        "--rate",
        type=int,
        default=None,
        help="offered rate for latency (default: half the events/s measured before)",
    )
    parser.add_argument("--latency-seconds", type=int, default=20)
    parser.add_argument(
        "--skip-baselines",
        action="store_true",
        help="no aiokafka, Faust, Quix Streams or transport floor runs (quick)",
    )
    parser.add_argument(
        "--floor-events",
        type=int,
        default=FLOOR_EVENTS,
        help="the transport floor's events, at most",
    )
    parser.add_argument("--no-peers", action="store_true", help="the micro workload without peers")
    parser.add_argument("--no-micro", action="store_true", help="no micro workload at all")
    parser.add_argument(
        "--micro-only", action="store_true", help="only the micro workload; nothing saved"
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="append the run here")
    args = parser.parse_args()

    run_dir = Path(tempfile.mkdtemp(prefix="intent-bench-"))
    rows = taobao_rows()
    log(f"{len(rows):,} Taobao rows; building {args.events:,} events; logs in {run_dir}")
    records = events(rows, args.events)
    with EmbeddedStack(run_dir / "stack") as stack:
        env = {
            "INTENT_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
            "INTENT_REDIS_URL": stack.redis_url,
            "INTENT_APP_ID": f"bench-{uuid.uuid4().hex[:6]}",
            "INTENT_METRICS_PORT": str(free_port()),
            "INTENT_WEB_PORT": "0",
            "INTENT_DATA_DIR": str(run_dir / "data"),
            **WORKER_ENV,
        }
        os.environ.update(env)
        settings = Settings()
        if args.micro_only:
            micro = bench_micro(stack, env, records, run_dir, peers=not args.no_peers)
            print()
            print_micro({"events": args.events, **micro})
            return
        ensure_topics(settings)
        seconds = produce(stack.kafka_bootstrap, settings.topic_clickstream, records)
        log(f"preloaded {len(records):,} events in {seconds:.1f} s")
        result: dict[str, Any] = {"time": datetime.now(UTC).isoformat(), "events": args.events}
        work = bench_worker(stack, settings, env, args.events, run_dir)
        worker = work.pop("worker")
        result.update(work)
        result["redis_ceiling_events_per_s"] = (
            1e6 / result["redis_cpu_us_per_event"] if result["redis_cpu_us_per_event"] else None
        )
        direct = f"{result['direct_share']:.0%} without the intent.events hop"
        log(f"worker: {result['events_per_s']:,.0f} events/s, {direct}")
        result.update(settle(settings, worker.pid, stack))
        rate = args.rate or max(1, round(result["events_per_s"] * LATENCY_SHARE))
        result["latency_rate"] = rate
        cpu = phase_cpu(worker.pid, stack)
        result.update(bench_latency(settings, rate, args.latency_seconds))
        result["latency_cpu_us_per_event"] = micros_per(
            phase_cpu(worker.pid, stack, since=cpu), rate * args.latency_seconds
        )
        log(f"latency at {rate:,}/s: p50 {figure(result['p50_ms'])} ms, "
            f"p99 {figure(result['p99_ms'])} ms")  # fmt: skip
        stop_process(worker, grace=20)
        bare = bare_path(settings, rate, args.latency_seconds, stack)
        result["bare_p50_ms"] = bare["p50_ms"] if bare else None
        result["bare_p99_ms"] = bare["p99_ms"] if bare else None
        log(f"the bare path at {rate:,}/s: p50 {figure(result['bare_p50_ms'])} ms, "
            f"p99 {figure(result['bare_p99_ms'])} ms")  # fmt: skip
        for key in (
            "aiokafka_events_per_s",
            "faust_floor_events_per_s",
            "quix_events_per_s",
            "floor_events_per_s",
            *MICRO_KEYS,
        ):
            result[key] = None  # unless measured below
        if not args.skip_baselines:
            result["aiokafka_events_per_s"] = bench_aiokafka(
                stack.kafka_bootstrap, settings.topic_clickstream, args.events
            )
            log(f"aiokafka: {result['aiokafka_events_per_s']:,.0f} events/s")
            result["faust_floor_events_per_s"] = bench_faust(
                stack.kafka_bootstrap, settings.topic_clickstream, args.events, run_dir
            )
            log(f"faust floor: {result['faust_floor_events_per_s']:,.0f} events/s")
            result["quix_events_per_s"] = bench_quix(env, args.events, run_dir)
            if result["quix_events_per_s"]:
                log(f"Quix Streams, same workload: {result['quix_events_per_s']:,.0f} events/s")
            floor_n = min(args.events, args.floor_events)
            result["floor_events_per_s"] = transport_floor(settings, floor_n)
            if result["floor_events_per_s"]:
                log(f"transport floor: {result['floor_events_per_s']:,.0f} events/s")
        if not args.no_micro:
            result.update(bench_micro(stack, env, records, run_dir, peers=not args.no_peers))
    result["replay_events_per_s"] = bench_replay()
    result["replay_jobs"] = os.cpu_count() or 1
    result["replay_jobs_events_per_s"] = (
        bench_replay_jobs(result["replay_jobs"]) if result["replay_jobs"] > 1 else None
    )
    result["machine"] = (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    runs = json.loads(args.results.read_text()) if args.results.exists() else []
    runs.append(result)
    args.results.write_text(json.dumps(runs, indent=2) + "\n")
    print_table(result)


def figure(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}" if value < 100 else f"{value:,.0f}"


def ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}"


def print_table(result: dict[str, Any]) -> None:
    """The measured figures, then the verdict as ratios and the latency goal (relative
    to the bare path at the same rate): no absolute targets."""
    rate = result.get("latency_rate")
    at = f"at {rate:,}/s (half capacity)" if rate else "at the offered rate"
    rows = [
        ("events_per_s", "events/s, one worker"),
        ("redis_ceiling_events_per_s", "  one Redis's ceiling, 1e6 / Redis us per event"),
        ("floor_events_per_s", "  one worker's transport floor, events/s"),
        ("p50_ms", f"p50 latency {at}, ms"),
        ("p99_ms", f"p99 latency {at}, ms"),
        ("bare_p99_ms", "  p99 of the bare path at the same rate, ms"),
        ("redis_roundtrips_per_event", "Redis round trips per event"),
        ("redis_cpu_us_per_event", "Redis server CPU per event, us"),
        ("redis_bytes_per_shopper", "Redis bytes per active shopper"),
        ("worker_cpu_us_per_event", "worker process CPU per event, us"),
        ("broker_cpu_us_per_event", "broker (Tansu) CPU per event, us"),
        ("sweep_after_input_s", "sweep's backlog after the last input, s"),
        ("catch_up_s", "catch-up after the jump to live time, s"),
        ("aiokafka_events_per_s", "bare aiokafka consumer, events/s"),
        ("faust_floor_events_per_s", "bare Faust counting agent, events/s"),
        ("quix_events_per_s", "Quix Streams, same workload, events/s"),
        ("replay_events_per_s", "replay (offline), events/s"),
        ("replay_jobs_events_per_s", f"replay, {result.get('replay_jobs')} processes, events/s"),
    ]
    print()
    for key, label in rows:
        print(f"  {label:<50} {figure(result.get(key)):>14}")
    for key, label in (
        ("catch_up_cpu_us_per_change", "CPU per tier change in the catch-up, us"),
        ("latency_cpu_us_per_event", "CPU per event at the offered rate, us"),
    ):
        if result.get(key):
            split = ", ".join(f"{k} {v:,.0f}" for k, v in result[key].items())
            print(f"  {label:<50} {split}")
    print_micro(result)
    worker = result.get("events_per_s")
    print("\n  verdict (ratios)")
    for label, value in (
        ("worker / one Redis's ceiling", ratio(worker, result.get("redis_ceiling_events_per_s"))),
        ("worker / transport floor", ratio(worker, result.get("floor_events_per_s"))),
        ("worker / aiokafka ceiling", ratio(worker, result.get("aiokafka_events_per_s"))),
        ("worker / Faust floor", ratio(worker, result.get("faust_floor_events_per_s"))),
        ("worker / Quix Streams (target >= 1.3)", ratio(worker, result.get("quix_events_per_s"))),
    ):
        print(f"  {label:<50} {value:>14}")
    p99, bare = result.get("p99_ms"), result.get("bare_p99_ms")
    if p99 is not None and bare is not None:
        met = "met" if p99 <= bare + LATENCY_GOAL_MS else "not met"
        goal = f"worker p99 <= bare p99 + {LATENCY_GOAL_MS:g} ms"
        print(f"  {goal:<50} {met:>14}  ({p99:,.1f} against {bare + LATENCY_GOAL_MS:,.1f})")
    print(f"  machine: {result['machine']}")


def print_micro(result: dict[str, Any]) -> None:
    """The micro workload's figures, each peer against our worker, and each output's
    check against the reference."""
    if "micro_reference_events_per_s" not in result:
        return
    ours = result.get("micro_events_per_s")
    print(f"  micro workload ({result['events']:,} events)")
    rows: list[tuple[str, str, str | None]] = [
        ("micro_reference_events_per_s", "reference (one pass, no broker)", None),
        ("micro_events_per_s", "our worker (one rule per type)", "worker"),
        ("micro_quix_events_per_s", "Quix Streams (RocksDB state)", "quix"),
        ("micro_bytewax_events_per_s", "Bytewax (stateful_map, one worker)", "bytewax"),
        ("micro_pathway_events_per_s", "Pathway (stateful reducer, one thread)", "pathway"),
    ]
    checks = result.get("micro_checks") or {}
    for key, label, name in rows:
        value = result.get(key)
        versus = ""
        if name not in (None, "worker") and value:
            versus = f"  ours / {name} {ratio(ours, value)}"
        check = checks.get(name) if name else None
        output = ""
        if check:
            ok = check["exact"] == check["expected"] == check["received"]
            output = (
                "  output exact"
                if ok
                else (
                    f"  output DIFFERS: {check['exact']:,}/{check['expected']:,} exact, "
                    f"{check['reordered']:,} reordered, {check['missing']:,} missing, "
                    f"{check['extra']:,} extra, {check['wrong']:,} wrong"
                )
            )
        print(f"    {label + ', events/s':<48} {figure(value):>14}{versus}{output}")


if __name__ == "__main__":
    main()
