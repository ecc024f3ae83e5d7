"""``kalpla mail …``: read the outbox (the default mail provider keeps mail there)."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy import select

from kalpla_core.mail.models import OutboxMessage

mail = AppGroup("mail", help="Read the mail outbox.")


@mail.command("list")
@click.option("--to", "recipient", default=None, help="Only mail to this address.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
def list_mail(recipient: str | None, limit: int) -> None:
    """The most recent mail, newest first: id, time, status, recipient, subject."""
    kalpla = current_app.extensions["kalpla"]
    stmt = select(OutboxMessage).order_by(OutboxMessage.id.desc()).limit(limit)
    if recipient:
        stmt = stmt.where(OutboxMessage.to == recipient.strip().lower())
    with kalpla.db.session() as session:
        rows = list(session.scalars(stmt))
        if not rows:
            click.echo("The outbox is empty.")
            return
        for row in rows:
            when = row.created_at.strftime("%Y-%m-%d %H:%M:%S")
            click.echo(f"{row.id:>6}  {when}  {row.status:<7} {row.to}  {row.subject}")


@mail.command("show")
@click.argument("message_id", type=int)
def show_mail(message_id: int) -> None:
    """One mail with its text body (as stored: mail already delivered over SMTP is kept
    without its body)."""
    kalpla = current_app.extensions["kalpla"]
    with kalpla.db.session() as session:
        row = session.get(OutboxMessage, message_id)
        if row is None:
            raise click.ClickException(f"There is no mail {message_id}.")
        click.echo(f"To: {row.to}\nSubject: {row.subject}\nTemplate: {row.template}\n"
                   f"Provider: {row.provider}\nStatus: {row.status}\n")
        click.echo(row.body_text or "(body not kept)")
