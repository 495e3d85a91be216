"""The processor's own errors. Each message says what to do about it."""

from __future__ import annotations


class IntentError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(IntentError):
    """A setting or a file the user gave is wrong."""


class StackError(IntentError):
    """The embedded stack could not start or stop."""


class BinaryNotFound(StackError):
    """A server binary (tansu, redis-server) is not installed."""


class PortInUse(StackError):
    """A server could not bind its port."""


class ServerFailed(StackError):
    """A server exited or did not become ready in time."""


class BrokerUnavailable(IntentError):
    """Kafka (or the embedded broker) did not answer."""


class MissingExtra(IntentError):
    """A feature whose optional dependencies are not installed (an extra)."""
