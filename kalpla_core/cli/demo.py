"""``kalpla demo``: migrate, then load the demo data of :mod:`kalpla_core.demo`."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import click
from flask.cli import with_appcontext

from kalpla_core import demo as demo_data
from kalpla_core import migrate
from kalpla_core.cli.group import kalpla


@contextmanager
def _quiet_migrations() -> Iterator[None]:
    # The progress bar reports the migrations; Alembic's per-revision log lines would break it.
    logger = logging.getLogger("alembic")
    previous = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _roles(account: demo_data.DemoAccount) -> str:
    parts = ["platform admin"] if account.platform_admin else []
    parts += [f"{slug}: {', '.join(roles)}" for slug, roles in account.roles.items()]
    return "; ".join(parts)


@click.command()
@click.option("--force", is_flag=True,
              help="Load even into PostgreSQL (the demo password is public).")
@with_appcontext
def demo(force: bool) -> None:
    """Load demo institutions and accounts (safe to run again)."""
    k = kalpla()
    if k.db.dialect == "postgresql" and not force:
        raise click.ClickException(
            "KALPLA_DATABASE_URL points at PostgreSQL; demo accounts share a public password, "
            "so they belong on the embedded SQLite database. Add --force to load them anyway.")
    labels = ["migrations", *(label for label, _ in demo_data.DEMO_STEPS)]
    with click.progressbar(length=len(labels), label="Loading demo data",
                           item_show_func=lambda item: item) as bar:
        with _quiet_migrations():
            migrate.upgrade(k)
        bar.update(1, "migrations")
        demo_data.load_demo(k, on_step=lambda label: bar.update(1, label))

    click.echo(f"\nDemo accounts (password: {demo_data.DEMO_PASSWORD}):")
    width = max(len(a.email) for a in demo_data.ACCOUNTS)
    for account in demo_data.ACCOUNTS:
        click.echo(f"  {account.email:<{width}}  {_roles(account)}")
    slugs = ", ".join(i.slug for i in demo_data.INSTITUTIONS)
    click.echo(f"Institutions: default, {slugs}")
    click.echo("Serve the API with: kalpla serve")
