"""The `intent` command (the README's "Commands")."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from schemas.readers import FORMATS
from stream.errors import IntentError
from stream.offline.files import SHARD_EVENTS, unreadable_file
from stream.settings import Settings, get_settings


def _n(count: int, noun: str) -> str:
    """`1 tier change`, `2 tier changes`."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def _settings() -> Settings:
    try:
        return get_settings()
    except ValidationError as exc:
        raise click.ClickException(f"bad INTENT_ setting: {settings_problems(exc)}") from exc


def settings_problems(exc: ValidationError) -> str:
    """What is wrong with the INTENT_ settings, by variable, without the values given
    (pydantic's own message repeats them all, secrets included)."""
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        message = error["msg"].removeprefix("Value error, ")
        names = [f"INTENT_{str(part).upper()}" for part in error["loc"]]
        problems.append(f"{', '.join(names)}: {message}" if names else message)
    return "; ".join(problems)


class _Group(click.Group):
    """Turns the processor's own errors into a one-line message and exit code 1."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except IntentError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="intent-processor")
def main() -> None:
    """Streaming intent processor: clickstream in, intent tiers and actions out."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@main.command()
@click.option("--no-demo", is_flag=True, help="Start no demo traffic; produce your own.")
@click.option("--print-env", is_flag=True, help="Print the settings another shell needs first.")
@click.option("--rate", default=20.0, show_default=True, help="Demo traffic, events/s.")
@click.option("--no-worker", is_flag=True, help="Start no worker (others already run).")
def dev(no_demo: bool, print_env: bool, rate: float, no_worker: bool) -> None:
    """Embedded broker + Redis, one worker and demo traffic. Ctrl-C stops it all."""
    from stream.devstack.dev import run_dev

    run_dev(_settings(), demo=not no_demo, print_env=print_env, rate=rate, worker=not no_worker)


@main.command()
@click.option("--loglevel", default="info", show_default=True)
def worker(loglevel: str) -> None:
    """Run one stream worker against the configured Kafka and Redis."""
    from stream.worker.main import run_worker

    run_worker(_settings(), loglevel=loglevel)


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--format", "fmt", type=click.Choice(sorted(FORMATS)), default="canonical", show_default=True
)
@click.option("--topic", help="Send here instead of INTENT_TOPIC_CLICKSTREAM.")
def produce(file: Path, fmt: str, topic: str | None) -> None:
    """Send the events of FILE to the input topic."""
    from stream.devstack.produce import produce_file

    settings = _settings()
    report = produce_file(file, fmt, settings, topic=topic, show_progress=sys.stderr.isatty())
    bad = sum(report.line_errors.values())
    click.echo(
        f"sent {_n(report.sent, 'event')} to {topic or settings.topic_clickstream} in "
        f"{report.seconds:.1f} s ({report.rate:,.0f}/s); {_n(bad, 'unreadable line')}"
        + (f" ({', '.join(f'{k}: {v}' for k, v in report.line_errors.items())})" if bad else "")
        + (f"; {report.failed:,} sends FAILED" if report.failed else "")
    )
    if report.failed:
        sys.exit(1)
    if bad and not report.sent:
        raise click.ClickException(unreadable_file(file, fmt, bad))


@main.group()
def rules() -> None:
    """Rules files: check them (the default playbook ships built in)."""


