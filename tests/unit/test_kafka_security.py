"""The Kafka security settings: what every client is given, and what is refused."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from pydantic import ValidationError

from stream.settings import Settings
from stream.worker.app import create_app, faust_credentials


def test_by_default_clients_connect_in_plaintext() -> None:
    settings = Settings(kafka_bootstrap="k1:9092,k2:9092")
    assert settings.kafka_options() == {
        "bootstrap_servers": ["k1:9092", "k2:9092"],
        "security_protocol": "PLAINTEXT",
    }
    assert settings.kafka_ssl_context() is None
    assert faust_credentials(settings) is None
    assert settings.kafka_security_hint() == ""


def test_ssl_verifies_the_brokers_with_the_ca_given(pems: dict[str, Path]) -> None:
    settings = Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=pems["ca"])
    options = settings.kafka_options()
    context = options.pop("ssl_context")
    assert options == {"bootstrap_servers": ["127.0.0.1:9092"], "security_protocol": "SSL"}
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    (trusted,) = context.get_ca_certs()
    assert dict(x[0] for x in trusted["subject"])["organizationName"].startswith("trustme")


def test_mutual_tls_loads_the_client_certificate(pems: dict[str, Path]) -> None:
    settings = Settings(
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=pems["ca"],
        kafka_ssl_certfile=pems["cert"],
        kafka_ssl_keyfile=pems["key"],
    )
    assert settings.kafka_ssl_context() is not None
    mismatched = Settings(  # the CA's certificate is no client certificate for this key
        kafka_security_protocol="SSL", kafka_ssl_certfile=pems["ca"], kafka_ssl_keyfile=pems["key"]
    )
    with pytest.raises(ssl.SSLError):
        mismatched.kafka_ssl_context()


@pytest.mark.parametrize(("protocol", "tls"), [("SASL_SSL", True), ("SASL_PLAINTEXT", False)])
def test_sasl_gives_every_client_the_mechanism_and_credentials(
    protocol: str, tls: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INTENT_KAFKA_SECURITY_PROTOCOL", protocol)
    monkeypatch.setenv("INTENT_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("INTENT_KAFKA_SASL_USERNAME", "api-key")
    monkeypatch.setenv("INTENT_KAFKA_SASL_PASSWORD", "api-secret")
    settings = Settings()
    assert "api-secret" not in repr(settings)
    options = settings.kafka_options()
    context = options.pop("ssl_context", None)
    assert (context is not None) is tls
    assert options == {
        "bootstrap_servers": ["127.0.0.1:9092"],
        "security_protocol": protocol,
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "api-key",
        "sasl_plain_password": "api-secret",
    }
    # Faust's clients get the same, through its credentials
    faust: dict[str, Any] = dict(credentials_to_aiokafka_auth(faust_credentials(settings)))
    assert (faust.pop("ssl_context") is not None) is tls
    options.pop("bootstrap_servers")
    assert faust == options
    assert "SCRAM-SHA-512 username and password" in settings.kafka_security_hint()


def test_the_faust_app_connects_as_the_stream_does(pems: dict[str, Path]) -> None:
    settings = Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=pems["ca"])
    app = create_app(settings)
    faust = credentials_to_aiokafka_auth(app.conf.broker_credentials)
    assert faust["security_protocol"] == "SSL"
    assert faust["ssl_context"].get_ca_certs() == settings.kafka_ssl_context().get_ca_certs()  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"kafka_security_protocol": "SASL_SSL"}, "needs INTENT_KAFKA_SASL_USERNAME"),
        (
            {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_username": "u"},
            "and INTENT_KAFKA_SASL_PASSWORD",
        ),
        ({"kafka_ssl_cafile": "ca"}, "set it to SSL or SASL_SSL"),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_keyfile": "key"},
            "needs INTENT_KAFKA_SSL_CERTFILE",
        ),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_cafile": "/nowhere/ca.pem"},
            "does not point to a file",
        ),
        ({"kafka_security_protocol": "TLS"}, "'PLAINTEXT', 'SSL', 'SASL_PLAINTEXT' or 'SASL_SSL'"),
        (
            {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "GSSAPI"},
            "SCRAM-SHA-512",
        ),
    ],
)
def test_a_combination_that_cannot_work_is_refused_with_the_setting_to_fix(
    values: dict[str, str], message: str, pems: dict[str, Path]
) -> None:
    named = {"ca": pems["ca"], "key": pems["key"]}
    given: dict[str, Any] = {k: named.get(v, v) for k, v in values.items()}
    with pytest.raises(ValidationError, match=message):
        Settings(**given)


def test_the_cli_names_the_setting_to_fix_and_never_echoes_a_secret(
    monkeypatch: pytest.MonkeyPatch, pems: dict[str, Path]
) -> None:
    from click.testing import CliRunner

    from stream.cli import main

    monkeypatch.setenv("INTENT_KAFKA_SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("INTENT_KAFKA_SSL_CAFILE", str(pems["ca"]))  # but PLAINTEXT
    result = CliRunner().invoke(main, ["shopper", "s-1"])
    assert result.exit_code == 1
    assert "bad INTENT_ setting: INTENT_KAFKA_SSL_* files are set but" in result.output
    assert "hunter2" not in result.output
