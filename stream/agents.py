"""Faust agents: decode, call the pure core, write, send. Nothing else happens here.

Each agent takes batches (`take_events`) so every downstream step works on a list, and
catches per-batch errors itself: Faust acks an event even when the agent raises, so an
exception that escaped would lose the batch silently.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import faust

from schemas import errors
from stream.clock import Clock, utc_now
from stream.ingest import IngestLimits, IngestResult, RawRecord, Rejection, ingest_batch
from stream.metrics import Metrics
from stream.settings import Settings

log = logging.getLogger(__name__)


def raw_topic(app: faust.App, name: str, settings: Settings) -> Any:
    """A topic of raw bytes: decoding happens once, in `stream.ingest`, never in Faust."""
    return app.topic(
        name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
    )


class Pipeline:
    """The topics and the ingest step of one app, wired to its settings and metrics."""

    def __init__(
        self, app: faust.App, settings: Settings, metrics: Metrics, clock: Clock = utc_now
    ) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.limits = IngestLimits(
            max_bytes=settings.max_event_bytes,
            max_skew=timedelta(seconds=settings.max_clock_skew_seconds),
        )
        self.clickstream = raw_topic(app, settings.topic_clickstream, settings)
        self.normalised = raw_topic(app, settings.topic_normalised, settings)
        self.dead_letter = raw_topic(app, settings.topic_dead_letter, settings)
        app.agent(self.clickstream, name="ingest")(self.ingest)

    async def ingest(self, stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        # take_events is faust-streaming >= 0.10; its stubs do not declare it.
        async for batch in stream.take_events(  # type: ignore[attr-defined]
            self.settings.batch_size, within=self.settings.batch_window_seconds
        ):
            records = [
                RawRecord(
                    value=event.message.value,
                    key=event.message.key,
                    topic=event.message.topic,
                    partition=event.message.partition,
                    offset=event.message.offset,
                )
                for event in batch
            ]
            self.metrics.batch_size.labels("ingest").observe(len(records))
            try:
                result = ingest_batch(records, self.clock(), self.limits)
            except Exception as exc:  # ingest_batch never raises; this guards a regression
                log.exception("ingest batch failed; dead-lettering all %d records", len(records))
                detail = f"{type(exc).__name__}: {exc}"
                result = IngestResult(
                    rejected=[Rejection(r, errors.PROCESSING_ERROR, detail) for r in records]
                )
            await self.publish(result)
            yield None

    async def publish(self, result: IngestResult) -> None:
        for event in result.events:
            self.metrics.events_consumed.labels(event.type, event.source).inc()
            await self.normalised.send(key=event.shopper_id.encode(), value=event.to_json())
        if result.rejected:
            now = self.clock()
            for rejection in result.rejected:
                self.metrics.events_rejected.labels(rejection.reason).inc()
                await self.dead_letter.send(
                    key=rejection.record.key,
                    value=rejection.dead_letter(now),
                    headers={"intent-reason": rejection.reason.encode()},
                )
