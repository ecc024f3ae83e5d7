"""The mail port: templates, the outbox provider, the SMTP provider against a real local SMTP
server (aiosmtpd), and ``kalpla mail``."""

from __future__ import annotations

import email
import email.policy
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from click.testing import CliRunner
from sqlalchemy import select

from kalpla_core.cli import make_cli
from kalpla_core.jobs.models import Job
from kalpla_core.mail.models import OutboxMessage
from kalpla_core.mail.providers import SMTPConfig
from kalpla_core.mail.service import render, send_mail
from tests.identity.accounts_support import PASSWORD, Accounts, fast_hashing, token_in

TEMPLATES = {
    "verify_email": {"token": "T0KEN", "link": "https://x.test/verify-email?token=T0KEN",
                     "expires_hours": 48},
    "password_reset": {"token": "T0KEN", "link": "https://x.test/reset-password?token=T0KEN",
                       "expires_minutes": 60},
    "password_changed": {"when": "2030-01-01 10:00", "reset": False},
    "mfa_enabled": {"when": "2030-01-01 10:00"},
    "mfa_disabled": {"when": "2030-01-01 10:00"},
}


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_every_template_renders_subject_text_and_escaped_html(template):
    subject, text, html = render(template, name="<b>Zoë</b>", email="zoe@example.test",
                                 **TEMPLATES[template])
    assert subject and "\n" not in subject and "Kalpla" in subject
    assert "<b>Zoë</b>" in text and "zoe@example.test" in text
    assert html is not None and "&lt;b&gt;Zoë&lt;/b&gt;" in html and "<b>Zoë" not in html
    if "token" in TEMPLATES[template]:
        assert "T0KEN" in text and TEMPLATES[template]["link"] in text


def test_outbox_provider_stores_the_mail_and_logs_no_body(app, caplog):
    caplog.set_level(logging.DEBUG)
    kalpla = app.extensions["kalpla"]
    with kalpla.db.session() as s:
        send_mail(s, kalpla, "pat@example.test", "verify_email", name="Pat",
                  email="pat@example.test", token="S3CRET-TOKEN",
                  link="https://x.test/verify-email?token=S3CRET-TOKEN", expires_hours=48)
    with kalpla.db.session() as s:
        (row,) = s.scalars(select(OutboxMessage))
        assert row.status == "stored" and row.provider == "outbox"
        assert "S3CRET-TOKEN" in row.body_text
    lines = [r for r in caplog.records if r.getMessage() == "mail stored in the outbox"]
    assert len(lines) == 1 and lines[0].mail_id == row.id
    everything = " ".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert "S3CRET-TOKEN" not in everything


def test_mail_is_not_sent_when_the_transaction_rolls_back(app):
    kalpla = app.extensions["kalpla"]
    with pytest.raises(RuntimeError), kalpla.db.session() as s:
        send_mail(s, kalpla, "pat@example.test", "mfa_enabled", name="", email="p",
                  when="now")
        raise RuntimeError("the request failed")
    with kalpla.db.session() as s:
        assert s.scalar(select(OutboxMessage)) is None


# --- SMTP ------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Inbox:
    """What the local SMTP server received."""

    messages: list[Any] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str,
                     auth_data: Any) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            self.logins.append((auth_data.login.decode(), auth_data.password.decode()))
            return AuthResult(success=auth_data.password == b"p@ss word")
        return AuthResult(success=False)


@pytest.fixture
def smtp_server() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = _free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port,
                            authenticator=inbox.authenticate, auth_require_tls=False)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


