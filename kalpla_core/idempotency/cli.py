"""``kalpla idempotency purge``: forget idempotency keys past their lifetime."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup

from kalpla_core.db import utcnow
from kalpla_core.idempotency.service import KEY_TTL, purge_expired

idempotency = AppGroup("idempotency", help="Idempotency keys.")


@idempotency.command("purge")
def purge() -> None:
    """Delete the stored idempotency keys older than their lifetime (24 hours), whose
    requests would no longer be replayed anyway. Run it daily, say."""
    kalpla = current_app.extensions["kalpla"]
    with kalpla.db.session() as session:
        removed = purge_expired(session, utcnow())
    hours = int(KEY_TTL.total_seconds() // 3600)
    click.echo(f"{removed} idempotency key(s) older than {hours} hours removed.")
