"""One user walks the whole identity path over HTTP, as issue 3's done-when describes:
register, verify by mail, log in, enable TOTP, log in with a code, refresh, replay an old
refresh token (its family is revoked), reset the password, export, delete."""

from __future__ import annotations

from typing import Any

import pytest

from tests.identity.accounts_support import (
    NEW_PASSWORD,
    PASSWORD,
    Accounts,
    bearer,
    fast_hashing,
    token_in,
    totp_now,
)

pytestmark = pytest.mark.plugins("example")
EMAIL = "walker@example.test"


@pytest.fixture
def accounts(app: Any, client: Any, monkeypatch: pytest.MonkeyPatch) -> Accounts:
    fast_hashing(monkeypatch)
    return Accounts(app, client)


def test_the_whole_path(accounts: Accounts, factories: Any, caplog: Any) -> None:
    client = accounts.client
    # Register: refused to log in until the address is verified through the mailed link.
    user_id = accounts.register(EMAIL).json["id"]
    assert accounts.login(EMAIL).status_code == 403
    assert accounts.verify(EMAIL).status_code == 204

    # Log in, then enable TOTP.
    first = accounts.tokens(EMAIL)
    assert accounts.me(first["access_token"]).json["id"] == user_id
    secret, recovery_codes = accounts.enable_totp(first["access_token"])
    assert len(recovery_codes) == 10

    # Logging in again asks for a code; the challenge token is not an access token.
    challenge = accounts.login(EMAIL).json
    assert challenge["mfa_required"] is True and "access_token" not in challenge
    assert accounts.me(challenge["mfa_token"]).status_code == 401
    resp = client.post("/api/v1/auth/token/mfa",
                       json={"mfa_token": challenge["mfa_token"], "code": totp_now(secret, 1)})
    assert resp.status_code == 200, resp.json
    pair = resp.json

    # Refresh rotates; replaying the rotated token revokes the whole family.
    rotated = accounts.refresh(pair["refresh_token"])
    assert rotated.status_code == 200
    assert accounts.refresh(pair["refresh_token"]).status_code == 401
    assert accounts.refresh(rotated.json["refresh_token"]).status_code == 401
    assert accounts.me(rotated.json["access_token"]).status_code == 401

    # Reset the password by mail: every earlier session ends.
    client.post("/api/v1/auth/password/forgot", json={"email": EMAIL})
    reset_token = token_in(accounts.mails(EMAIL, "password_reset")[-1].body_text,
                           "reset-password")
    assert client.post("/api/v1/auth/password/reset",
                       json={"token": reset_token, "password": NEW_PASSWORD}).status_code == 204
    assert accounts.me(first["access_token"]).status_code == 401
    assert accounts.login(EMAIL, PASSWORD).status_code == 401

    # A new login (TOTP still on), then write something in a plugin, export and delete.
    challenge = accounts.login(EMAIL, NEW_PASSWORD).json
    final = client.post("/api/v1/auth/token/mfa", json={
        "mfa_token": challenge["mfa_token"], "code": recovery_codes[0]}).json
    headers = bearer(final["access_token"])
    inst = factories.institution("walkers", plugins=["example"])
    with accounts.kalpla.db.session() as s:
        from kalpla_core.identity.models import Membership

        s.add(Membership(user_id=user_id, institution_id=inst.id, role="mentor"))
    assert client.post("/api/v1/example/notes", json={"body": "my note"},
                       headers={**headers, "Kalpla-Institution": "walkers"}).status_code == 201

    export = client.get("/api/v1/me/export", headers=headers)
    assert export.status_code == 200
    body = export.get_data(as_text=True)
    assert EMAIL in body and "my note" in body
    for secret_text in (NEW_PASSWORD, secret, final["refresh_token"], *recovery_codes):
        assert secret_text not in body

    resp = client.delete("/api/v1/me", json={"password": NEW_PASSWORD}, headers=headers)
    assert resp.status_code == 204
    # Nothing authenticates the deleted account any more, by any route.
    assert accounts.me(final["access_token"]).status_code == 401
    assert accounts.refresh(final["refresh_token"]).status_code == 401
    assert accounts.login(EMAIL, NEW_PASSWORD).status_code == 401
    assert accounts.user(f"deleted-{user_id}@invalid").deleted_at is not None

    # Secrets never reached the logs.
    for secret_text in (PASSWORD, NEW_PASSWORD, secret, reset_token, pair["refresh_token"],
                        final["access_token"]):
        assert secret_text not in caplog.text
