"""Providers of the ``mail`` port.

A provider is built once per app by ``factory(app)`` and offers:

- ``background: bool`` — False: ``send`` is called inside the sender's transaction (it only
  records); True: ``send`` is called later by the ``mail.deliver`` job, so a slow or failing
  mail server never holds up or breaks a request;
- ``send(message: MailMessage) -> None`` — deliver, or raise to mark the mail failed.

The core ships ``outbox`` (the default: the ``mail_outbox`` row is the mail, readable with
``kalpla mail list``) and ``smtp`` (``KALPLA_SMTP_URL``); a plugin adds another (SES, say)
through the ``kalpla_providers`` hook.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

log = logging.getLogger("kalpla.mail")


@dataclass(frozen=True)
class MailMessage:
    to: str
    subject: str
    text: str
    html: str | None = None
    template: str = ""
    message_id: int | None = None  # the mail_outbox row


class OutboxProvider:
    """Stores mail in ``mail_outbox`` only and logs one line saying so (never the body, which
    may hold a one-time token)."""

    background = False

    def __init__(self, _app: Any = None) -> None:
        pass

    def send(self, message: MailMessage) -> None:
        log.info("mail stored in the outbox", extra={
            "mail_id": message.message_id, "template": message.template,
            "subject": message.subject})


@dataclass(frozen=True)
class SMTPConfig:
    host: str
    port: int
    use_ssl: bool
    starttls: bool
    username: str | None
    password: str | None
    sender: str
    timeout: float = 10.0

    @classmethod
    def from_url(cls, url: str, default_sender: str) -> SMTPConfig:
        """``smtp://[user:password@]host[:port][?from=addr&starttls=true]`` or ``smtps://…``
        (TLS from the first byte)."""
        parsed = urlparse(url)
        query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        use_ssl = parsed.scheme == "smtps"
        starttls = query.get("starttls", "").lower() in ("1", "true", "yes")
        return cls(host=parsed.hostname or "localhost",
                   port=parsed.port or (465 if use_ssl else 587 if starttls else 25),
                   use_ssl=use_ssl, starttls=starttls,
                   username=unquote(parsed.username) if parsed.username else None,
                   password=unquote(parsed.password) if parsed.password else None,
                   sender=query.get("from") or default_sender,
                   timeout=float(query.get("timeout", 10)))


def build_email(message: MailMessage, sender: str) -> EmailMessage:
    email = EmailMessage()
    email["From"] = sender
    email["To"] = message.to
    email["Subject"] = message.subject
    email["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2].strip("> ") or None)
    email.set_content(message.text)
    if message.html:
        email.add_alternative(message.html, subtype="html")
    return email


class SMTPProvider:
    """Sends through an SMTP server named by ``KALPLA_SMTP_URL``, from the ``mail.deliver``
    background job."""

    background = True

    def __init__(self, app: Any) -> None:
        settings = app.extensions["kalpla"].settings
        if not settings.smtp_url:
            raise LookupError("the smtp mail provider needs KALPLA_SMTP_URL")
        host = urlparse(settings.base_url).hostname or "localhost"
        self.config = SMTPConfig.from_url(settings.smtp_url, f"Kalpla <no-reply@{host}>")

    def send(self, message: MailMessage) -> None:
        cfg = self.config
        email = build_email(message, cfg.sender)
        smtp: smtplib.SMTP
        if cfg.use_ssl:
            smtp = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout,
                                    context=ssl.create_default_context())
        else:
            smtp = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout)
        with smtp:
            if cfg.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if cfg.username:
                smtp.login(cfg.username, cfg.password or "")
            smtp.send_message(email)
        log.info("mail sent over SMTP", extra={"mail_id": message.message_id,
                                               "template": message.template})
