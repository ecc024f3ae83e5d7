"""Privacy: exporting a user's data (core and plugins) and deleting the account."""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from kalpla_core.audit.models import AuditEvent
from kalpla_core.contract import PluginMeta
from kalpla_core.db import utcnow
from kalpla_core.hookspecs import hookimpl
from kalpla_core.identity.models import (
    APIKey,
    EmailToken,
    LoginThrottle,
    Membership,
    RecoveryCode,
    RefreshToken,
    TOTPDevice,
    User,
    UserIdentity,
)
from kalpla_core.identity.sessions import start_session
from kalpla_core.jobs.models import Job
from kalpla_core.mail.models import OutboxMessage
from kalpla_core.testing import Factories

pytestmark = pytest.mark.plugins("example")

PROBLEM = "application/problem+json"
PASSWORD = "correct horse battery"
MAIL_SECRET = "one-time-link-token-7f3a"


def _problem(response, status: int) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.content_type == PROBLEM
    return response.get_json(force=True)


def _login(app, user) -> dict:
    """A real session: refresh-token family plus an access token bound to it."""
    kalpla = app.extensions["kalpla"]
    with kalpla.db.session() as s:
        pair = start_session(s, kalpla, s.get(User, user.id), ip="203.0.113.7",
                             user_agent="TestBrowser/1.0")
    return {"Authorization": f"Bearer {pair.access_token}", "_refresh": pair.refresh_token}


def _populate(app, factories, db, user, school, client):
    """Give ``user`` a row in every table that holds personal data; return the secrets."""
    login = _login(app, user)
    headers = {"Authorization": login["Authorization"]}
    r = client.post("/api/v1/example/notes", json={"body": "my note"},
                    headers={**headers, "Kalpla-Institution": school.slug})
    assert r.status_code == 201, r.json
    key = client.post(f"/api/v1/institutions/{school.slug}/api-keys",
                      json={"name": "mine", "scopes": ["members.manage"]}, headers=headers).json
    db.add_all([
        TOTPDevice(user_id=user.id, secret_encrypted=b"encrypted-totp-secret",
                   confirmed_at=utcnow()),
        RecoveryCode(user_id=user.id, code_hash="argon2-recovery-code-hash"),
        UserIdentity(user_id=user.id, provider="https://idp.example.test", subject=f"sub-{user.id}",
                     email=user.email),
        EmailToken(user_id=user.id, purpose="verify_email", token_hash=user.id * 2,
                   expires_at=utcnow() + timedelta(hours=1)),
        Job(name="example.report", owner_id=user.id, params={"month": "2030-01"},
            status="succeeded", result={"rows": 3}, error=None),
        OutboxMessage(to=user.email, subject="Verify your address",
                      body_text=f"https://kalpla.test/verify?token={MAIL_SECRET}",
                      template="verify_email", provider="outbox", status="stored"),
        AuditEvent(action="login.failed", actor_id=user.id, ip="198.51.100.9",
                   data={"email": user.email, "reason": "password"}),
    ])
    db.commit()
    refresh = db.scalar(select(RefreshToken).where(RefreshToken.user_id == user.id))
    return {"refresh": login["_refresh"], "refresh_hash": refresh.token_hash,
            "api_key": key["key"], "email_token_hash": user.id * 2, "headers": headers}


@pytest.fixture
def school(factories):
    return factories.institution("school", plugins=["example"])


