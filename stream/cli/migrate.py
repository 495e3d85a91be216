"""`intent migrate-state`: convert the stored state from the format before 2026-12-05."""

from __future__ import annotations

import click

from stream.cli.common import _run_redis, _settings


@click.command("migrate-state")
@click.option("--dry-run", is_flag=True, help="Count what would be converted; change nothing.")
def migrate_state(dry_run: bool) -> None:
    """Convert state written by a version before 2026-12-05 (several keys per shopper,
    scores in a Redis hash) to one record per shopper. Stop the workers first; running
    it again finds nothing left to convert."""
    import redis
    from redis.cluster import RedisCluster

    from stream.state.connection import is_cluster_server
    from stream.state.migrate import migrate

    settings = _settings()
    url = settings.redis_url.get_secret_value()
    options = settings.redis_options()

    def run() -> object:
        kind = RedisCluster if is_cluster_server(url, options) else redis.Redis
        client = kind.from_url(url, **options)
        try:
            return migrate(
                client,
                settings.app_id,
                settings.partitions,
                progress=lambda n: click.echo(f"  {n} shoppers converted", err=True),
                dry_run=dry_run,
            )
        finally:
            client.close()

    done = _run_redis(settings, lambda f: f(), run)
    verb = "would convert" if dry_run else "converted"
    click.echo(
        f"{verb} {done.shoppers} shoppers and {done.memberships} tier and audience "
        f"memberships of {settings.app_id}; {done.keys_deleted} old keys deleted"
    )
