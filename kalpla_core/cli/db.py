"""``kalpla db …``: the core's migrations and one Alembic branch per plugin."""

from __future__ import annotations

import click
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from flask.cli import AppGroup

from kalpla_core import migrate
from kalpla_core.cli.group import kalpla


@click.group(cls=AppGroup)
def db() -> None:
    """Schema migrations: branch 'core' plus one branch per plugin."""


@db.command()
@click.option("--plugin", metavar="NAME", help="Upgrade only this plugin's branch.")
def upgrade(plugin: str | None) -> None:
    """Upgrade the core and every loaded plugin (or one plugin) to their newest revision."""
    try:
        branches = migrate.upgrade(kalpla(), plugin)
    except LookupError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Upgraded to head: {', '.join(branches)}")


@db.command()
@click.argument("target")
def downgrade(target: str) -> None:
    """Downgrade to TARGET: 'example@base' removes a plugin's tables, 'core@-1' undoes the
    core's newest revision."""
    try:
        migrate.downgrade(kalpla(), target)
    except (CommandError, RevisionError) as exc:
        raise click.ClickException(f"Cannot downgrade to {target!r}: {exc}") from None
    click.echo(f"Downgraded to {target}")


@db.command()
def current() -> None:
    """The applied revision of each branch, compared with the newest."""
    k = kalpla()
    try:
        applied = migrate.current(k)
    except LookupError as exc:
        raise click.ClickException(str(exc)) from None
    newest = migrate.heads(k)
    width = max(map(len, applied), default=0)
    for branch, revision in applied.items():
        head = newest.get(branch)
        if revision is None:
            state = "not applied"
        elif revision == head:
            state = "head"
        else:
            state = f"behind, head is {head}"
        click.echo(f"{branch:<{width}}  {revision or '-'}  ({state})")


@db.command()
def heads() -> None:
    """The newest revision of each branch."""
    newest = migrate.heads(kalpla())
    width = max(map(len, newest), default=0)
    for branch, revision in sorted(newest.items()):
        click.echo(f"{branch:<{width}}  {revision}")