def test_verification_mail_arrives_over_smtp_with_a_working_link(make_app, smtp_server,
                                                                  monkeypatch):
    fast_hashing(monkeypatch)
    inbox, port = smtp_server
    app = make_app(mail="smtp", base_url="https://learn.example.test",
                   smtp_url=f"smtp://mailer:p%40ss%20word@127.0.0.1:{port}"
                            "?from=Kalpla%20%3Cno-reply%40learn.example.test%3E")
    accounts = Accounts(app, app.test_client())
    kalpla = app.extensions["kalpla"]

    assert accounts.register("quinn@example.test", name="Quinn").status_code == 201
    assert kalpla.jobs.wait(20)

    assert inbox.logins == [("mailer", "p@ss word")]
    (sender, recipients, message) = inbox.messages[0]
    assert sender == "no-reply@learn.example.test"
    assert recipients == ["quinn@example.test"]
    assert message["Subject"] == "Confirm your e-mail address for Kalpla"
    assert message["From"] == "Kalpla <no-reply@learn.example.test>"
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    assert "https://learn.example.test/verify-email?token=" in text
    token = token_in(text, "verify-email")
    assert token in html

    with kalpla.db.session() as s:
        row = s.scalar(select(OutboxMessage))
        assert (row.provider, row.status, row.error) == ("smtp", "sent", None)
        assert row.sent_at is not None
        assert row.body_text == "" and row.body_html is None  # the token is not kept
        job = s.scalar(select(Job).where(Job.name == "mail.deliver"))
        assert job.status == "succeeded" and job.params == {"message_id": row.id}

    assert accounts.client.post("/api/v1/auth/verify-email",
                                json={"token": token}).status_code == 204
    assert accounts.login("quinn@example.test", PASSWORD).status_code == 200


def test_smtp_failure_marks_the_mail_failed_without_breaking_the_request(make_app,
                                                                         monkeypatch):
    fast_hashing(monkeypatch)
    app = make_app(mail="smtp", smtp_url=f"smtp://127.0.0.1:{_free_port()}?timeout=2")
    accounts = Accounts(app, app.test_client())
    kalpla = app.extensions["kalpla"]
    assert accounts.register("ray@example.test").status_code == 201
    assert kalpla.jobs.wait(20)
    with kalpla.db.session() as s:
        row = s.scalar(select(OutboxMessage))
        assert row.status == "failed" and "ConnectionRefusedError" in row.error
        assert row.body_text  # kept, so that it can be sent again
        job = s.scalar(select(Job).where(Job.name == "mail.deliver"))
        assert job.status == "failed" and job.error == "The mail could not be delivered."


def test_smtp_url_forms():
    plain = SMTPConfig.from_url("smtp://mail.example.test", "d@example.test")
    assert (plain.host, plain.port, plain.use_ssl, plain.starttls) == (
        "mail.example.test", 25, False, False)
    assert plain.sender == "d@example.test" and plain.username is None
    tls = SMTPConfig.from_url("smtps://u%40x:s%2Fcret@mail.example.test", "d@example.test")
    assert (tls.port, tls.use_ssl, tls.username, tls.password) == (465, True, "u@x", "s/cret")
    submission = SMTPConfig.from_url("smtp://mail.example.test?starttls=true&from=a%40b.test",
                                     "d@example.test")
    assert (submission.port, submission.starttls, submission.sender) == (587, True, "a@b.test")


# --- kalpla mail -----------------------------------------------------------------------------

def test_kalpla_mail_list_and_show(make_app):
    app = make_app()
    kalpla = app.extensions["kalpla"]
    with kalpla.db.session() as s:
        for who in ("sam@example.test", "tia@example.test"):
            send_mail(s, kalpla, who, "mfa_enabled", name="", email=who, when="now")
    cli = make_cli(create_app=make_app)  # a fresh app per command, on the same database
    runner = CliRunner()

    listed = runner.invoke(cli, ["mail", "list"])
    assert listed.exit_code == 0, listed.output
    lines = listed.output.strip().splitlines()
    assert len(lines) == 2 and "tia@example.test" in lines[0] and "stored" in lines[0]
    only = runner.invoke(cli, ["mail", "list", "--to", "SAM@example.test"])
    assert "sam@example.test" in only.output and "tia@" not in only.output

    with kalpla.db.session() as s:
        first = s.scalar(select(OutboxMessage.id).where(OutboxMessage.to == "sam@example.test"))
    shown = runner.invoke(cli, ["mail", "show", str(first)])
    assert shown.exit_code == 0 and "authenticator app was turned on" in shown.output
    missing = runner.invoke(cli, ["mail", "show", "999999"])
    assert missing.exit_code != 0 and "There is no mail 999999" in missing.output
