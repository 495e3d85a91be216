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
    suppression topic and the signals audit topic. No batch in flight can undo it.

    A profile's merged ids go with it: forgetting a known id erases every anonymous id
    merged into it, and forgetting a merged anonymous id erases its profile."""
    import asyncio

    from kafka import KafkaProducer

    from stream.devstack.produce import compression_type
    from stream.state.store import StateReader
    from stream.topics import ensure_topics
    from stream.worker.control import FORGET_HEADERS, forget_request

    settings = _settings()
    if not yes and sys.stdin.isatty():
        click.confirm(f"Erase every record of shopper {shopper_id!r}?", abort=True)

    async def merged() -> list[str]:
        client = _redis(settings)
        try:
            reader = StateReader(client, settings.app_id, settings.partitions)
            record = await reader.record(shopper_id)
            identity = (record.identity if record is not None else None) or {}
            ids = sorted(identity.get("ids", {}))
            return [str(identity["into"][0]), *ids] if identity.get("into") else ids
        finally:
            await client.aclose()

    linked = _run_redis(settings, asyncio.run, merged())  # before the forget clears them
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

    async def applied() -> list[str] | None:
        """Every id erased (the shopper's, then those merged with it), or None."""
        client = _redis(settings)
        reader = StateReader(client, settings.app_id, settings.partitions)
        try:
            deadline = time.monotonic() + wait_seconds
            done: list[str] = []
            waiting = [shopper_id]
            while time.monotonic() < deadline:
                shopper = waiting[0]
                record = await reader.record(shopper)
                if record is not None and (record.forgotten or 0.0) >= at:
                    done.append(shopper)
                    waiting.pop(0)
                    if shopper == shopper_id:  # its merged ids, as read before the forget
                        waiting += [i for i in linked if i not in done]
                    if not waiting:
                        return done
                    continue
                await asyncio.sleep(0.2)
            return None
        finally:
            await client.aclose()

    erased = _run_redis(settings, asyncio.run, applied())
    if erased is not None:
        what = f"forgot {shopper_id}: its state, tier and audiences are erased"
        if erased[1:]:
            what = (
                f"forgot {shopper_id} and the ids merged with it ({', '.join(erased[1:])}): "
                "their state, tiers and audiences are erased"
            )
        click.echo(f"{what}; told {settings.topic_suppression} and {settings.topic_signals}")
        return
    raise click.ClickException(
        f"no worker applied the forget within {wait_seconds:.0f} s; it stays queued on "
        f"{settings.topic_normalised} and is applied when a worker runs"
    )
