"""``kalpla files purge-pending``: delete abandoned uploads, for cron or a scheduler."""

from __future__ import annotations

from datetime import timedelta

import click
from flask import current_app
from flask.cli import AppGroup

from kalpla_core.storage.purge import DEFAULT_GRACE_MINUTES, purge_pending

files = AppGroup("files", help="Stored files.")


@files.command("purge-pending")
@click.option("--older-than", "older_than", type=click.IntRange(min=0),
              default=DEFAULT_GRACE_MINUTES, show_default=True, metavar="MINUTES",
              help="Grace period after the 15-minute upload window has ended.")
def purge_pending_command(older_than: int) -> None:
    """Delete pending files whose upload window ended more than MINUTES ago: uploads never
    sent, never confirmed, or refused on confirm; their stored objects first, then their
    rows. Run it hourly, say; a file that cannot be deleted is logged, kept for the next
    run, and makes the command exit with status 1."""
    result = purge_pending(current_app.extensions["kalpla"], timedelta(minutes=older_than))
    click.echo(f"{result.purged} pending upload(s) purged, {result.failed} failed.")
    if result.failed:
        click.get_current_context().exit(1)
