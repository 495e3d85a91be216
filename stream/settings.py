"""All settings, from the environment (prefix `INTENT_`), in one frozen class.

The README's configuration table lists every field here; a unit test keeps the two in step.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INTENT_", frozen=True, extra="ignore")

    # --- servers ---------------------------------------------------------------------
    kafka_bootstrap: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers, comma separated host:port."
    )
    redis_url: SecretStr = Field(
        SecretStr("redis://127.0.0.1:6379/0"), description="Redis URL (may hold a password)."
    )
    rules: Path | None = Field(
        None, description="Path to a rules file; the built-in default playbook when unset."
    )
    allowed_lateness_seconds: float | None = Field(
        None,
        ge=0,
        description="Overrides the rules file's defaults.allowed_lateness (5 min), "
        "for the worker and intent replay alike.",
    )
    sweep_interval_seconds: float = Field(
        1.0, gt=0, description="How often the timer fires due absence deadlines and visit ends."
    )
    idle_grace_seconds: float = Field(
        1.0,
        gt=0,
        description="A partition this long without input (and read to its end) is idle: "
        "the timer fires up to the wall clock there, not its newest event time.",
    )
    web_port: int = Field(
        6066, ge=0, le=65535, description="Port of the HTTP views /shoppers, /audiences (0: off)."
    )
    metrics_port: int = Field(9108, ge=0, le=65535, description="Port of /metrics (0 disables).")
    app_id: str = Field("intent", description="Faust app id: the consumer group and table prefix.")
    partitions: int = Field(
        8, ge=1, le=256, description="Partitions of every topic created (cap on workers)."
    )
    # --- topics (CONTRACT.md) -------------------------------------------------------------
    topic_clickstream: str = Field("clickstream.events", description="Input clickstream topic.")
    topic_normalised: str = Field(
        "intent.events", description="Internal: validated canonical events keyed by shopper."
    )
    topic_signals: str = Field("intent.signals", description="Internal: detected intent signals.")
    topic_tier_changes: str = Field("intent.tier-changes", description="Every tier transition.")
    topic_retargeting: str = Field(
        "intent.actions.retargeting", description="Audience membership changes."
    )
    topic_cart_recovery: str = Field(
        "intent.actions.cart-recovery", description="Abandoned-checkout triggers with the cart."
    )
    topic_nurture: str = Field("intent.actions.nurture", description="Mid/low content actions.")
    topic_suppression: str = Field(
        "intent.actions.suppression", description="Suppress/unsuppress records with scope."
    )
    topic_dead_letter: str = Field(
        "intent.dead-letter", description="Rejected input: original bytes plus the reason."
    )
    # --- ingest ----------------------------------------------------------------------
    max_event_bytes: int = Field(
        64 * 1024, ge=256, description="Payloads larger than this are dead-lettered (oversized)."
    )
    max_clock_skew_seconds: float = Field(
        300.0, ge=0, description="Events stamped further than this in the future are rejected."
    )
    batch_size: int = Field(
        2000, ge=1, description="Most records the stream loop takes from Kafka in one batch."
    )
    batch_window_seconds: float = Field(
        0.005, gt=0, description="Longest wait to fill a batch before it is processed."
    )
    always_repartition: bool = Field(
        False,
        description="Send every event through intent.events; off: an event whose "
        "intent.events partition this worker owns, read to its end, is detected at once.",
    )
    # --- consumer group timing (FIELD-NOTES: seconds to start and fail over, not minutes)
    session_timeout_seconds: float = Field(
        6.0, gt=0, description="Kafka consumer session timeout; failover takes about twice this."
    )
    heartbeat_interval_seconds: float = Field(1.0, gt=0, description="Kafka consumer heartbeat.")
    # --- embedded stack ----------------------------------------------------------------
    run_dir: Path = Field(
        Path(".intent/run"), description="Where `intent dev` keeps server logs and data."
    )
    data_dir: Path = Field(
        Path(".intent/data"),
        description="The worker's local Faust directory; one subdirectory per app id.",
    )

    def topic_names(self) -> dict[str, str]:
        """Every topic the processor uses, by setting name."""
        return {
            name: str(getattr(self, name))
            for name in type(self).model_fields
            if name.startswith("topic_")
        }

    @property
    def stream_group(self) -> str:
        """The stream loop's consumer group: it commits each batch once processed."""
        return f"{self.app_id}-stream"

    @property
    def bootstrap_servers(self) -> list[str]:
        return [server.strip() for server in self.kafka_bootstrap.split(",") if server.strip()]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()
