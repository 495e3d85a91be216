"""State written straight into Redis in the worker's layout, for tests of what reads it
(the views, `intent shopper`): a scored shopper, an audience."""

from __future__ import annotations

from typing import Any

from stream.core import scoring
from stream.core.detectors.engine import Engine
from stream.core.scoring import ScoreConfig, ScoreSignal
from stream.state.records import Keys, Record, encode
from stream.state.store import partition_of


async def seed_shopper(
    client: Any,
    app_id: str,
    partitions: int,
    shopper: str,
    signals: list[ScoreSignal],
    now: float,
    cfg: ScoreConfig,
) -> None:
    """The shopper's record after these signals, scored as the worker scores them."""
    score = scoring.new_state()
    scoring.apply(score, signals, now, cfg)
    key = Keys(app_id).record(partition_of(shopper, partitions), shopper)
    await client.set(key, encode(Record(Engine.new_state(), score)))


async def seed_audience(
    client: Any, app_id: str, partitions: int, name: str, members: list[str]
) -> None:
    """An audience's members, each in its partition's set."""
    keys = Keys(app_id)
    for member in members:
        await client.sadd(keys.audience(partition_of(member, partitions), name), member)
