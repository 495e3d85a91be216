"""The HTTP views' guard on a real Redis: the bearer token, the page cap, the bind address.

The first tests serve the worker's own Faust web app (`create_app` + `register_views`,
Faust's aiohttp application) from an aiohttp test server; the last ones run real
`intent worker` processes and talk to them over HTTP, as a client on the network would.
"""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer

from stream.core.scoring import ScoreConfig, ScoreSignal
from stream.settings import Settings
from stream.state.store import StateReader
from stream.topics import ensure_topics
from stream.worker.app import create_app
from stream.worker.views import register_views
from tests.integration.conftest import scrape_metrics, wait_for
from tests.integration.kafka_io import produce
from tests.integration.seed import seed_audience, seed_shopper
from tests.integration.servers import Servers, drop_keys

TOKEN = "views-token-0123456789abcdef"
CFG = ScoreConfig(1.0, 15.0, 35.0, 0.1)  # the default rules' tiers
SHOPPER = "vs-shopper-1"
MEMBERS = [f"vs-member-{i:02d}" for i in range(30)]
Check = Callable[[TestClient[Any, Any]], Awaitable[None]]


@pytest.fixture
def app_id(servers: Servers, request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"views-{request.node.name[:40]}".replace("[", "-").replace("]", "")
    yield name
    drop_keys(servers.redis_url, name)


def serve(servers: Servers, app_id: str, check: Check, **settings: Any) -> None:
    """The worker's views on a test server, over a Redis holding one scored shopper and
    an audience of MEMBERS; `check` gets a client of that server."""

    async def run() -> None:
        config = Settings(redis_url=servers.redis_url, app_id=app_id, **settings)
        client = aioredis.Redis.from_url(servers.redis_url)
        now = datetime.now(UTC).timestamp()
        signal = ScoreSignal("vs-sig-1", now - 60, 20.0, 86400.0, "checkout_started")
        n = config.partitions
        await seed_shopper(client, app_id, n, SHOPPER, [signal], now, CFG)
        await seed_audience(client, app_id, n, "vip", MEMBERS)
        app = create_app(config)
        register_views(app, StateReader(client, app_id, n), lambda: datetime.now(UTC))
        try:
            async with TestClient(TestServer(await app.web.wsgi(), host="127.0.0.1")) as http:
                await check(http)
        finally:
            await client.aclose()

    asyncio.run(run())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_with_a_token_the_views_answer_only_the_bearer(servers: Servers, app_id: str) -> None:
    async def check(http: TestClient[Any, Any]) -> None:
        for path in (f"/shoppers/{SHOPPER}", "/audiences/vip"):
            missing = await http.get(path)
            assert missing.status == 401
            assert missing.headers["WWW-Authenticate"] == 'Bearer realm="intent"'
            assert missing.content_type == "application/json"
            body = await missing.text()
            assert json.loads(body) == {
                "error": "this view needs the header Authorization: Bearer <token>"
            }
            for wrong in (bearer("views-token-0123456789abcdeX"), bearer(TOKEN[:-1]),
                          {"Authorization": f"Basic {TOKEN}"}, bearer("")):  # fmt: skip
                refused = await http.get(path, headers=wrong)
                assert refused.status == 401
                assert refused.headers["WWW-Authenticate"] == (
                    'Bearer realm="intent", error="invalid_token"'
                )
                assert await refused.json() == {"error": "the bearer token is wrong"}
            head = await http.head(path)  # HEAD runs the GET view: guarded too
            assert head.status == 401
        shopper = await http.get(f"/shoppers/{SHOPPER}", headers=bearer(TOKEN))
        assert shopper.status == 200
        profile = await shopper.json()
        assert profile["known"] is True and profile["tier"] == "mid"
        assert profile["top_signals"][0]["name"] == "checkout_started"
        page = await http.get("/audiences/vip", params={"count": 1000}, headers=bearer(TOKEN))
        assert page.status == 200
        assert sorted((await page.json())["members"]) == MEMBERS

    serve(servers, app_id, check, api_token=TOKEN)


def test_a_refused_request_carries_no_shopper_data(servers: Servers, app_id: str) -> None:
    """Not the profile, not that the shopper is known, not an audience's size."""

    async def check(http: TestClient[Any, Any]) -> None:
        for path in (f"/shoppers/{SHOPPER}", "/shoppers/vs-nobody", "/audiences/vip"):
            for headers in ({}, bearer("not-the-token-0123456789")):
                response = await http.get(path, headers=headers)
                body = await response.text()
                assert response.status == 401
                assert set(json.loads(body)) == {"error"}
                for leak in (SHOPPER, "vs-nobody", "known", "tier", "members", "size", "vip"):
                    assert leak not in body

    serve(servers, app_id, check, api_token=TOKEN)


def test_without_a_token_the_loopback_views_answer_anyone(servers: Servers, app_id: str) -> None:
    async def check(http: TestClient[Any, Any]) -> None:
        shopper = await http.get(f"/shoppers/{SHOPPER}")
        assert shopper.status == 200 and (await shopper.json())["known"] is True
        page = await http.get("/audiences/vip", params={"count": 5})
        assert page.status == 200 and (await page.json())["size"] == len(MEMBERS)

    serve(servers, app_id, check)  # web_host: 127.0.0.1, the default


def test_faust_serves_its_status_page_open_and_nothing_else(servers: Servers, app_id: str) -> None:
    async def check(http: TestClient[Any, Any]) -> None:
        status = await http.get("/")
        assert status.status == 200 and await status.json() == {"status": "OK"}
        for path in ("/router/", "/router/topics", "/table/", "/graph/", "/stats/"):
            assert (await http.get(path)).status == 404, path

    serve(servers, app_id, check, api_token=TOKEN)


def test_a_page_over_the_cap_is_refused_with_the_limit(servers: Servers, app_id: str) -> None:
    async def check(http: TestClient[Any, Any]) -> None:
        async def count(value: object, **more: object) -> tuple[int, Any]:
            params = {"count": str(value), **{k: str(v) for k, v in more.items()}}
            response = await http.get("/audiences/vip", params=params, headers=bearer(TOKEN))
            return response.status, await response.json()

        status, page = await count(20)
        assert status == 200 and page["size"] == len(MEMBERS)
        refusal = {"error": "cursor is 0 or more, and count from 1 to 20"}
        assert await count(21) == (400, refusal)
        assert await count(1_000_000) == (400, refusal)
        assert await count(0) == (400, refusal)
        assert await count(-5) == (400, refusal)
        assert await count(5, cursor=-1) == (400, refusal)
        assert await count("many") == (400, {"error": "cursor and count are whole numbers"})
        # Without `count` a page is 100 members, or the cap when it is smaller.
        default = await http.get("/audiences/vip", headers=bearer(TOKEN))
        assert default.status == 200

    serve(servers, app_id, check, api_token=TOKEN, max_page_size=20)


def test_an_audience_is_read_to_its_end_page_by_page(servers: Servers, app_id: str) -> None:
    """Members are kept per partition and the cursor says where a page ended (partition
    and scan position): following it from 0 gives every member once, then no cursor."""

    async def check(http: TestClient[Any, Any]) -> None:
        cursor: int | None = 0
        seen: list[str] = []
        pages = 0
        while cursor is not None:
            params = {"count": "4", "cursor": str(cursor)}
            response = await http.get("/audiences/vip", params=params, headers=bearer(TOKEN))
            assert response.status == 200
            page = await response.json()
            assert page["size"] == len(MEMBERS)
            assert page["members"] == sorted(page["members"])
            seen += page["members"]
            cursor = page["next_cursor"]
            pages += 1
            assert pages <= len(MEMBERS), "the cursor goes round"
        assert sorted(seen) == MEMBERS  # each once
        assert pages > 1

    serve(servers, app_id, check, api_token=TOKEN)


# --- real workers ------------------------------------------------------------------------


def http_get(port: int, path: str, token: str | None = None, host: str = "127.0.0.1") -> Any:
    """(status, headers, body) of a GET; an HTTP error status is an answer too."""
    request = urllib.request.Request(f"http://{host}:{port}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read().decode()


def answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def send_checkout(settings: Settings, shopper: str) -> None:
    ensure_topics(settings)
    at = datetime.now(UTC) - timedelta(minutes=1)
    body = {
        "event_id": f"{shopper}-checkout",
        "shopper_id": shopper,
        "type": "checkout_started",
        "ts": at.isoformat(),
        "product": {"sku": "JKT-RAIN", "category": "apparel/jackets"},
    }
    produce(
        settings.kafka_bootstrap,
        settings.topic_clickstream,
        [(shopper.encode(), json.dumps(body).encode())],
    )


def test_a_worker_with_a_token_guards_its_views_and_keeps_metrics_and_probes_open(
    env: dict[str, str], start_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    env["INTENT_API_TOKEN"] = TOKEN
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    shopper = f"vs-live-{settings.app_id[-8:]}"
    send_checkout(settings, shopper)
    start_worker()
    port = settings.web_port
    wait_for(
        lambda: (
            answers(port)
            and json.loads(http_get(port, f"/shoppers/{shopper}", TOKEN)[2]).get("known") is True
        ),
        90,
        "the worker to score the shopper",
    )
    status, headers, body = http_get(port, f"/shoppers/{shopper}")
    assert status == 401 and headers["WWW-Authenticate"] == 'Bearer realm="intent"'
    assert shopper not in body and "tier" not in body
    assert http_get(port, "/audiences/started_checkout")[0] == 401
    page = json.loads(http_get(port, "/audiences/started_checkout", TOKEN)[2])
    assert shopper in page["members"]
    # Open: Faust's status page, and the metrics server's /metrics, /healthz and /ready,
    # none of which holds a shopper id.
    status, _, body = http_get(port, "/")
    assert (status, body) == (200, '{"status":"OK"}')
    samples = scrape_metrics(settings.metrics_port)  # with no token
    assert sum(v for k, v in samples.items() if k.startswith("intent_tier_changes_total")) >= 1
    status, _, text = http_get(settings.metrics_port, "/metrics")
    assert status == 200 and shopper not in text and "vs-live" not in text
    status, _, body = http_get(settings.metrics_port, "/healthz")
    assert (status, body) == (200, "ok\n")
    status, _, body = http_get(settings.metrics_port, "/ready")
    assert (status, body) == (200, "ready\n")
    # Bound to 127.0.0.1 only (the default INTENT_WEB_HOST): another loopback address
    # of this machine finds nothing listening there.
    assert not answers(port, "127.0.0.2")


def test_a_worker_with_open_views_allowed_warns_and_serves_every_interface(
    env: dict[str, str], start_worker: Any, tmp_path: Path
) -> None:
    env.update(INTENT_WEB_HOST="0.0.0.0", INTENT_ALLOW_OPEN_VIEWS="true")
    start_worker()
    port = int(env["INTENT_WEB_PORT"])
    wait_for(lambda: answers(port, "127.0.0.2"), 60, "the views on every interface")
    status, _, body = http_get(port, "/shoppers/vs-nobody", host="127.0.0.2")
    assert status == 200 and json.loads(body)["known"] is False
    log = (tmp_path / "worker-0.log").read_text()
    assert (
        f"the HTTP views serve shopper profiles without a token on 0.0.0.0:{port} "
        "(INTENT_ALLOW_OPEN_VIEWS); set INTENT_API_TOKEN to require one"
    ) in log
