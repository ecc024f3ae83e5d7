"""Helpers for the account, token, MFA, mail and rate-limit tests: walk the HTTP API the way a
client does, and read what the server stored."""

from __future__ import annotations

import re
import time
from typing import Any

import pyotp
import pytest
from argon2 import PasswordHasher
from sqlalchemy import select

from kalpla_core.identity import passwords
from kalpla_core.identity.models import User
from kalpla_core.mail.models import OutboxMessage
from kalpla_core.ratelimit import limiter_of

PASSWORD = "a long and unusual passphrase"
NEW_PASSWORD = "another quite unusual phrase"


def fast_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """argon2id with small parameters, so that the HTTP tests (a hash per login) stay quick;
    the code paths are the same, and rehashing is tested against these parameters."""
    monkeypatch.setattr(passwords, "_hasher",
                        PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def token_in(text: str, path: str) -> str:
    """The token of the ``…/<path>?token=…`` link in a mail body."""
    match = re.search(rf"/{path}\?token=([A-Za-z0-9_-]+)", text)
    assert match, f"no {path} link in the mail"
    return match.group(1)


def totp_now(secret: str, steps: int = 0) -> str:
    totp = pyotp.TOTP(secret)
    return totp.at(int(time.time()) + steps * totp.interval)


def without_request_id(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "request_id"}


class Accounts:
    """A test client that knows the account endpoints. Creating one clears the rate-limit
    counters, which outlive an app when they are kept in Redis."""

    def __init__(self, app: Any, client: Any) -> None:
        self.app = app
        self.client = client
        self.kalpla = app.extensions["kalpla"]
        limiter_of(app).reset()

    # --- reading what the server stored ---------------------------------------------------

    def mails(self, to: str, template: str | None = None) -> list[OutboxMessage]:
        with self.kalpla.db.session() as s:
            stmt = select(OutboxMessage).where(OutboxMessage.to == to).order_by(OutboxMessage.id)
            rows = list(s.scalars(stmt))
        return [m for m in rows if template is None or m.template == template]

    def user(self, email: str) -> User:
        with self.kalpla.db.session() as s:
            user = s.scalar(select(User).where(User.email == email))
            assert user is not None
            return user

    def update_user(self, email: str, **values: Any) -> None:
        with self.kalpla.db.session() as s:
            user = s.scalar(select(User).where(User.email == email))
            assert user is not None
            for key, value in values.items():
                setattr(user, key, value)

    # --- the API --------------------------------------------------------------------------

    def register(self, email: str, password: str = PASSWORD, name: str = "Ann Example",
                 **kw: Any) -> Any:
        return self.client.post("/api/v1/auth/register",
                                json={"email": email, "password": password, "name": name}, **kw)

    def verify(self, email: str) -> Any:
        mail = self.mails(email, "verify_email")[-1]
        return self.client.post("/api/v1/auth/verify-email",
                                json={"token": token_in(mail.body_text, "verify-email")})

    def signed_up(self, email: str, password: str = PASSWORD) -> str:
        """Register and verify over HTTP; the user's id."""
        resp = self.register(email, password)
        assert resp.status_code == 201, resp.json
        assert self.verify(email).status_code == 204
        return resp.json["id"]

    def login(self, email: str, password: str = PASSWORD, **kw: Any) -> Any:
        return self.client.post("/api/v1/auth/token",
                                json={"email": email, "password": password}, **kw)

    def tokens(self, email: str, password: str = PASSWORD) -> dict[str, Any]:
        resp = self.login(email, password)
        assert resp.status_code == 200, resp.json
        assert "access_token" in resp.json, resp.json
        return resp.json

    def refresh(self, refresh_token: str) -> Any:
        return self.client.post("/api/v1/auth/refresh", json={"refresh_token": refresh_token})

    def me(self, access_token: str) -> Any:
        return self.client.get("/api/v1/me", headers=bearer(access_token))

    def enable_totp(self, access_token: str) -> tuple[str, list[str]]:
        """Enrol and confirm TOTP; the secret and the recovery codes."""
        resp = self.client.post("/api/v1/me/mfa/totp", headers=bearer(access_token))
        assert resp.status_code == 201, resp.json
        secret = resp.json["secret"]
        resp = self.client.post("/api/v1/me/mfa/totp/confirm", headers=bearer(access_token),
                                json={"code": totp_now(secret)})
        assert resp.status_code == 200, resp.json
        return secret, resp.json["recovery_codes"]
