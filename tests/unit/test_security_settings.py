"""The settings that guard shopper data: the views' token, bind address and page cap, and
Redis's TLS files. What each combination gives, and what is refused at start-up."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from stream.cli.common import settings_problems
from stream.settings import Settings, is_loopback, redis_hint, url_without_credentials
from stream.worker.app import app_settings, create_app
from stream.worker.views import bearer_matches

TOKEN = "k3y-0f-the-views-abcdef0123456789"


def problems(**values: object) -> str:
    with pytest.raises(ValidationError) as caught:
        Settings(**values)  # type: ignore[arg-type]
    return settings_problems(caught.value)


# --- the views ------------------------------------------------------------------------


def test_by_default_the_views_listen_on_loopback_without_a_token() -> None:
    settings = Settings()
    assert settings.web_host == "127.0.0.1" and settings.api_token is None
    assert settings.max_page_size == 1000 and not settings.open_views
    app = create_app(settings)
    assert app.conf.web_bind == "127.0.0.1"
    assert app_settings(app) is settings
    # Faust's table pages are off: the app keeps no tables
    assert not app.conf.web_router_enabled and not app.conf.web_tables_enabled


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_addresses_need_no_token(host: str) -> None:
    assert is_loopback(host)
    settings = Settings(web_host=host)
    assert not settings.open_views
    assert create_app(settings).conf.web_bind == host


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.7", "intent-worker.example"])
def test_an_open_address_without_a_token_is_refused_naming_both_ways_out(host: str) -> None:
    assert not is_loopback(host)
    message = problems(web_host=host)
    assert message == (
        f"INTENT_WEB_HOST={host} would serve shopper profiles to the network without a "
        "token: set INTENT_API_TOKEN, or INTENT_ALLOW_OPEN_VIEWS=true to serve them open"
    )


def test_an_open_address_with_a_token_or_the_opt_out_is_accepted() -> None:
    guarded = Settings(web_host="0.0.0.0", api_token=TOKEN)
    assert not guarded.open_views
    assert create_app(guarded).conf.web_bind == "0.0.0.0"
    opted_out = Settings(web_host="0.0.0.0", allow_open_views=True)
    assert opted_out.open_views  # the worker warns at start
    # the views off: nothing is served, so nothing to refuse
    assert not Settings(web_host="0.0.0.0", web_port=0).open_views


def test_the_token_is_a_secret_of_sixteen_header_safe_characters() -> None:
    settings = Settings(api_token=TOKEN)
    assert TOKEN not in repr(settings)
    assert problems(api_token="short") == (
        "INTENT_API_TOKEN: at least 16 characters (for example `openssl rand -hex 32`)"
    )
    assert problems(api_token="").startswith("INTENT_API_TOKEN: at least 16")
    spaced = problems(api_token="two words of a token here")
    assert spaced.startswith("INTENT_API_TOKEN: letters, digits and")
    assert "two words" not in spaced  # the value given is never repeated
    assert Settings(api_token="aGVsbG8gd29ybGQgaGVsbG8=").api_token is not None  # base64


def test_the_page_cap_is_at_least_one() -> None:
    assert Settings(max_page_size=1).max_page_size == 1
    assert problems(max_page_size=0).startswith("INTENT_MAX_PAGE_SIZE: ")


def test_intent_worker_refuses_open_views_at_once_with_one_line() -> None:
    env = {**os.environ, "INTENT_WEB_HOST": "0.0.0.0", "INTENT_WEB_PORT": "6066"}
    env.pop("INTENT_API_TOKEN", None)
    env.pop("INTENT_ALLOW_OPEN_VIEWS", None)
    done = subprocess.run(
        [sys.executable, "-m", "stream", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "Error: bad INTENT_ setting: INTENT_WEB_HOST=0.0.0.0 would serve shopper profiles to "
        "the network without a token: set INTENT_API_TOKEN, or INTENT_ALLOW_OPEN_VIEWS=true "
        "to serve them open"
    )


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        (f"Bearer {TOKEN}", True),
        (f"bearer {TOKEN}", True),  # the scheme is case-insensitive (RFC 7235)
        (f"  Bearer   {TOKEN}  ", True),
        (None, False),
        ("", False),
        ("Bearer", False),
        ("Bearer ", False),
        (f"Basic {TOKEN}", False),
        (f"Bearer {TOKEN[:-1]}", False),
        (f"Bearer {TOKEN}x", False),
        (f"Bearer {TOKEN.upper()}", False),
        ("Bearer \udcff\udcfe", False),  # bytes that were not UTF-8, as aiohttp escapes them
        ("Bearer jeton-élevé-0123456789", False),
    ],
)
def test_bearer_matches(header: str | None, matches: bool) -> None:
    assert bearer_matches(header, TOKEN.encode()) is matches


# --- Redis ----------------------------------------------------------------------------


def test_a_plain_redis_url_gets_no_tls_options() -> None:
    settings = Settings(redis_url="redis://intent:pa55@r:6379/0")
    assert settings.redis_options() == {}
    assert "pa55" not in repr(settings)


def test_rediss_verifies_the_server_with_the_ca_given(pems: dict[str, Path]) -> None:
    assert Settings(redis_url="rediss://r:6380/0").redis_options() == {
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
    }
    settings = Settings(
        redis_url="rediss://intent:pa55@r:6380/0",
        redis_ssl_cafile=pems["ca"],
        redis_ssl_certfile=pems["cert"],
        redis_ssl_keyfile=pems["key"],
    )
    assert settings.redis_options() == {
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        "ssl_ca_certs": str(pems["ca"]),
        "ssl_certfile": str(pems["cert"]),
        "ssl_keyfile": str(pems["key"]),
    }


def test_redis_settings_that_cannot_work_are_refused(pems: dict[str, Path]) -> None:
    assert problems(redis_url="redis://r:6379/0", redis_ssl_cafile=pems["ca"]) == (
        "INTENT_REDIS_SSL_* files are set but INTENT_REDIS_URL is not a rediss:// URL: "
        "start it with rediss:// to connect with TLS"
    )
    assert problems(redis_url="rediss://r:6380/0", redis_ssl_keyfile=pems["key"]) == (
        "INTENT_REDIS_SSL_KEYFILE needs INTENT_REDIS_SSL_CERTFILE"
    )
    missing = problems(redis_url="rediss://r:6380/0", redis_ssl_cafile=pems["ca"].with_name("no"))
    assert missing.startswith("INTENT_REDIS_SSL_CAFILE: ")
    wrong = problems(redis_url="http://intent:pa55@r:6379/0")
    assert wrong == "INTENT_REDIS_URL must start with redis://, rediss:// or unix://"
    assert Settings(redis_url="unix:///run/redis.sock").redis_options() == {}


def test_redis_refusals_say_what_to_check() -> None:
    from redis.exceptions import AuthenticationError, ConnectionError, NoPermissionError

    assert redis_hint(AuthenticationError("WRONGPASS")) == (
        "; check the user and password in the Redis URL (INTENT_REDIS_URL)"
    )
    assert "ACL" in redis_hint(NoPermissionError("NOPERM"))
    try:  # redis-py raises its ConnectionError from the TLS error
        try:
            raise ssl.SSLCertVerificationError("certificate verify failed")
        except ssl.SSLError as exc:
            raise ConnectionError("Error 1 connecting") from exc
    except ConnectionError as exc:
        assert "INTENT_REDIS_SSL_CAFILE" in redis_hint(exc)
    assert redis_hint(ConnectionError("Connection refused")) == ""  # down: not a setting
    assert url_without_credentials("rediss://intent:pa55@r:6380/0") == "rediss://r:6380/0"
