"""`intent migrate-state` on a real Redis: state written in the format before 2026-12-05
(several keys per shopper, scores in a hash) reads back, after the command, as the same
state in one record per shopper, and the tier and audience sets move to their
partitions."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import orjson
import pytest
import redis
from click.testing import CliRunner

from stream.cli import main
from stream.core import scoring
from stream.core.detectors.engine import Engine
from stream.core.scoring import ScoreConfig, ScoreSignal
from stream.settings import Settings
from stream.state.records import Keys
from stream.state.store import StateReader, partition_of, profile
from stream.worker.main import redis_client
from tests.integration.servers import Servers, drop_keys

pytestmark = pytest.mark.integration
PARTITIONS = 8


def _lua_number(x: float) -> str:
    """How the score script wrote a half-life into a field name (Lua's tostring)."""
    return str(int(x)) if x == int(x) else repr(x)


def old_fields(state: dict[str, object]) -> dict[str, str]:
    """A score state as the score hash of the format before."""
    fmt = "%.17g"
    fields = {"tier": str(state["tier"]), "seq": str(state["seq"]), "T": fmt % state["T"]}
    if state["reset"] is not None:
        fields["reset"] = fmt % state["reset"]
    for h, (v, r) in state["s"].items():  # type: ignore[attr-defined]
        fields[f"s|{_lua_number(h)}"] = f"{fmt % v} {fmt % r}"
    for rule, (v, r, h) in state["rules"].items():  # type: ignore[attr-defined]
        fields[f"r|{rule}"] = f"{fmt % v} {fmt % r} {fmt % h}"
    for key, (v, r) in state["cats"].items():  # type: ignore[attr-defined]
        h, _, category = key.partition("|")
        fields[f"c|{_lua_number(float(h))}|{category}"] = f"{fmt % v} {fmt % r}"
    for scope, until in state["x"].items():  # type: ignore[attr-defined]
        fields[f"x|{scope}"] = fmt % until
    return fields


@pytest.fixture
def app_id(servers: Servers) -> Iterator[str]:
    made = f"migrate-{uuid.uuid4().hex[:8]}"
    yield made
    drop_keys(servers.redis_url, made)


def test_old_state_reads_back_the_same_after_the_command(
    servers: Servers, app_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = datetime(2026, 11, 30, tzinfo=UTC).timestamp()
    cfg = ScoreConfig(5.0, 15.0, 35.0, 0.1)
    signals = [
        ScoreSignal("a", t, 12.0, 259200.0, "add_to_cart", category="shoes"),
        ScoreSignal("b", t + 60, 9.0, 86400.0, "checkout_started"),
        ScoreSignal("c", t + 120, 0.0, 3600.0, "opt_out", suppress="channel:email",
                    until=t + 86400 * 365),
    ]  # fmt: skip
    score = scoring.new_state()
    scoring.apply(score, signals, None, cfg)
    patterns = Engine.new_state()
    patterns.update(wm=t + 120, seen=[[t + 120, "e-3"]])
    client = redis.Redis.from_url(servers.redis_url)
    shopper = "m-1"
    client.set(f"{app_id}:{{{shopper}}}:patterns", orjson.dumps(patterns), px=3_600_000)
    client.hset(f"{app_id}:{{{shopper}}}:score", mapping=old_fields(score))
    client.pexpire(f"{app_id}:{{{shopper}}}:score", 7_200_000)
    client.zadd(f"{app_id}:{{{shopper}}}:applied", {"a": t})
    client.set(f"{app_id}:{{gone-1}}:forgotten", f"{t:.6f}")
    client.sadd(f"{app_id}:tier:mid", shopper)
    client.sadd(f"{app_id}:audience:cart_abandoners", shopper, "m-2")

    monkeypatch.setenv("INTENT_REDIS_URL", servers.redis_url)
    monkeypatch.setenv("INTENT_APP_ID", app_id)
    monkeypatch.setenv("INTENT_PARTITIONS", str(PARTITIONS))
    result = CliRunner().invoke(main, ["migrate-state"])
    assert result.exit_code == 0, result.output
    assert "converted 2 shoppers and 3 tier and audience memberships" in result.output

    keys = Keys(app_id)
    p = partition_of(shopper, PARTITIONS)
    assert [k.decode() for k in client.scan_iter(f"{app_id}:{{m-1}}:*")] == []
    assert client.smembers(keys.tier(p, "mid")) == {b"m-1"}
    assert shopper.encode() in client.smembers(keys.audience(p, "cart_abandoners"))
    assert client.exists(f"{app_id}:tier:mid", f"{app_id}:audience:cart_abandoners") == 0
    assert 3_500_000 < client.pttl(keys.record(p, shopper)) <= 7_200_000  # the longest

    async def read(who: str) -> object:
        aclient = redis_client(_settings(servers, app_id))
        try:
            return await StateReader(aclient, app_id, PARTITIONS).record(who)
        finally:
            await aclient.aclose()

    import asyncio

    record = asyncio.run(read(shopper))
    assert record is not None
    assert record.patterns == patterns
    for field in ("tier", "seq", "T", "reset", "s", "rules", "cats", "x"):
        assert record.score[field] == score[field], field
    now = t + 3600
    view = profile(shopper, record, now)
    assert view["tier"] == score["tier"] and view["suppressions"][0]["scope"] == "channel"
    gone = asyncio.run(read("gone-1"))
    assert gone is not None and gone.forgotten == float(f"{t:.6f}")

    again = CliRunner().invoke(main, ["migrate-state"])
    assert "converted 0 shoppers and 0 tier and audience memberships" in again.output
    client.close()


def _settings(servers: Servers, app_id: str) -> Settings:
    return Settings(redis_url=servers.redis_url, app_id=app_id, partitions=PARTITIONS)
