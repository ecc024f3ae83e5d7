"""``kalpla payments …`` commands."""

from __future__ import annotations

import click
from flask import current_app

from kalpla_core.toolkit import utcnow


@click.group("payments")
def payments() -> None:
    """Payments: reconcile with the gateways."""


@payments.command("reconcile")
def reconcile() -> None:
    """Ask the gateways about pending orders and about subscriptions whose period ran out or
    ends within a day, and apply what lost webhooks would have; expire pending orders past
    their time and subscriptions past their period; drop refunds held for a month."""
    from kalpla_payments.webhooks import reconcile as _reconcile

    kalpla = current_app.extensions["kalpla"]
    with kalpla.db.session() as session:
        result = _reconcile(session, kalpla, utcnow())
    click.echo(" ".join(f"{k}={v}" for k, v in result.items()))