def test_export_holds_core_and_plugin_data_without_secrets(app, client, factories, db, school):
    user = factories.user(email="Ada@Example.test", name="Ada", roles={school: ["admin"]})
    other = factories.user(roles={school: ["admin"]})
    secrets = _populate(app, factories, db, user, school, client)
    _populate(app, factories, db, other, school, client)

    r = client.get("/api/v1/me/export", headers=secrets["headers"])
    assert r.status_code == 200, r.json
    assert r.headers["Cache-Control"] == "no-store"
    data = r.json
    assert data["format"] == "kalpla-user-export/1"
    assert data["profile"]["email"] == "Ada@Example.test" and data["profile"]["name"] == "Ada"
    assert data["memberships"] == [{"institution": "school", "institution_name": "School",
                                    "role": "admin", "since": data["memberships"][0]["since"]}]
    (session,) = data["sessions"]
    assert session["ip"] == "203.0.113.7" and session["user_agent"] == "TestBrowser/1.0"
    assert data["mfa"]["totp"]["confirmed_at"] and data["mfa"]["recovery_codes_unused"] == 1
    assert data["identities"][0]["subject"] == f"sub-{user.id}"
    assert [t["purpose"] for t in data["email_tokens"]] == ["verify_email"]
    assert [k["name"] for k in data["api_keys"]] == ["mine"]
    assert {"login.succeeded", "apikey.created", "login.failed"} <= {
        e["action"] for e in data["audit_events"]}
    assert [(j["name"], j["result"]) for j in data["jobs"]] == [("example.report", {"rows": 3})]
    assert [(m["subject"], m["template"]) for m in data["mail"]] == [
        ("Verify your address", "verify_email")]
    assert [n["body"] for n in data["plugins"]["example"]["notes"]] == ["my note"]

    text = json.dumps(data)
    for secret in (secrets["refresh"], secrets["refresh_hash"], secrets["api_key"],
                   secrets["api_key"].split("_", 2)[2], MAIL_SECRET,
                   secrets["email_token_hash"],
                   "argon2-recovery-code-hash", "encrypted-totp-secret",
                   secrets["headers"]["Authorization"].split()[1]):
        assert secret not in text
    # Nothing of the other user.
    assert other.id not in text and other.email not in text


def test_export_is_refused_to_anonymous_callers_and_api_keys(client, factories, school):
    admin = factories.user(roles={school: ["admin"]})
    key = client.post("/api/v1/institutions/school/api-keys",
                      json={"name": "k", "scopes": ["members.manage"]},
                      headers=factories.auth(admin)).json["key"]
    _problem(client.get("/api/v1/me/export"), 401)
    _problem(client.get("/api/v1/me/export", headers={"X-API-Key": key}), 403)
    _problem(client.delete("/api/v1/me", json={"password": PASSWORD}), 401)
    _problem(client.delete("/api/v1/me", json={"password": PASSWORD},
                           headers={"X-API-Key": key}), 403)
    assert client.get("/api/v1/me", headers=factories.auth(admin)).status_code == 200


def test_delete_erases_everything_and_nothing_authenticates(app, client, factories, db, school,
                                                             caplog):
    caplog.set_level(logging.DEBUG)
    user = factories.user(email="ada@example.test", name="Ada",
                          roles={school: ["mentor", "admin"]})
    factories.user(roles={school: ["admin"]})  # so that Ada is not the last admin
    secrets = _populate(app, factories, db, user, school, client)
    old_token = factories.auth(user)
    client.post("/api/v1/auth/token", json={"email": "ada@example.test", "password": "nope"})
    assert db.scalar(select(func.count()).select_from(LoginThrottle)) == 1

    r = client.delete("/api/v1/me", json={"password": PASSWORD}, headers=secrets["headers"])
    assert r.status_code == 204, r.get_data(as_text=True)
    assert PASSWORD not in caplog.text

    # No way in: access tokens of every kind, the API key, the refresh token.
    for headers in (old_token, secrets["headers"], {"X-API-Key": secrets["api_key"]}):
        _problem(client.get("/api/v1/me", headers=headers), 401)
        _problem(client.get("/api/v1/me/export", headers=headers), 401)
    db.expire_all()
    assert db.scalar(select(func.count()).select_from(RefreshToken).where(
        RefreshToken.user_id == user.id, RefreshToken.revoked_at.is_(None))) == 0

    row = db.get(User, user.id)
    assert row.email == f"deleted-{user.id}@invalid" and row.name == ""
    assert row.password_hash is None and not row.is_active and row.deleted_at is not None
    for model in (TOTPDevice, RecoveryCode, UserIdentity, EmailToken, Membership):
        assert db.scalar(select(func.count()).select_from(model)
                         .where(model.user_id == user.id)) == 0
    assert db.scalar(select(APIKey.revoked_at).where(APIKey.created_by == user.id)) is not None
    assert db.scalar(select(func.count()).select_from(LoginThrottle)) == 0
    assert db.scalar(select(func.count()).select_from(OutboxMessage)
                     .where(OutboxMessage.to == "ada@example.test")) == 0
    sessions = db.scalars(select(RefreshToken).where(RefreshToken.user_id == user.id)).all()
    assert {(s.ip, s.user_agent) for s in sessions} == {("", "")}
    # The audit log keeps the actor id, without the address or IP.
    events = db.scalars(select(AuditEvent).where(AuditEvent.actor_id == user.id)).all()
    assert {"login.succeeded", "login.failed", "user.deleted"} <= {e.action for e in events}
    # The seeded failure and the real one: neither keeps the IP or the address.
    failed = [e for e in events if e.action == "login.failed"]
    assert sorted((e.ip, sorted(e.data.items())) for e in failed) == [
        ("", [("method", "password")]), ("", [("reason", "password")])]
    assert all("ada@example.test" not in json.dumps(e.data).lower() for e in events)
    # The example plugin erased its part.
    mentor = factories.user(roles={school: ["mentor"]})
    r = client.get("/api/v1/example/notes", headers=factories.auth(mentor, school))
    assert "my note" not in [n["body"] for n in r.json["items"]]
    # The address is free again.
    assert factories.user(email="ada@example.test").id != user.id