@rules.command("check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path), required=False)
def rules_check(file: Path | None) -> None:
    """Validate FILE (default: the built-in rules) and explain every error with its line."""
    from stream.rulesfile import check_text, default_rules_text

    name = str(file) if file else "<built-in default.yaml>"
    try:
        text = file.read_text() if file else default_rules_text()
    except OSError as exc:
        raise click.ClickException(f"cannot read {file}: {exc.strerror}") from exc
    ruleset, problems = check_text(text)
    if ruleset is None:
        for problem in problems:
            click.echo(f"{name}: {problem}", err=True)
        raise click.ClickException(f"{len(problems)} problem(s) in {name}")
    kinds: dict[str, int] = {}
    for rule in ruleset.rules:
        kinds[rule.kind] = kinds.get(rule.kind, 0) + 1
    summary = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    click.echo(f"{name}: OK, {len(ruleset.rules)} rules ({summary})")


def _redis(settings: Settings) -> Any:
    import redis.asyncio as aioredis

    return aioredis.Redis.from_url(settings.redis_url.get_secret_value())


@main.command()
@click.argument("shopper_id")
def shopper(shopper_id: str) -> None:
    """Print a shopper's current score, tier, suppression and top contributing signals."""
    import asyncio
    import json as _json
    import time

    from stream.state.scores import ScoreStore
    from stream.worker.views import read_shopper

    settings = _settings()

    async def read() -> dict[str, Any]:
        client = _redis(settings)
        try:
            store = ScoreStore(client, settings.app_id)
            return await read_shopper(store, shopper_id, time.time())
        finally:
            await client.aclose()

    view = _run_redis(settings, asyncio.run, read())
    click.echo(_json.dumps(view, indent=2))


@main.command()
@click.argument("shopper_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def forget(shopper_id: str, yes: bool) -> None:
    """Erase everything stored about a shopper (right to erasure), and tell downstream."""
    import asyncio
    from datetime import UTC, datetime

    from kafka import KafkaProducer

    from schemas.outputs import SuppressionRecord
    from stream.devstack.produce import compression_type
    from stream.topics import ensure_topics
    from stream.worker.views import forget as erase

    settings = _settings()
    if not yes and sys.stdin.isatty():
        click.confirm(f"Erase every record of shopper {shopper_id!r}?", abort=True)

    async def run() -> dict[str, int]:
        client = _redis(settings)
        try:
            return await erase(client, settings.app_id, shopper_id, settings.partitions)
        finally:
            await client.aclose()

    removed = _run_redis(settings, asyncio.run, run())
    now = datetime.now(UTC)
    record = SuppressionRecord(
        record_id=f"{shopper_id}:forget:{now.timestamp():.3f}", shopper_id=shopper_id,
        op="forget", scope="shopper", at=now,
    )  # fmt: skip
    ensure_topics(settings)
    producer = KafkaProducer(
        **settings.kafka_options(), compression_type=compression_type(settings)
    )
    producer.send(settings.topic_suppression, key=shopper_id.encode(), value=record.to_json()).get(
        30
    )
    producer.close()
    click.echo(
        f"forgot {shopper_id}: {removed['keys']} keys, {removed['index']} index entries, "
        f"{removed['audiences']} audience memberships; told {settings.topic_suppression}"
    )


def _where(url: str) -> str:
    """A Redis URL without its password."""
    scheme, _, rest = url.rpartition("://")
    return f"{scheme}://{rest.split('@')[-1]}" if scheme else rest.split("@")[-1]


def _redis_down(url: str, exc: Exception) -> click.ClickException:
    return click.ClickException(
        f"Redis at {_where(url)} did not answer ({exc}); is it up? "
        "(`intent dev --print-env` shows the embedded one)"
    )


def _run_redis(settings: Settings, run: Any, coro: Any) -> Any:
    from redis.exceptions import RedisError

    try:
        return run(coro)
    except (RedisError, OSError) as exc:
        raise _redis_down(settings.redis_url.get_secret_value(), exc) from exc


def _ping(url: str) -> None:
    """Fail at once, naming the server, when the Redis at `url` does not answer."""
    import redis
    from redis.exceptions import RedisError

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
        with client:
            client.ping()
    except (RedisError, ValueError) as exc:
        raise _redis_down(url, exc) from exc


def _writable(folder: Path) -> None:
    """Make `folder` if need be, and check a file can be written in it."""
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise click.ClickException(_os_error(exc, folder)) from exc


def _os_error(exc: OSError, path: Path | None = None, doing: str = "cannot write") -> str:
    """A file-system error in one line: what failed, on which file, and what to do."""
    import errno

    where = exc.filename if exc.filename is not None else path
    message = f"{doing} {where}: {exc.strerror or exc}" if where else f"{doing}: {exc}"
    if exc.errno == errno.ENOSPC:
        message += " (shards and part files go to the temporary folder: set TMPDIR to move it)"
    return message


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--format", "fmt", type=click.Choice(sorted(FORMATS)), default="canonical", show_default=True
)
@click.option("--rules", "rules_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Rules file (default: INTENT_RULES, else the built-in playbook).")  # fmt: skip
@click.option("--changes", type=click.Path(dir_okay=False, path_type=Path),
              help="Write every tier change here, JSON Lines, in the topic's schema.")  # fmt: skip
@click.option("--actions", type=click.Path(dir_okay=False, path_type=Path),
              help='Write every action here: {"topic", "key", "value"} per line.')  # fmt: skip
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write the evaluation here: report.md, report.json, PNG charts.")  # fmt: skip
@click.option(
    "--redis",
    "redis_url",
    metavar="URL",
    help="Score in this Redis (the Lua script) instead of in process, under a key prefix of "
    "the run's own (never a worker's keys), removed at the end.",
)
@click.option("--shard-events", type=click.IntRange(min=1), default=SHARD_EVENTS,
              show_default=True, help="Events held in memory at once (about 6 KB each); a "
              "bigger file is split by shopper into shards on disk.")  # fmt: skip
@click.option("--min-support", type=click.IntRange(min=1), default=10, show_default=True,
              help="Shoppers a signal needs before the report lists its lift.")  # fmt: skip
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Replay the shards in this many processes (same output).")  # fmt: skip
@click.option("--order", type=click.Choice(["time", "file"]), default="time", show_default=True,
              help="Each shopper's events by event time, or in the order the file lists them, "
              "as a worker reads the file once produced to the input topic (out of order "
              "within the allowed lateness: scored as they come; older: late).")  # fmt: skip
def replay(
    file: Path, fmt: str, rules_path: Path | None, changes: Path | None, actions: Path | None,
    report_dir: Path | None, redis_url: str | None, shard_events: int, min_support: int,
    jobs: int, order: str,
) -> None:  # fmt: skip
    """Run the rules offline, in event time, over a historical FILE."""
    import tempfile
    import time
    from contextlib import ExitStack

    from redis.exceptions import RedisError

    from stream.core.ingest import ingest_bounds
    from stream.offline.replay import REPLAY_UNITS, OutputFiles, Replay
    from stream.offline.report import Tally
    from stream.rulesfile import load_ruleset, rules_source

    settings = _settings()
    rules = load_ruleset(settings, rules_path)
    # What could fail late fails now: the report folder, the output files, Redis.
    if report_dir:
        _writable(report_dir)
    if redis_url:
        _ping(redis_url)
    size = max(file.stat().st_size, 1)
    tally = Tally()
    counts = {"signals": 0, "changes": 0, "actions": 0, "late": 0, "failed": 0}
    with tempfile.TemporaryDirectory(prefix="intent-replay-out-") as work, ExitStack() as bars:
        try:
            outputs = OutputFiles(changes, actions, settings.topic_names(), Path(work))
        except OSError as exc:
            raise click.ClickException(_os_error(exc)) from exc
        reading = bars.enter_context(
            click.progressbar(length=size, label=f"reading {file.name}", file=sys.stderr)
        )
        replaying: list[Any] = []
        done = 0

        def advance(position: int) -> None:
            nonlocal done
            reading.update(position - done)
            done = position

        def read(events: int) -> None:
            bars.close()  # the reading bar ends here, the next one starts
            # each event is detected, scored and turned into outputs: REPLAY_UNITS steps
            replaying.append(bars.enter_context(click.progressbar(
                length=REPLAY_UNITS * events, label="replaying", file=sys.stderr)))  # fmt: skip

        run = Replay(file, fmt, rules, redis_url=redis_url, progress=advance, on_read=read,
                     on_replayed=lambda units: replaying[0].update(units),
                     shard_events=shard_events, order=order,
                     bounds=ingest_bounds(settings))  # fmt: skip

        def go() -> None:
            for shard_tally, shard_counts in run.summaries(jobs, outputs):
                tally.merge(shard_tally)
                for name, n in shard_counts.items():
                    counts[name] += n
            outputs.close()

        started = time.perf_counter()
        try:
            go()
        except BaseException as exc:
            outputs.discard()  # an earlier file of the same name stays as it was
            if isinstance(exc, RedisError):
                raise click.ClickException(
                    f"Redis at {_where(redis_url or '')} failed during the replay: {exc}"
                ) from exc
            if isinstance(exc, OSError):
                raise click.ClickException(_os_error(exc, doing="replay failed on")) from exc
            raise
        seconds = time.perf_counter() - started  # wall clock: reading, replaying, writing
    bad = sum(run.line_errors.values())
    for error in run.first_errors:
        click.echo(f"line {error.line_no}: {error.reason}: {error.detail}", err=True)
    if bad > len(run.first_errors):
        more = _n(bad - len(run.first_errors), "more unreadable line")
        click.echo(f"... and {more}", err=True)
    rate = tally.events / seconds if seconds else 0.0
    sharded = f", {run.shards} shards" if run.shards > 1 else ""
    reasons = f" ({', '.join(f'{k}: {v:,}' for k, v in run.line_errors.items())})" if bad else ""
    click.echo(
        f"replayed {_n(tally.events, 'event')} of {_n(tally.shoppers, 'shopper')} in "
        f"{seconds:.1f} s ({rate:,.0f} events/s{sharded}; {_n(bad, 'unreadable line')}"
        f"{reasons}, {counts['late']:,} late): {_n(counts['signals'], 'signal')}, "
        f"{_n(counts['changes'], 'tier change')}, {_n(counts['actions'], 'action')}"
    )
    if counts["failed"]:
        click.echo(
            f"{_n(counts['failed'], 'shopper')} could not be processed (an error of ours, "
            "logged above) and were left out; every other shopper was replayed",
            err=True,
        )
    if run.behind:
        click.echo(
            f"{_n(run.behind, 'event')} came more than the allowed lateness after newer "
            "events of other shoppers: a worker's timer may have fired their shoppers' "
            "deadlines ahead of them (replay fires them after), so a worker's output for "
            "those shoppers can differ",
            err=True,
        )
    if bad and not tally.events:
        raise click.ClickException(unreadable_file(file, fmt, bad))
    if report_dir:
        from stream.offline.report import write

        try:
            source = rules_source(settings, rules_path)
            report = write(tally, report_dir, file.name, (rules, source), min_support, order)
        except OSError as exc:
            raise click.ClickException(_os_error(exc)) from exc
        for tier in report["tiers"]:
            conv = tier["conversion"]
            lift = tier["lift"]
            click.echo(
                f"  {tier['tier']:<5} reached {tier['reached']:>7,}  conversion "
                f"{'-' if conv is None else f'{100 * conv:.1f} %':>7}  lift "
                f"{'-' if lift is None else f'{lift:.2f}x'}"
            )
        click.echo(f"report: {report_dir / 'report.md'}")
