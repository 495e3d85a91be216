"""`intent produce FILE --format F`: send a file's events to the input topic."""

from __future__ import annotations

import io
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import click
from kafka import KafkaProducer
from kafka.errors import KafkaError

from stream.errors import BrokerUnavailable, ConfigError
from stream.offline.files import SHOW_LINE_ERRORS, LineError, read_events
from stream.settings import Settings
from stream.topics import ensure_topics

LINGER_MS: Final = 20
BATCH_BYTES: Final = 256 * 1024


@dataclass
class ProduceReport:
    sent: int = 0
    failed: int = 0
    line_errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


def compression_type(settings: Settings) -> str | None:
    """`INTENT_OUTPUT_COMPRESSION` as the clients' `compression_type` (None: uncompressed)."""
    codec = settings.output_compression
    return None if codec == "none" else codec


def make_producer(settings: Settings) -> KafkaProducer:
    try:
        return KafkaProducer(
            **settings.kafka_options(),
            linger_ms=LINGER_MS,
            batch_size=BATCH_BYTES,
            acks=1,
            # One request in flight: a batch sent again after an error never lands after
            # the next one, so each shopper's events reach the topic in the file's order
            # (`intent replay --order file` computes what a worker then emits). The
            # idempotent producer would allow five, but the embedded broker rejects it.
            max_in_flight_requests_per_connection=1,
            client_id=f"{settings.app_id}-produce",
            # what the worker writes with: gzip, snappy, lz4 or zstd, or none
            compression_type=compression_type(settings),
        )
    except KafkaError as exc:
        raise BrokerUnavailable(
            f"cannot connect to Kafka at {settings.kafka_bootstrap}: {exc}; "
            "is the broker up? (`intent dev --print-env` shows the embedded one)"
            f"{settings.kafka_security_hint()}"
        ) from exc


def produce_file(
    path: Path,
    fmt: str,
    settings: Settings,
    *,
    topic: str | None = None,
    show_progress: bool = True,
) -> ProduceReport:
    ensure_topics(settings)
    target = topic or settings.topic_clickstream
    producer = make_producer(settings)
    report = ProduceReport()
    size = max(path.stat().st_size, 1)
    started = time.monotonic()

    def failed(_: Any) -> None:
        report.failed += 1

    cut: ConfigError | None = None
    try:
        with click.progressbar(
            length=size,
            label=f"producing {path.name}",
            file=None if show_progress else io.StringIO(),
        ) as bar:
            position = 0

            def advance(done: int) -> None:
                nonlocal position
                bar.update(done - position)
                position = done

            for item in read_events(path, fmt, progress=advance):
                if isinstance(item, LineError):
                    report.line_errors[item.reason] += 1
                    if sum(report.line_errors.values()) <= SHOW_LINE_ERRORS:
                        click.echo(f"\nline {item.line_no}: {item.reason}: {item.detail}", err=True)
                    continue
                producer.send(
                    target, key=item.shopper_id.encode(), value=item.to_json()
                ).add_errback(failed)
                report.sent += 1
    except ConfigError as exc:  # the file cannot be opened, or read on (a cut-short gzip)
        cut = exc
    producer.flush()  # what was read before a failure still goes out
    producer.close()
    if cut is not None:
        if not report.sent:
            raise cut
        raise ConfigError(
            f"{cut}; the {report.sent - report.failed:,} events before that point were sent "
            f"to {target}"
        ) from cut
    report.sent -= report.failed
    report.seconds = time.monotonic() - started
    return report
