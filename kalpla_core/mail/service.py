"""Sending mail: render a template, record it in ``mail_outbox`` inside the caller's unit of
work, and hand it to the configured provider (``KALPLA_MAIL``). No Flask request needed.

Every mail is a row whatever the provider, so a rolled-back transaction sends nothing. A
background provider (``smtp``) is reached by the ``mail.deliver`` job after the commit; once it
has accepted the mail, the stored body is blanked, since it may carry a one-time token.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, PackageLoader, StrictUndefined, Template
from sqlalchemy.orm import Session

from kalpla_core.db import utcnow
from kalpla_core.mail.models import OutboxMessage
from kalpla_core.mail.providers import MailMessage

if TYPE_CHECKING:
    from kalpla_core.app import Kalpla
    from kalpla_core.jobs import JobContext

log = logging.getLogger("kalpla.mail")

PRODUCT = "Kalpla"
DELIVER_JOB = "mail.deliver"


@cache
def _environment() -> Environment:
    # Autoescaping is switched on inside each template's html block only.
    return Environment(loader=PackageLoader("kalpla_core", "templates/mail"),  # noqa: S701
                       undefined=StrictUndefined, keep_trailing_newline=False)


def _block(template: Template, name: str, context: dict[str, Any]) -> str:
    render = template.blocks.get(name)
    if render is None:
        return ""
    return "".join(render(template.new_context(context))).strip()


def render(template_name: str, **context: Any) -> tuple[str, str, str | None]:
    """Subject, text and HTML of ``templates/mail/<template_name>.jinja``: one file with the
    blocks ``subject``, ``text`` and (optionally) ``html``."""
    template = _environment().get_template(f"{template_name}.jinja")
    values = {"product": PRODUCT, **context}
    subject = " ".join(_block(template, "subject", values).split())
    html = _block(template, "html", values) or None
    return subject, _block(template, "text", values) + "\n", html


def provider_of(kalpla: Kalpla, name: str | None = None) -> Any:
    return kalpla.providers.get("mail", name or kalpla.settings.mail, kalpla.app)


def send_mail(session: Session, kalpla: Kalpla, to: str, template: str,
              **context: Any) -> OutboxMessage:
    """Render ``template`` for ``to`` and send it through the configured provider once
    ``session`` commits (the ``outbox`` provider: at once, in the same transaction)."""
    subject, text, html = render(template, **context)
    provider_name = kalpla.settings.mail
    provider = provider_of(kalpla, provider_name)
    row = OutboxMessage(to=to, subject=subject[:300], body_text=text, body_html=html,
                        template=template, provider=provider_name, status="queued")
    session.add(row)
    session.flush()
    if provider.background:
        kalpla.jobs.enqueue(session, DELIVER_JOB, {"message_id": row.id})
    else:
        provider.send(_message(row))
        row.status = "stored"
    return row


def _message(row: OutboxMessage) -> MailMessage:
    return MailMessage(to=row.to, subject=row.subject, text=row.body_text, html=row.body_html,
                       template=row.template, message_id=row.id)


def deliver_job(ctx: JobContext, message_id: int) -> dict[str, Any]:
    """The ``mail.deliver`` job: hand one queued mail to its provider."""
    from kalpla_core.jobs import JobError

    kalpla = ctx.app.extensions["kalpla"]
    with ctx.session() as session:
        row = session.get(OutboxMessage, message_id)
        if row is None or row.status != "queued":
            return {"status": row.status if row else "missing"}
        message = _message(row)
        provider_name = row.provider
    try:
        provider_of(kalpla, provider_name).send(message)
    except Exception as exc:
        log.warning("mail delivery failed", extra={"mail_id": message_id,
                                                   "error": type(exc).__name__})
        with ctx.session() as session:
            failed = session.get(OutboxMessage, message_id)
            if failed is not None:
                failed.status = "failed"
                failed.error = f"{type(exc).__name__}: {exc}"[:2000]
        raise JobError("The mail could not be delivered.") from exc
    with ctx.session() as session:
        sent = session.get(OutboxMessage, message_id)
        if sent is not None:
            sent.status, sent.sent_at, sent.error = "sent", utcnow(), None
            sent.body_text, sent.body_html = "", None
    return {"status": "sent"}


def register_mail_jobs(kalpla: Kalpla) -> None:
    kalpla.jobs.register("core", DELIVER_JOB, deliver_job)
