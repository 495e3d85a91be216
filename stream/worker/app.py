"""Builds the Faust app: broker, group timing, partitions. The stream: `stream.worker`."""

from __future__ import annotations

from typing import Any

import faust
from faust.app.base import BootStrategy

from stream.settings import Settings


class StreamBoot(BootStrategy):
    """Faust's own consumer, topic conductor and tables stay off: the hot topics are read
    in batches by `stream.worker.pipeline.StreamLoop`, a service of this app (see its docstring
    for why). The worker, web server, views and timer are Faust's as usual."""

    enable_kafka_consumer = False


class IntentApp(faust.App):
    BootStrategy = StreamBoot
    #: What `create_app` made it from: the views take their token and page cap here.
    intent_settings: Settings


def app_settings(app: faust.App) -> Settings:
    """The settings `app` was created with (by `create_app`)."""
    settings = getattr(app, "intent_settings", None)
    if not isinstance(settings, Settings):
        raise TypeError(f"{app!r} was not made by stream.worker.app.create_app")
    return settings


def faust_credentials(settings: Settings) -> faust.SSLCredentials | faust.SASLCredentials | None:
    """The Kafka security settings in Faust's terms (its clients connect as ours do)."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = settings.kafka_ssl_context()
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    assert settings.kafka_sasl_password is not None  # Settings' validator saw to it
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username,
        password=settings.kafka_sasl_password.get_secret_value(),
        ssl_context=context,  # None: SASL_PLAINTEXT
        mechanism=settings.kafka_sasl_mechanism,
    )


def create_app(settings: Settings, **overrides: Any) -> faust.App:
    config: dict[str, Any] = {
        "broker": [f"kafka://{server}" for server in settings.bootstrap_servers],
        "broker_credentials": faust_credentials(settings),
        "store": "memory://",
        # Faust's default is "<app id>-data" in the working directory.
        "datadir": str(settings.data_dir / settings.app_id),
        "topic_partitions": settings.partitions,
        # Measured on the embedded broker: Faust's 60 s session means a 30 s start and ~90 s
        # failover; 6 s / 1 s gives ~5 s and ~10 s and stays stable.
        "broker_session_timeout": settings.session_timeout_seconds,
        "broker_heartbeat_interval": settings.heartbeat_interval_seconds,
        "consumer_auto_offset_reset": "earliest",
        # exactly_once crashes the worker at start-up on the embedded broker (it rejects the
        # idempotent/transactional producer); every effect is idempotent instead.
        "processing_guarantee": "at_least_once",
        "topic_disable_leader": True,
        "web_enabled": settings.web_port != 0,
        "web_port": settings.web_port or 6066,
        # Faust's default binds every interface; INTENT_WEB_HOST opens more than loopback
        # only with a token or INTENT_ALLOW_OPEN_VIEWS (Settings checks).
        "web_bind": settings.web_host,
        "web_host": "127.0.0.1",  # Faust's own name for this worker in URLs it builds
        # Faust's /router and /table pages describe tables, and the app keeps none (its
        # state is in Redis): off, so that the views and Faust's "/" status are all it serves.
        "web_router_enabled": False,
        "web_tables_enabled": False,
    }
    config.update(overrides)
    app = IntentApp(settings.app_id, **config)
    app.intent_settings = settings
    return app