def test_delete_needs_the_password_or_a_recent_login(app, client, factories, db):
    user = factories.user()
    _problem(client.delete("/api/v1/me", json={}, headers=factories.auth(user)), 403)
    body = _problem(client.delete("/api/v1/me", json={"password": "wrong password!"},
                                  headers=factories.auth(user)), 403)
    assert body["type"].endswith("invalid-credentials")
    # The failure is recorded, and counts towards the account's lockout.
    assert db.scalar(select(AuditEvent.action).where(AuditEvent.actor_id == user.id)) == \
        "account.delete.failed"
    assert db.scalar(select(LoginThrottle.failures)) == 1
    # A session begun long ago is not a recent login.
    stale = _login(app, user)
    db.execute(RefreshToken.__table__.update().where(RefreshToken.user_id == user.id)
               .values(created_at=utcnow() - timedelta(minutes=30)))
    db.commit()
    _problem(client.delete("/api/v1/me", headers={"Authorization": stale["Authorization"]},
                           json={}), 403)
    assert db.get(User, user.id).deleted_at is None
    # A fresh login needs no password.
    fresh = _login(app, user)
    r = client.delete("/api/v1/me", headers={"Authorization": fresh["Authorization"]}, json={})
    assert r.status_code == 204
    db.expire_all()
    assert db.get(User, user.id).deleted_at is not None


def test_the_last_admin_cannot_delete_their_account(client, factories, db, school):
    admin = factories.user(roles={school: ["admin"]})
    body = _problem(client.delete("/api/v1/me", json={"password": PASSWORD},
                                  headers=factories.auth(admin)), 409)
    assert body["institutions"] == ["school"]
    assert db.get(User, admin.id).deleted_at is None


class Failing:
    KALPLA_PLUGIN = PluginMeta(name="failing", version="1.0", core_requires=">=0.1")

    @staticmethod
    @hookimpl
    def kalpla_user_erase(session, user_id):
        raise RuntimeError("the plugin's store is unreachable")


def test_a_failing_plugin_erases_nothing(make_app, db):
    app = make_app(plugins=["example", "failing"], plugin_objects={"failing": Failing})
    factories = Factories(app)
    client = app.test_client()
    school = factories.institution("school", plugins=["example"])
    user = factories.user(roles={school: ["mentor"]})
    headers = factories.auth(user, school)
    assert client.post("/api/v1/example/notes", json={"body": "keep me"},
                       headers=headers).status_code == 201

    body = _problem(client.delete("/api/v1/me", json={"password": PASSWORD}, headers=headers),
                    500)
    assert body["type"].endswith("erasure-failed")
    # The example plugin ran first and deleted the note; the rollback restored it.
    r = client.get("/api/v1/example/notes", headers=headers)
    assert "keep me" in [n["body"] for n in r.json["items"]]
    assert client.get("/api/v1/me", headers=headers).status_code == 200
    row = db.get(User, user.id)
    assert row.deleted_at is None and row.password_hash is not None
    assert db.scalar(select(func.count()).select_from(Membership)
                     .where(Membership.user_id == user.id)) == 1
