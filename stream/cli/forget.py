"""`intent forget`: erase one shopper, through the worker that owns it."""

from __future__ import annotations

import sys
import time

import click

from stream.cli.common import (
    _redis,
    _run_redis,
    _settings,
)


@click.command()
@click.argument("shopper_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--wait",
    "wait_seconds",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds to wait for a worker to apply the forget (0: do not wait).",
)
def forget(shopper_id: str, yes: bool, wait_seconds: float) -> None:
    """Erase everything stored about a shopper (right to erasure), and tell downstream.

    The request goes to the worker that owns the shopper, on intent.events, in order with
    the shopper's events: it erases the shopper's state, audiences and tier there, drops
    the shopper's events from before the request, and sends `forget` records to the
    suppression topic and the signals audit topic. No batch in flight can undo it."""
    import asyncio

    from kafka import KafkaProducer

    from stream.devstack.produce import compression_type
    from stream.state.store import StateReader
    from stream.topics import ensure_topics
    from stream.worker.pipeline import FORGET_HEADERS, forget_request

    settings = _settings()
    if not yes and sys.stdin.isatty():
        click.confirm(f"Erase every record of shopper {shopper_id!r}?", abort=True)
    at = time.time()
    ensure_topics(settings)
    producer = KafkaProducer(
        **settings.kafka_options(), compression_type=compression_type(settings)
    )
    producer.send(
        settings.topic_normalised,
        key=shopper_id.encode(),
        value=forget_request(shopper_id, at),
        headers=list(FORGET_HEADERS),
    ).get(30)
    producer.close()
    click.echo(f"asked the owner of {shopper_id} to forget it (on {settings.topic_normalised})")
    if wait_seconds <= 0:
        return

    async def applied() -> bool:
        client = _redis(settings)
        reader = StateReader(client, settings.app_id, settings.partitions)
        try:
            deadline = time.monotonic() + wait_seconds
            while time.monotonic() < deadline:
                record = await reader.record(shopper_id)
                if record is not None and (record.forgotten or 0.0) >= at:
                    return True
                await asyncio.sleep(0.2)
            return False
        finally:
            await client.aclose()

    if _run_redis(settings, asyncio.run, applied()):
        click.echo(
            f"forgot {shopper_id}: its state, tier and audiences are erased; told "
            f"{settings.topic_suppression} and {settings.topic_signals}"
        )
        return
    raise click.ClickException(
        f"no worker applied the forget within {wait_seconds:.0f} s; it stays queued on "
        f"{settings.topic_normalised} and is applied when a worker runs"
    )
