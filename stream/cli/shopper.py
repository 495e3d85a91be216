"""`intent shopper`: one shopper's profile, read from Redis."""

from __future__ import annotations

from typing import Any

import click

from stream.cli.common import (
    _redis,
    _run_redis,
    _settings,
)


@click.command()
@click.argument("shopper_id")
def shopper(shopper_id: str) -> None:
    """Print a shopper's current score, tier, suppression and top contributing signals."""
    import asyncio
    import json as _json
    import time

    from stream.state.store import StateReader
    from stream.worker.views import read_shopper

    settings = _settings()

    async def read() -> dict[str, Any]:
        client = _redis(settings)
        try:
            reader = StateReader(client, settings.app_id, settings.partitions)
            return await read_shopper(reader, shopper_id, time.time())
        finally:
            await client.aclose()

    view = _run_redis(settings, asyncio.run, read())
    click.echo(_json.dumps(view, indent=2))
