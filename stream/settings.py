"""All settings, from the environment (prefix `INTENT_`), in one frozen class.

The README's configuration table lists every field here; a unit test keeps them in step.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import Field, FilePath, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.outputs import OutputTopic

MIN_TOKEN_CHARS: Final = 16
# RFC 6750's b64token: what an `Authorization: Bearer` header can carry as it is.
_B64TOKEN: Final = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def is_loopback(host: str) -> bool:
    """Whether a bind address reaches this machine only. A host name other than
    `localhost` counts as open: what it resolves to is not known here."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INTENT_", frozen=True, extra="ignore")

    # --- servers ---------------------------------------------------------------------
    kafka_bootstrap: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers, comma separated host:port."
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT",
        description="How every Kafka client connects: SSL (TLS), SASL_SSL (TLS and a "
        "username/password: Confluent Cloud, MSK, Aiven), SASL_PLAINTEXT, or PLAINTEXT.",
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", description="SASL mechanism, for the SASL_ protocols."
    )
    kafka_sasl_username: str | None = Field(
        None, description="SASL username (Confluent Cloud: the API key); SASL_ protocols."
    )
    kafka_sasl_password: SecretStr | None = Field(
        None, description="SASL password (Confluent Cloud: the API secret); SASL_ protocols."
    )
    kafka_ssl_cafile: FilePath | None = Field(
        None,
        description="CA certificates (PEM) that sign the brokers' certificates; the "
        "system's trusted CAs when unset. For the SSL protocols.",
    )
    kafka_ssl_certfile: FilePath | None = Field(
        None, description="Client certificate (PEM) for brokers that require one (mutual TLS)."
    )
    kafka_ssl_keyfile: FilePath | None = Field(
        None, description="The client certificate's private key (PEM), unless in the certfile."
    )
    redis_url: SecretStr = Field(
        SecretStr("redis://127.0.0.1:6379/0"),
        description="Redis URL: redis://[user:password@]host:port/db, rediss:// for TLS.",
    )
    redis_ssl_cafile: FilePath | None = Field(
        None,
        description="CA certificates (PEM) that sign the Redis server's certificate; the "
        "system's trusted CAs when unset. For rediss:// URLs.",
    )
    redis_ssl_certfile: FilePath | None = Field(
        None, description="Client certificate (PEM) for a Redis that requires one (mutual TLS)."
    )
    redis_ssl_keyfile: FilePath | None = Field(
        None,
        description="The Redis client certificate's private key (PEM), unless in the certfile.",
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
    web_host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Address the HTTP views listen on; 0.0.0.0 (all interfaces) needs "
        "INTENT_API_TOKEN or INTENT_ALLOW_OPEN_VIEWS.",
    )
    api_token: SecretStr | None = Field(
        None,
        description="Bearer token the HTTP views require (Authorization: Bearer <token>); "
        "unset: no token asked.",
    )
    allow_open_views: bool = Field(
        False,
        description="Serve the views without a token on an address that is not loopback "
        "(a warning at start).",
    )
    max_page_size: int = Field(
        1000, ge=1, description="Largest `count` of GET /audiences/{name}; a bigger one is a 400."
    )
    metrics_port: int = Field(9108, ge=0, le=65535, description="Port of /metrics (0 disables).")
    app_id: str = Field("intent", description="Faust app id: the consumer group and table prefix.")
    partitions: int = Field(
        8, ge=1, le=256, description="Partitions of every topic created (cap on workers)."
    )
    state_cache_shoppers: int = Field(
        100_000,
        ge=1,
        description="Shoppers whose state a worker keeps in memory (LRU); the rest are read "
        "from Redis when their next event comes.",
    )
    identity_max_ids: int = Field(
        20,
        ge=1,
        description="Anonymous ids one known profile takes at most; past it a merge is "
        "refused (a shared device must not glue shoppers together), counted and logged.",
    )
    identity_ttl_seconds: float = Field(
        90 * 86400.0,
        gt=0,
        description="How long a merged id is remembered without activity: the redirect "
        "of an anonymous id to its profile, and the profile's list of merged ids.",
    )
    # --- topics (public names: docs/architecture.md, "Topics") ---------------------------
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
    max_json_depth: int = Field(
        20, ge=2, le=500, description="Deepest nesting of objects and lists in an input record."
    )
    max_string_chars: int = Field(
        8192, ge=64, description="Longest string anywhere in an input record, in characters."
    )
    max_list_items: int = Field(
        1000, ge=1, description="Most items of any list in an input record (products, items)."
    )
    max_number: float = Field(
        1e18, gt=0, description="Largest magnitude of any number in an input record."
    )
    max_quantity: int = Field(
        100_000, ge=1, description="Largest product quantity; a bigger one is out_of_bounds."
    )
    max_price: float = Field(
        1e10, gt=0, description="Largest product price; a bigger one is out_of_bounds."
    )
    min_event_time: datetime = Field(
        datetime(2000, 1, 1, tzinfo=UTC),
        description="Events stamped before this are rejected as out_of_bounds.",
    )
    dead_letter_max_bytes: int = Field(
        1_000_000,
        ge=4096,
        le=1_000_000,  # the stream's producer batches hold 1 MiB; Kafka's default limit
        description="Largest dead-letter record: keep it under the broker's message.max.bytes; "
        "an original too big to carry whole is carried as a prefix with its size and SHA-256.",
    )
    batch_size: int = Field(
        2000, ge=1, description="Most records the stream loop takes from Kafka in one batch."
    )
    batch_window_seconds: float = Field(
        0.005, gt=0, description="Longest wait to fill a batch before it is processed."
    )
    start_from_empty_redis: bool = Field(
        False,
        description="Start even though Redis lost the deployment's state (its mark is "
        "gone, the group has committed): scores start from nothing, suppressions are "
        "rebuilt from the suppression topic. Off: the worker refuses to start.",
    )
    always_repartition: bool = Field(
        False,
        description="Send every event through intent.events; off: an event whose "
        "intent.events partition this worker owns, read to its end, is detected at once.",
    )
    output_compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        "none",
        description="Compression of every record the worker writes (the input may use any "
        "codec: all four are read).",
    )
    # --- consumer group timing (measured: seconds to start and fail over, not minutes)
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

    @model_validator(mode="after")
    def _kafka_security_is_complete(self) -> Settings:
        protocol = self.kafka_security_protocol
        if protocol.startswith("SASL_") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                f"INTENT_KAFKA_SECURITY_PROTOCOL={protocol} needs INTENT_KAFKA_SASL_USERNAME "
                "and INTENT_KAFKA_SASL_PASSWORD"
            )
        tls = (self.kafka_ssl_cafile, self.kafka_ssl_certfile, self.kafka_ssl_keyfile)
        if not protocol.endswith("SSL") and any(tls):
            raise ValueError(
                "INTENT_KAFKA_SSL_* files are set but INTENT_KAFKA_SECURITY_PROTOCOL is "
                f"{protocol}: set it to SSL or SASL_SSL to connect with TLS"
            )
        if self.kafka_ssl_keyfile and not self.kafka_ssl_certfile:
            raise ValueError("INTENT_KAFKA_SSL_KEYFILE needs INTENT_KAFKA_SSL_CERTFILE")
        return self

    @model_validator(mode="after")
    def _redis_security_is_complete(self) -> Settings:
        scheme = self.redis_url.get_secret_value().partition("://")[0].lower()
        if scheme not in ("redis", "rediss", "unix"):
            # (the URL itself is not repeated: it may hold a password)
            raise ValueError("INTENT_REDIS_URL must start with redis://, rediss:// or unix://")
        tls = (self.redis_ssl_cafile, self.redis_ssl_certfile, self.redis_ssl_keyfile)
        if scheme != "rediss" and any(tls):
            raise ValueError(
                "INTENT_REDIS_SSL_* files are set but INTENT_REDIS_URL is not a rediss:// "
                "URL: start it with rediss:// to connect with TLS"
            )
        if self.redis_ssl_keyfile and not self.redis_ssl_certfile:
            raise ValueError("INTENT_REDIS_SSL_KEYFILE needs INTENT_REDIS_SSL_CERTFILE")
        return self

    @field_validator("api_token")
    @classmethod
    def _token_is_usable(cls, token: SecretStr | None) -> SecretStr | None:
        if token is None:
            return None
        value = token.get_secret_value()
        if len(value) < MIN_TOKEN_CHARS:
            raise ValueError(
                f"at least {MIN_TOKEN_CHARS} characters (for example `openssl rand -hex 32`)"
            )
        if not _B64TOKEN.fullmatch(value):
            raise ValueError(
                "letters, digits and - . _ ~ + / only, then any = (what a Bearer header carries)"
            )
        return token

    @model_validator(mode="after")
    def _views_are_not_open_to_the_network(self) -> Settings:
        if self.open_views and not self.allow_open_views:
            raise ValueError(
                f"INTENT_WEB_HOST={self.web_host} would serve shopper profiles to the "
                "network without a token: set INTENT_API_TOKEN, or "
                "INTENT_ALLOW_OPEN_VIEWS=true to serve them open"
            )
        return self

    @property
    def open_views(self) -> bool:
        """The views answer anyone who reaches them, beyond this machine (allowed by
        INTENT_ALLOW_OPEN_VIEWS: the worker warns at start)."""
        return bool(self.web_port) and not self.api_token and not is_loopback(self.web_host)

    def redis_options(self) -> dict[str, Any]:
        """Keyword arguments of redis-py's `from_url` (either client, sync or asyncio) for
        the TLS settings; user and password travel in the URL. A rediss:// connection
        verifies the server's certificate and host name, whatever redis-py's defaults."""
        if not self.redis_url.get_secret_value().lower().startswith("rediss://"):
            return {}
        options: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
        if self.redis_ssl_cafile:
            options["ssl_ca_certs"] = str(self.redis_ssl_cafile)
        if self.redis_ssl_certfile:
            options["ssl_certfile"] = str(self.redis_ssl_certfile)
        if self.redis_ssl_keyfile:
            options["ssl_keyfile"] = str(self.redis_ssl_keyfile)
        return options

    def kafka_ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of every Kafka client (None: the protocol uses no TLS). It
        verifies the brokers' certificates and host names."""
        if not self.kafka_security_protocol.endswith("SSL"):
            return None
        context = ssl.create_default_context(
            cafile=str(self.kafka_ssl_cafile) if self.kafka_ssl_cafile else None
        )
        if self.kafka_ssl_certfile:
            context.load_cert_chain(
                str(self.kafka_ssl_certfile),
                str(self.kafka_ssl_keyfile) if self.kafka_ssl_keyfile else None,
            )
        return context

    def kafka_options(self) -> dict[str, Any]:
        """Where and how every Kafka client connects: keyword arguments that
        kafka-python's and aiokafka's producers, consumers and admin clients all take."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.kafka_security_protocol,
        }
        context = self.kafka_ssl_context()
        if context is not None:
            options["ssl_context"] = context
        if self.kafka_security_protocol.startswith("SASL_"):
            assert self.kafka_sasl_password is not None  # the validator saw to it
            options["sasl_mechanism"] = self.kafka_sasl_mechanism
            options["sasl_plain_username"] = self.kafka_sasl_username
            options["sasl_plain_password"] = self.kafka_sasl_password.get_secret_value()
        return options

    def kafka_security_hint(self) -> str:
        """What to check when the brokers do not answer, beyond their address."""
        protocol = self.kafka_security_protocol
        if protocol == "PLAINTEXT":
            return ""
        checks = ["that the brokers take " + protocol]
        if protocol.endswith("SSL"):
            checks.append("INTENT_KAFKA_SSL_CAFILE (the CA that signed their certificates)")
        if protocol.startswith("SASL_"):
            checks.append(f"the {self.kafka_sasl_mechanism} username and password")
        return "; check " + ", ".join(checks)

    def topic_names(self) -> dict[str, str]:
        """Every topic the processor uses, by setting name."""
        return {
            name: str(getattr(self, name))
            for name in type(self).model_fields
            if name.startswith("topic_")
        }

    def output_topics(self) -> dict[OutputTopic, str]:
        """The topic each kind of output goes to."""
        return {
            OutputTopic.TIER_CHANGES: self.topic_tier_changes,
            OutputTopic.RETARGETING: self.topic_retargeting,
            OutputTopic.CART_RECOVERY: self.topic_cart_recovery,
            OutputTopic.NURTURE: self.topic_nurture,
            OutputTopic.SUPPRESSION: self.topic_suppression,
        }

    @property
    def stream_group(self) -> str:
        """The stream loop's consumer group: it commits each batch once processed."""
        return f"{self.app_id}-stream"

    @property
    def bootstrap_servers(self) -> list[str]:
        return [server.strip() for server in self.kafka_bootstrap.split(",") if server.strip()]


def url_without_credentials(url: str) -> str:
    """A URL (Redis's) without the user and password it may hold, to name it in messages."""
    scheme, _, rest = url.rpartition("://")
    return f"{scheme}://{rest.split('@')[-1]}" if scheme else rest.split("@")[-1]


def redis_hint(exc: BaseException) -> str:
    """What to check when Redis turned a client away for its settings rather than for
    being down: the user and password, the ACL, or TLS."""
    from redis.exceptions import AuthenticationError, NoPermissionError

    if isinstance(exc, AuthenticationError):
        return "; check the user and password in the Redis URL (INTENT_REDIS_URL)"
    if isinstance(exc, NoPermissionError):
        return "; the Redis user's ACL does not allow a command the processor needs"
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return (
                "; check that the server speaks TLS on that port and INTENT_REDIS_SSL_CAFILE "
                "(the CA that signed its certificate)"
            )
        cause = cause.__cause__ or cause.__context__
    return ""


def get_settings() -> Settings:
    """The settings, read from the environment now: a command that runs sees the
    environment it was started with, never one cached by an earlier command."""
    return Settings()
