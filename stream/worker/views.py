"""The worker's HTTP views (Faust web), and the reads behind them and `intent shopper`:

GET /shoppers/{id}      the profile: score now, tier, suppressions, top signals
GET /audiences/{name}   a page of an audience's members (`cursor`, `count`)

With INTENT_API_TOKEN set, both answer only `Authorization: Bearer <token>`; anything
else gets a 401 and no shopper data.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Any, Final

import faust
from faust.web import Request, Response, View

from stream.clock import Clock
from stream.core.identity import MAX_HOPS
from stream.state.store import StateReader, merged_into, profile
from stream.worker.app import app_settings
from stream.worker.retry import REDIS_STEP_SECONDS

AUDIENCE_PAGE: Final = 100  # members per page of GET /audiences/{name} without `count`
REALM: Final = 'Bearer realm="intent"'


async def read_shopper(reader: StateReader, shopper: str, now: float) -> dict[str, Any]:
    """A shopper's profile; for an id merged into another profile, that profile (with
    `requested_id`: the id asked for), since its state lives there now."""
    record = await reader.record(shopper)
    held = shopper
    for _ in range(MAX_HOPS):  # along aliases: a profile merged into another one
        into = merged_into(record)
        if into is None:
            break
        held, record = into, await reader.record(into)
    out = profile(held, record, now)
    return out if held == shopper else {**out, "requested_id": shopper}


async def audience_page(reader: StateReader, name: str, cursor: int, count: int) -> dict[str, Any]:
    members, next_cursor, size = await reader.audience_members(name, cursor, count)
    return {"audience": name, "members": members, "next_cursor": next_cursor, "size": size}


def bearer_matches(header: str | None, token: bytes) -> bool:
    """Whether an Authorization header carries `token` as a Bearer token. The comparison
    takes the same time wherever the first difference is, so the token cannot be guessed
    a character at a time from response times."""
    scheme, _, given = (header or "").strip().partition(" ")
    # (aiohttp hands bytes that were not UTF-8 on as lone surrogates: they encode too)
    presented = given.strip().encode("utf-8", "surrogatepass")
    matches = hmac.compare_digest(presented, token)
    return scheme.lower() == "bearer" and matches


def guarded_view(token: bytes | None) -> type[View]:
    """The base of the views: with a token, a request without it is answered 401 before
    the view runs (every method: HEAD runs GET's view too)."""

    class Guarded(View):
        async def dispatch(self, request: Any) -> Any:
            header = None if token is None else request.headers.get("Authorization")
            if token is None or bearer_matches(header, token):
                return await super().dispatch(request)
            if header is None:
                error = "this view needs the header Authorization: Bearer <token>"
                challenge = REALM
            else:  # RFC 6750: a token was presented, and it is not the one
                error = "the bearer token is wrong"
                challenge = f'{REALM}, error="invalid_token"'
            return self.json({"error": error}, status=401, headers={"WWW-Authenticate": challenge})

    return Guarded


def register_views(app: faust.App, scores: StateReader, clock: Clock) -> None:
    """The views on `app`, with the token and page cap of the settings it was made with."""
    settings = app_settings(app)
    token = settings.api_token.get_secret_value().encode() if settings.api_token else None
    most = settings.max_page_size
    default_count = min(AUDIENCE_PAGE, most)
    base = guarded_view(token)

    async def shopper_page(view: View, request: Request, shopper: str) -> Response:
        now = clock().timestamp()
        async with asyncio.timeout(REDIS_STEP_SECONDS):
            return view.json(await read_shopper(scores, shopper, now))

    async def audience(view: View, request: Request, name: str) -> Response:
        try:
            cursor = int(request.query.get("cursor", 0))
            count = int(request.query.get("count", default_count))
        except ValueError:
            return view.json({"error": "cursor and count are whole numbers"}, status=400)
        if cursor < 0 or not 1 <= count <= most:
            # Refused, not cut down: a client that asks for more is told the limit
            # instead of being given less than it asked without a word.
            return view.json(
                {"error": f"cursor is 0 or more, and count from 1 to {most}"}, status=400
            )
        async with asyncio.timeout(REDIS_STEP_SECONDS):
            page = await audience_page(scores, name, cursor, count)
        return view.json(page)

    app.page("/shoppers/{shopper}", base=base)(shopper_page)
    app.page("/audiences/{name}", base=base)(audience)
