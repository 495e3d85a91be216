"""`intent dev`: the embedded stack, one worker and demo traffic, with a live view.

Starts what is missing (nothing, when INTENT_KAFKA_BOOTSTRAP and INTENT_REDIS_URL are
set), prints validated events and rejections as the worker emits them, and on Ctrl-C
(or SIGTERM) stops every process it started, in reverse order. A record it cannot read
or print is shown as unreadable (where it is, a short preview), never fatal.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Final, Protocol, TextIO

import click
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from stream.core.ingest import IngestLimits, RawRecord, ingest_limits, ingest_one
from stream.devstack.embedded import EmbeddedStack, redis_binary, spawn, stop_process, tansu_binary
from stream.devstack.produce import compression_type
from stream.settings import Settings
from stream.topics import ensure_topics

DEMO_RATE: Final = 20.0  # events/s: readable in a terminal, enough to exercise every path
WORKER_GRACE_SECONDS: Final = 15.0  # a worker commits offsets and leaves its group on TERM
PREVIEW_BYTES: Final = 60  # of an unreadable record's value, shown


class Record(Protocol):
    """What the live view reads of a consumed record (kafka-python's ConsumerRecord)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def value(self) -> bytes | None: ...


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def export_lines(env: dict[str, str]) -> str:
    return "\n".join(f"export {key}={value}" for key, value in env.items())


def run_dev(
    settings: Settings, *, demo: bool, print_env: bool, rate: float = DEMO_RATE, worker: bool = True
) -> None:
    tansu_binary(), redis_binary()  # both installed? (else a one-line hint, nothing started)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    # The live view is the output here; kafka-python's own chatter (reconnects while the
    # stack stops, the group-less consumer) would only bury it. Errors still surface.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    out = sys.stderr if print_env else sys.stdout
    with ExitStack() as cleanup:
        env = _servers(settings, cleanup, out)
        settings = settings.model_copy(update={"kafka_bootstrap": env["INTENT_KAFKA_BOOTSTRAP"]})
        env_file = settings.run_dir / "env"
        env_file.parent.mkdir(parents=True, exist_ok=True)
        env_file.write_text(export_lines(env) + "\n")
        if print_env:
            click.echo(export_lines(env))
            sys.stdout.flush()
        click.echo(f"settings for another shell: `source {env_file}`", file=out)

        ensure_topics(settings)
        ports = _ports(env)
        env.update(ports)
        proc = None
        if worker:
            worker_log = settings.run_dir / "worker.log"
            proc = spawn(
                [sys.executable, "-m", "stream", "worker"], worker_log, env={**os.environ, **env}
            )
            cleanup.callback(stop_process, proc, WORKER_GRACE_SECONDS)
            click.echo(f"worker started (pid {proc.pid}), log: {worker_log}", file=out)
            click.echo(
                f"metrics: http://127.0.0.1:{ports['INTENT_METRICS_PORT']}/metrics   "
                f"views: http://127.0.0.1:{ports['INTENT_WEB_PORT']}/shoppers/<id>",
                file=out,
            )

        stop = threading.Event()
        if demo:
            thread = threading.Thread(
                target=_demo_loop, args=(settings, rate, stop), name="demo", daemon=True
            )
            thread.start()
            cleanup.callback(thread.join, 5)
            cleanup.callback(stop.set)  # runs first: stop the demo, then wait for it
            click.echo(
                f"demo traffic: ~{rate:.0f} events/s to {settings.topic_clickstream}", file=out
            )
        else:
            click.echo(
                f"no demo traffic: produce to {settings.topic_clickstream} yourself", file=out
            )
        click.echo("Ctrl-C stops everything.\n", file=out)
        try:
            _watch(settings, proc, out)
        except KeyboardInterrupt:
            click.echo("\nstopping ...", file=out)
    click.echo("stopped.", file=out)


def _servers(settings: Settings, cleanup: ExitStack, out: TextIO) -> dict[str, str]:
    given_kafka = os.environ.get("INTENT_KAFKA_BOOTSTRAP")
    given_redis = os.environ.get("INTENT_REDIS_URL")
    if given_kafka and given_redis:
        click.echo(f"using Kafka at {given_kafka} and the configured Redis", file=out)
        return {"INTENT_KAFKA_BOOTSTRAP": given_kafka, "INTENT_REDIS_URL": given_redis}
    stack = EmbeddedStack(Path(settings.run_dir))
    cleanup.callback(stack.stop)
    stack.start()
    click.echo(
        f"embedded stack up: kafka {stack.kafka_bootstrap} (tansu), redis {stack.redis_url}; "
        f"logs in {settings.run_dir}",
        file=out,
    )
    return stack.env()


def _demo_loop(settings: Settings, rate: float, stop: threading.Event) -> None:
    from stream.devstack.demo import traffic

    producer = KafkaProducer(
        **settings.kafka_options(), linger_ms=5, compression_type=compression_type(settings)
    )
    t0 = time.monotonic()
    try:
        for at, key, value in traffic(rate, datetime.now(UTC)):
            delay = t0 + at - time.monotonic()
            if delay > 0 and stop.wait(delay):
                return
            if stop.is_set():
                return
            producer.send(settings.topic_clickstream, key=key, value=value)
    finally:
        producer.close(timeout=2)


def _watch(settings: Settings, worker: subprocess.Popen[bytes] | None, out: TextIO) -> None:
    """Print what the worker emits until interrupted (or the worker dies)."""
    topics = [
        settings.topic_clickstream,
        settings.topic_signals,
        settings.topic_tier_changes,
        settings.topic_cart_recovery,
        settings.topic_dead_letter,
    ]
    consumer = KafkaConsumer(**settings.kafka_options(), consumer_timeout_ms=500)
    partitions = [
        TopicPartition(topic, p)
        for topic in topics
        for p in sorted(consumer.partitions_for_topic(topic) or [])
    ]
    consumer.assign(partitions)
    consumer.seek_to_beginning()
    counts = {"valid": 0, "rejected": 0}
    limits = ingest_limits(settings)
    try:
        while True:
            if worker is not None and worker.poll() is not None:
                raise click.ClickException(
                    f"the worker exited; see {settings.run_dir / 'worker.log'}"
                )
            for batch in consumer.poll(timeout_ms=500).values():
                for record in batch:
                    show(settings, limits, record, counts)
    finally:
        consumer.close()


def show(
    settings: Settings,
    limits: IngestLimits,
    record: Record,
    counts: dict[str, int],
    out: TextIO | None = None,
) -> None:
    """Print one record's line. One that cannot be read or printed (bytes that are not
    UTF-8 JSON, a field missing, a string the output cannot encode, a bug of ours) is
    printed as unreadable instead, and the console goes on with the next."""
    try:
        line = _describe(settings, limits, record.topic, record.value, counts)
        if line is not None:
            click.echo(line, file=out)
    except Exception as exc:
        counts["unreadable"] = counts.get("unreadable", 0) + 1
        # ASCII only: whatever broke the record's line cannot break this one; only the
        # output itself failing (a closed pipe) stops the console
        click.echo(click.style(_unreadable(record, exc), fg="yellow"), file=out)


def _unreadable(record: Record, exc: Exception) -> str:
    def ascii_only(text: str) -> str:
        return text.encode("ascii", "backslashreplace").decode("ascii")

    value = record.value
    if value is None:
        preview = "no value"
    else:
        cut = "..." if len(value) > PREVIEW_BYTES else ""
        preview = f"{len(value):,} bytes {value[:PREVIEW_BYTES]!r}{cut}"
    reason = (str(exc).splitlines() or [""])[0][:100]
    return ascii_only(
        f"  unreadable   {record.topic}[{record.partition}]@{record.offset}: "
        f"{type(exc).__name__}: {reason}; {preview}"
    )


def _describe(
    settings: Settings,
    limits: IngestLimits,
    topic: str,
    value: bytes | None,
    counts: dict[str, int],
) -> str | None:
    """One line per record; input as the worker normalises it (None if it rejects it:
    its dead letter gets the line). The worker detects most events without passing them
    through intent.events, so the input is read from the clickstream. Raises on a record
    it cannot read (`show` prints it as unreadable)."""
    if value is None:
        raise ValueError("a record without a value")
    if topic == settings.topic_clickstream:
        try:
            event = ingest_one(RawRecord(value), datetime.now(UTC), limits)
        except Exception:  # InvalidEvent, or a bug of ours: the worker dead-letters it
            return None
        value = event.to_json()
    data = json.loads(value)
    if topic == settings.topic_dead_letter:
        counts["rejected"] += 1
        return click.style(
            f"  dead-letter  {data['reason']:<20} {data['detail'][:70]}", fg="yellow"
        )
    if topic == settings.topic_tier_changes:
        top = ", ".join(f"{x['name']} {x['points']:.0f}" for x in data["signals"][:3])
        if data.get("merged_with"):
            top = f"with {data['merged_with']}" + (f": {top}" if top else "")
        return click.style(
            f"  {data['at'][11:19]}  {data['shopper_id']:<10} TIER {data['from_tier']:>10} -> "
            f"{data['to_tier']:<10} score {data['score']:6.1f}  {data['reason']:<11} {top}",
            fg="magenta",
            bold=True,
        )
    if topic == settings.topic_cart_recovery:
        items = ", ".join(i["sku"] for i in data["cart"]["items"])
        return click.style(
            f"  {data['at'][11:19]}  {data['shopper_id']:<10} CART RECOVERY  {items} "
            f"(value {data['cart']['value']})",
            fg="cyan",
            bold=True,
        )
    if topic == settings.topic_signals:
        counts["signals"] = counts.get("signals", 0) + 1
        scope = data.get("suppression", {}).get("scope")
        what = f"suppress {scope}" if scope else f"{data['points']:+.0f} pts"
        hint = f" ({data['tier_hint']})" if data.get("tier_hint") else ""
        return click.style(
            f"  {data['at'][11:19]}  {data['shopper_id']:<10} SIGNAL {data['rule_id']:<32} "
            f"{what}{hint}",
            fg="red" if scope else "green",
            bold=True,
        )
    counts["valid"] += 1
    product = data.get("product") or {}
    page = (data.get("page") or {}).get("type", "")
    what = " ".join(x for x in (page, product.get("sku", ""), product.get("category", "")) if x)
    if data.get("anonymous_id"):
        what = " ".join(x for x in (what, f"(was {data['anonymous_id']})") if x)
    return (
        f"  {data['ts'][11:19]}  {data['shopper_id']:<10} {data['type']:<18} {what:<40} "
        f"[{data.get('source', 'canonical')}]  #{counts['valid']}"
    )


def _ports(env: dict[str, str]) -> dict[str, str]:
    """The worker's metrics and views ports: as configured, else the defaults when free,
    else free ones (so a second `intent dev` on the same machine still starts)."""
    from stream.devstack.embedded import free_port, port_is_free

    out = {}
    for name, default in (("INTENT_METRICS_PORT", 9108), ("INTENT_WEB_PORT", 6066)):
        given = os.environ.get(name)
        port = int(given) if given else (default if port_is_free(default) else free_port())
        out[name] = str(port)
    return out
