"""The worker's HTTP views (Faust web), and the reads behind them and `intent shopper`:

GET /shoppers/{id}      the profile: score now, tier, suppressions, top signals
GET /audiences/{name}   a page of an audience's members (`cursor`, `count`)
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import faust
from faust.web import Request, Response, View

from stream.clock import Clock
from stream.state.scores import ScoreStore, profile
from stream.worker.retry import REDIS_STEP_SECONDS

AUDIENCE_PAGE: Final = 100  # members per page of GET /audiences/{name}


async def read_shopper(scores: ScoreStore, shopper: str, now: float) -> dict[str, Any]:
    return profile(shopper, await scores.read(shopper), now)


async def audience_page(scores: ScoreStore, name: str, cursor: int, count: int) -> dict[str, Any]:
    members, next_cursor, size = await scores.audience_members(name, cursor, count)
    return {"audience": name, "members": members, "next_cursor": next_cursor, "size": size}


def register_views(app: faust.App, scores: ScoreStore, clock: Clock) -> None:
    async def shopper_page(view: View, request: Request, shopper: str) -> Response:
        now = clock().timestamp()
        async with asyncio.timeout(REDIS_STEP_SECONDS):
            return view.json(await read_shopper(scores, shopper, now))

    async def audience(view: View, request: Request, name: str) -> Response:
        try:
            cursor = int(request.query.get("cursor", 0))
            count = min(int(request.query.get("count", AUDIENCE_PAGE)), 10 * AUDIENCE_PAGE)
        except ValueError:
            return view.json({"error": "cursor and count are whole numbers"}, status=400)
        async with asyncio.timeout(REDIS_STEP_SECONDS):
            page = await audience_page(scores, name, cursor, count)
        return view.json(page)

    app.page("/shoppers/{shopper}")(shopper_page)
    app.page("/audiences/{name}")(audience)
