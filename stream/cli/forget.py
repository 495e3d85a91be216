"""`intent forget`: erase one shopper."""

from __future__ import annotations

import sys

import click

from stream.cli.common import (
    _redis,
    _run_redis,
    _settings,
)


@click.command()
@click.argument("shopper_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def forget(shopper_id: str, yes: bool) -> None:
    """Erase everything stored about a shopper (right to erasure), and tell downstream."""
    import asyncio
    from datetime import UTC, datetime

    from kafka import KafkaProducer

    from schemas.outputs import SuppressionRecord
    from stream.devstack.produce import compression_type
    from stream.state.erase import forget as erase
    from stream.topics import ensure_topics

    settings = _settings()
    if not yes and sys.stdin.isatty():
        click.confirm(f"Erase every record of shopper {shopper_id!r}?", abort=True)

    now = datetime.now(UTC)

    async def run() -> dict[str, int]:
        client = _redis(settings)
        try:
            return await erase(
                client, settings.app_id, shopper_id, settings.partitions, now.timestamp()
            )
        finally:
            await client.aclose()

    removed = _run_redis(settings, asyncio.run, run())
    record = SuppressionRecord(
        record_id=f"{shopper_id}:forget:{now.timestamp():.3f}", shopper_id=shopper_id,
        op="forget", scope="shopper", at=now,
    )  # fmt: skip
    ensure_topics(settings)
    producer = KafkaProducer(
        **settings.kafka_options(), compression_type=compression_type(settings)
    )
    # The suppression topic's readers stop marketing; the signals audit topic's readers
    # (warehouses, feature stores) delete what they hold: there the record is marked by
    # its header, as every other record of that topic is a signal.
    key, value = shopper_id.encode(), record.to_json()
    sent = [
        producer.send(settings.topic_suppression, key=key, value=value),
        producer.send(settings.topic_signals, key=key, value=value, headers=FORGET_HEADERS),
    ]
    for future in sent:
        future.get(30)
    producer.close()
    click.echo(
        f"forgot {shopper_id}: {removed['keys']} keys, {removed['index']} index entries, "
        f"{removed['audiences']} audience memberships; told {settings.topic_suppression} "
        f"and {settings.topic_signals}"
    )


FORGET_HEADERS = [("intent-kind", b"forget")]
