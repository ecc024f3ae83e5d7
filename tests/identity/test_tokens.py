"""Access and refresh tokens over HTTP: issue, rotation, reuse detection, logout, and the
caller's own sessions."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import jwt
import pytest
from sqlalchemy import select, update

from kalpla_core.audit.models import AuditEvent
from kalpla_core.db import utcnow
from kalpla_core.identity.models import RefreshToken
from kalpla_core.identity.sessions import token_hash
from tests.identity.accounts_support import Accounts, bearer, fast_hashing


@pytest.fixture
def accounts(app: Any, client: Any, monkeypatch: pytest.MonkeyPatch) -> Accounts:
    fast_hashing(monkeypatch)
    return Accounts(app, client)


def _family(app: Any, refresh_token: str) -> list[RefreshToken]:
    with app.extensions["kalpla"].db.session() as s:
        row = s.scalar(select(RefreshToken).where(
            RefreshToken.token_hash == token_hash(refresh_token)))
        assert row is not None
        return list(s.scalars(select(RefreshToken).where(
            RefreshToken.family_id == row.family_id).order_by(RefreshToken.id)))


def test_access_token_is_a_signed_jwt_bound_to_its_session(accounts, client):
    user_id = accounts.signed_up("ana@example.test")
    pair = accounts.tokens("ana@example.test")
    header = jwt.get_unverified_header(pair["access_token"])
    assert header["alg"] == "ES256"
    kids = [k["kid"] for k in client.get("/.well-known/jwks.json").json["keys"]]
    assert header["kid"] in kids
    claims = jwt.decode(pair["access_token"], options={"verify_signature": False})
    assert claims["sub"] == user_id and claims["typ"] == "access"
    (row,) = _family(accounts.app, pair["refresh_token"])
    assert claims["sid"] == row.family_id
    # Only the hash of the opaque refresh token is stored.
    assert row.token_hash == token_hash(pair["refresh_token"])
    assert pair["refresh_token"] not in row.token_hash
    assert row.expires_at > utcnow() + timedelta(days=29)


def test_refresh_rotates_and_reuse_revokes_the_whole_family(accounts, app):
    user_id = accounts.signed_up("ben@example.test")
    first = accounts.tokens("ben@example.test")

    second = accounts.refresh(first["refresh_token"])
    assert second.status_code == 200, second.json
    assert second.headers["Cache-Control"] == "no-store"
    second = second.json
    assert second["refresh_token"] != first["refresh_token"]
    assert accounts.me(second["access_token"]).status_code == 200
    third = accounts.refresh(second["refresh_token"]).json

    # The first token was rotated: presenting it again is theft or a replay.
    reused = accounts.refresh(first["refresh_token"])
    assert reused.status_code == 401
    assert reused.json["type"] == "urn:kalpla:problem:invalid-refresh-token"
    assert accounts.refresh(third["refresh_token"]).status_code == 401
    family = _family(app, first["refresh_token"])
    assert len(family) == 3 and all(row.revoked_at is not None for row in family)
    with app.extensions["kalpla"].db.session() as s:
        actions = list(s.scalars(select(AuditEvent.action).where(
            AuditEvent.actor_id == user_id)))
    assert "session.refresh_reused" in actions


def test_reuse_revokes_only_the_family_concerned(accounts):
    accounts.signed_up("cat@example.test")
    laptop = accounts.tokens("cat@example.test")
    phone = accounts.tokens("cat@example.test")
    accounts.refresh(laptop["refresh_token"])
    assert accounts.refresh(laptop["refresh_token"]).status_code == 401
    assert accounts.refresh(phone["refresh_token"]).status_code == 200


def test_refresh_refuses_unknown_expired_and_malformed_tokens(accounts, app):
    accounts.signed_up("dov@example.test")
    pair = accounts.tokens("dov@example.test")
    assert accounts.refresh("not-a-token").status_code == 401
    assert accounts.client.post("/api/v1/auth/refresh", json={}).status_code == 422
    with app.extensions["kalpla"].db.session() as s:
        s.execute(update(RefreshToken).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert accounts.refresh(pair["refresh_token"]).status_code == 401


def test_access_token_is_not_a_refresh_token_and_vice_versa(accounts):
    accounts.signed_up("eli@example.test")
    pair = accounts.tokens("eli@example.test")
    assert accounts.refresh(pair["access_token"]).status_code == 401
    assert accounts.me(pair["refresh_token"]).status_code == 401


def test_logout_ends_the_current_session_only(accounts):
    accounts.signed_up("flo@example.test")
    kept = accounts.tokens("flo@example.test")
    ended = accounts.tokens("flo@example.test")
    resp = accounts.client.post("/api/v1/auth/logout", headers=bearer(ended["access_token"]))
    assert resp.status_code == 204
    assert accounts.refresh(ended["refresh_token"]).status_code == 401
    # The ended session's access token stops working at once, the other session's does not.
    assert accounts.me(ended["access_token"]).status_code == 401
    assert accounts.me(kept["access_token"]).status_code == 200
    assert accounts.refresh(kept["refresh_token"]).status_code == 200


def test_sessions_list_is_own_paginated_and_marks_the_current_one(accounts, client):
    accounts.signed_up("gil@example.test")
    accounts.signed_up("hue@example.test")
    other = accounts.tokens("hue@example.test")
    pairs = [accounts.tokens("gil@example.test") for _ in range(3)]
    headers = bearer(pairs[-1]["access_token"])

    page = client.get("/api/v1/me/sessions?limit=2", headers=headers)
    assert page.status_code == 200
    assert len(page.json["items"]) == 2 and page.json["next_cursor"]
    assert 'rel="next"' in page.headers["Link"]
    rest = client.get(f"/api/v1/me/sessions?limit=2&cursor={page.json['next_cursor']}",
                      headers=headers).json
    items = page.json["items"] + rest["items"]
    assert rest["next_cursor"] is None and len(items) == 3
    assert [i["current"] for i in items].count(True) == 1
    own = {row.family_id for p in pairs for row in _family(accounts.app, p["refresh_token"])}
    assert {i["id"] for i in items} == own
    assert all(set(i) == {"id", "last_used_at", "expires_at", "user_agent", "ip", "current"}
               for i in items)
    (theirs,) = _family(accounts.app, other["refresh_token"])
    assert theirs.family_id not in own

    # A refreshed session is listed once, with its newest token.
    accounts.refresh(pairs[0]["refresh_token"])
    listed = client.get("/api/v1/me/sessions", headers=headers).json["items"]
    assert len(listed) == 3


def test_revoking_a_session_works_for_own_sessions_only(accounts, client):
    accounts.signed_up("ivy@example.test")
    accounts.signed_up("jay@example.test")
    mine = accounts.tokens("ivy@example.test")
    spare = accounts.tokens("ivy@example.test")
    theirs = accounts.tokens("jay@example.test")
    headers = bearer(mine["access_token"])
    (spare_row,) = _family(accounts.app, spare["refresh_token"])
    (their_row,) = _family(accounts.app, theirs["refresh_token"])

    resp = client.delete(f"/api/v1/me/sessions/{their_row.family_id}", headers=headers)
    assert resp.status_code == 404
    assert accounts.refresh(theirs["refresh_token"]).status_code == 200
    assert client.delete("/api/v1/me/sessions/unknown", headers=headers).status_code == 404

    resp = client.delete(f"/api/v1/me/sessions/{spare_row.family_id}", headers=headers)
    assert resp.status_code == 204
    assert accounts.refresh(spare["refresh_token"]).status_code == 401
    listed = client.get("/api/v1/me/sessions", headers=headers).json["items"]
    assert spare_row.family_id not in {i["id"] for i in listed}


def test_session_endpoints_refuse_credentials_other_than_a_session(accounts, app, client):
    """A token issued without a session (an integration's token, say) cannot manage the
    user's sessions, password or MFA."""
    accounts.signed_up("kai@example.test")
    kalpla = app.extensions["kalpla"]
    user = accounts.user("kai@example.test")
    with kalpla.db.session() as s:
        sessionless = kalpla.keys.issue(s, user.id, {"gen": user.token_generation})
    assert accounts.me(sessionless).status_code == 200
    resp = client.get("/api/v1/me/sessions", headers=bearer(sessionless))
    assert resp.status_code == 403
    assert resp.json["type"] == "urn:kalpla:problem:session-required"
