"""Accounts over HTTP: registration, verification, password policy, login, change, forgotten
password and reset, the profile, rehashing, and accounts that may no longer authenticate."""

from __future__ import annotations

import types
from datetime import timedelta
from typing import Any

import pytest
from argon2 import PasswordHasher
from sqlalchemy import select

from kalpla_core.audit.models import AuditEvent
from kalpla_core.contract import PluginMeta, UserRegistered
from kalpla_core.db import utcnow
from kalpla_core.hookspecs import hookimpl
from kalpla_core.identity import policy
from kalpla_core.identity.models import EmailToken, Membership, User
from kalpla_core.identity.passwords import needs_rehash
from kalpla_core.institutions.models import Institution
from kalpla_core.testing import Factories
from tests.identity.accounts_support import (
    NEW_PASSWORD,
    PASSWORD,
    Accounts,
    bearer,
    fast_hashing,
    token_in,
    totp_now,
    without_request_id,
)


@pytest.fixture
def accounts(app: Any, client: Any, monkeypatch: pytest.MonkeyPatch) -> Accounts:
    fast_hashing(monkeypatch)
    return Accounts(app, client)


def _actions(app: Any, user_id: str) -> list[str]:
    with app.extensions["kalpla"].db.session() as s:
        return list(s.scalars(select(AuditEvent.action).where(AuditEvent.actor_id == user_id)
                              .order_by(AuditEvent.id)))


# --- registration and verification ---------------------------------------------------------

def test_register_creates_a_student_account_and_mails_a_verification_link(make_app,
                                                                          monkeypatch):
    fast_hashing(monkeypatch)
    seen: list[UserRegistered] = []
    listener = types.ModuleType("kalpla_listener")
    listener.KALPLA_PLUGIN = PluginMeta(name="listener", version="1.0", core_requires=">=0.1")
    listener.kalpla_user_registered = hookimpl(lambda event: seen.append(event))
    app = make_app(plugins=["listener"], plugin_objects={"listener": listener})
    Factories(app).enable(Factories(app).default_institution(), "listener")
    accounts = Accounts(app, app.test_client())

    resp = accounts.register("  Ann@Example.TEST ", name="Ann")
    assert resp.status_code == 201, resp.json
    body = resp.json
    assert body["email"] == "ann@example.test"
    assert body["name"] == "Ann" and body["email_verified_at"] is None
    assert "password" not in resp.get_data(as_text=True)

    user = accounts.user("ann@example.test")
    assert user.password_hash and user.password_hash.startswith("$argon2id$")
    with app.extensions["kalpla"].db.session() as s:
        default = s.scalar(select(Institution).where(Institution.slug == "default"))
        roles = list(s.scalars(select(Membership.role).where(Membership.user_id == user.id,
                                                             Membership.institution_id
                                                             == default.id)))
        stored = s.scalar(select(EmailToken).where(EmailToken.user_id == user.id))
    assert roles == ["student"]

    (mail,) = accounts.mails("ann@example.test")
    assert mail.template == "verify_email" and mail.status == "stored"
    token = token_in(mail.body_text, "verify-email")
    assert token in (mail.body_html or "")
    assert stored.token_hash != token and token not in stored.token_hash  # only its SHA-256
    assert stored.expires_at - utcnow() > timedelta(hours=47)

    assert [e.user_id for e in seen] == [user.id]
    assert seen[0].institution_id == default.id and seen[0].email == "ann@example.test"
    assert _actions(app, user.id) == ["user.registered"]


def test_registration_is_refused_for_a_taken_address_in_any_case(accounts):
    assert accounts.register("bob@example.test").status_code == 201
    resp = accounts.register("BOB@example.test ")
    assert resp.status_code == 409
    assert resp.json["type"] == "urn:kalpla:problem:email-taken"
    assert resp.headers["Content-Type"] == "application/problem+json"
    assert len(accounts.mails("bob@example.test")) == 1


@pytest.mark.parametrize(("password", "why"), [
    ("short pass", "at least 12"),
    ("x" * 129, "at most 128"),
    ("password1234", "too common"),
    ("Qwerty123456", "too common"),
    ("carol@example.test", "e-mail address"),
    ("aaaaaaaaaaaaaaaa", "too few different"),
])
def test_password_policy_refuses_weak_passwords_and_writes_nothing(accounts, password, why):
    resp = accounts.register("carol@example.test", password=password)
    assert resp.status_code == 422, resp.json
    assert resp.json["type"] == "urn:kalpla:problem:weak-password"
    assert any(why in message for message in resp.json["errors"]["password"])
    with accounts.kalpla.db.session() as s:
        assert s.scalar(select(User).where(User.email == "carol@example.test")) is None
    assert accounts.mails("carol@example.test") == []


def test_policy_has_no_composition_rules_and_a_bundled_list():
    assert len(policy.common_passwords()) > 5000
    assert "iloveyou123456" in policy.common_passwords()
    assert policy.password_problems("all lower case words here") == []
    assert policy.password_problems("ALLUPPERCASEWORDS") == []
    # NFKC: a full-width password counts as its plain form, so it is just as common.
    assert policy.password_problems("ｐａｓｓｗｏｒｄ１２３４")


def test_registration_validates_fields(accounts):
    resp = accounts.client.post("/api/v1/auth/register",
                                json={"email": "not-an-address", "password": PASSWORD})
    assert resp.status_code == 422
    assert set(resp.json["errors"]) == {"email", "name"}


def test_verification_token_is_single_use_and_expires(accounts):
    accounts.register("dan@example.test")
    token = token_in(accounts.mails("dan@example.test")[0].body_text, "verify-email")
    verify = accounts.client.post
    assert verify("/api/v1/auth/verify-email", json={"token": "nope"}).status_code == 400
    assert verify("/api/v1/auth/verify-email", json={"token": token}).status_code == 204
    assert accounts.user("dan@example.test").email_verified_at is not None
    again = verify("/api/v1/auth/verify-email", json={"token": token})
    assert again.status_code == 400
    assert again.json["type"] == "urn:kalpla:problem:invalid-token"

    accounts.register("eve@example.test")
    late = token_in(accounts.mails("eve@example.test")[0].body_text, "verify-email")
    with accounts.kalpla.db.session() as s:
        user = s.scalar(select(User).where(User.email == "eve@example.test"))
        for row in s.scalars(select(EmailToken).where(EmailToken.user_id == user.id)):
            row.expires_at = utcnow() - timedelta(seconds=1)
    assert verify("/api/v1/auth/verify-email", json={"token": late}).status_code == 400
    assert accounts.user("eve@example.test").email_verified_at is None


def test_unverified_accounts_cannot_log_in_and_can_ask_for_a_new_link(accounts):
    accounts.register("fay@example.test")
    wrong = accounts.login("fay@example.test", "not the password at all")
    assert wrong.status_code == 401  # nothing revealed without the password
    resp = accounts.login("fay@example.test")
    assert resp.status_code == 403
    assert resp.json["type"] == "urn:kalpla:problem:email-not-verified"

    first = accounts.mails("fay@example.test")[0]
    known = accounts.client.post("/api/v1/auth/verify-email/resend",
                                 json={"email": "fay@example.test"})
    unknown = accounts.client.post("/api/v1/auth/verify-email/resend",
                                   json={"email": "nobody@example.test"})
    assert known.status_code == unknown.status_code == 202
    assert known.json == unknown.json
    assert len(accounts.mails("fay@example.test", "verify_email")) == 2
    # The earlier link stopped working; the new one verifies.
    old = token_in(first.body_text, "verify-email")
    assert accounts.client.post("/api/v1/auth/verify-email",
                                json={"token": old}).status_code == 400
    assert accounts.verify("fay@example.test").status_code == 204
    assert accounts.login("fay@example.test").status_code == 200


# --- login, rehash ---------------------------------------------------------------------------

def test_login_returns_tokens_and_records_the_event(accounts, app):
    user_id = accounts.signed_up("gus@example.test")
    resp = accounts.login("GUS@example.test")
    assert resp.status_code == 200
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.json["token_type"] == "Bearer" and resp.json["expires_in"] == 900
    me = accounts.me(resp.json["access_token"])
    assert me.status_code == 200 and me.json["id"] == user_id
    assert "login.succeeded" in _actions(app, user_id)


def test_password_hash_is_upgraded_on_login_when_parameters_changed(accounts):
    accounts.signed_up("hal@example.test")
    weak = PasswordHasher(time_cost=2, memory_cost=2048, parallelism=1).hash(PASSWORD)
    accounts.update_user("hal@example.test", password_hash=weak)
    assert needs_rehash(weak)
    assert accounts.login("hal@example.test").status_code == 200
    upgraded = accounts.user("hal@example.test").password_hash
    assert upgraded != weak and not needs_rehash(upgraded)
    assert accounts.login("hal@example.test").status_code == 200


# --- changing, forgetting and resetting the password ----------------------------------------

def test_change_password_ends_every_session_and_answers_a_new_one(accounts, app):
    accounts.signed_up("ida@example.test")
    other_device = accounts.tokens("ida@example.test")
    this_device = accounts.tokens("ida@example.test")
    headers = bearer(this_device["access_token"])

    wrong = accounts.client.post("/api/v1/me/password", headers=headers, json={
        "current_password": "definitely not it", "new_password": NEW_PASSWORD})
    assert wrong.status_code == 403
    weak = accounts.client.post("/api/v1/me/password", headers=headers, json={
        "current_password": PASSWORD, "new_password": "password1234"})
    assert weak.status_code == 422 and "new_password" in weak.json["errors"]

    resp = accounts.client.post("/api/v1/me/password", headers=headers, json={
        "current_password": PASSWORD, "new_password": NEW_PASSWORD})
    assert resp.status_code == 200, resp.json
    assert accounts.me(resp.json["access_token"]).status_code == 200
    for old in (other_device, this_device):
        assert accounts.me(old["access_token"]).status_code == 401
        assert accounts.refresh(old["refresh_token"]).status_code == 401
    assert accounts.login("ida@example.test").status_code == 401
    assert accounts.login("ida@example.test", NEW_PASSWORD).status_code == 200
    (mail,) = accounts.mails("ida@example.test", "password_changed")
    assert "changed" in mail.body_text
    assert NEW_PASSWORD not in mail.body_text


def test_forgot_password_answers_the_same_whether_or_not_the_account_exists(accounts):
    accounts.signed_up("jon@example.test")
    known = accounts.client.post("/api/v1/auth/password/forgot",
                                 json={"email": "jon@example.test"})
    unknown = accounts.client.post("/api/v1/auth/password/forgot",
                                   json={"email": "nobody@example.test"})
    assert known.status_code == unknown.status_code == 202
    assert known.json == unknown.json
    assert len(accounts.mails("jon@example.test", "password_reset")) == 1
    assert accounts.mails("nobody@example.test") == []


def test_reset_password_is_single_use_verifies_the_address_and_ends_sessions(accounts):
    accounts.signed_up("kim@example.test")
    session_before = accounts.tokens("kim@example.test")
    accounts.update_user("kim@example.test", email_verified_at=None)
    accounts.client.post("/api/v1/auth/password/forgot", json={"email": "kim@example.test"})
    token = token_in(accounts.mails("kim@example.test", "password_reset")[-1].body_text,
                     "reset-password")
    reset = accounts.client.post

    weak = reset("/api/v1/auth/password/reset", json={"token": token, "password": "tooshort"})
    assert weak.status_code == 422  # and the token was not spent by the failed attempt
    assert reset("/api/v1/auth/password/reset",
                 json={"token": "forged", "password": NEW_PASSWORD}).status_code == 400
    resp = reset("/api/v1/auth/password/reset", json={"token": token, "password": NEW_PASSWORD})
    assert resp.status_code == 204
    assert reset("/api/v1/auth/password/reset",
                 json={"token": token, "password": NEW_PASSWORD}).status_code == 400

    assert accounts.me(session_before["access_token"]).status_code == 401
    assert accounts.refresh(session_before["refresh_token"]).status_code == 401
    assert accounts.login("kim@example.test").status_code == 401
    assert accounts.login("kim@example.test", NEW_PASSWORD).status_code == 200
    assert accounts.user("kim@example.test").email_verified_at is not None


def test_a_new_reset_link_replaces_the_previous_one(accounts):
    accounts.signed_up("lea@example.test")
    for _ in range(2):
        accounts.client.post("/api/v1/auth/password/forgot", json={"email": "lea@example.test"})
    first, second = (token_in(m.body_text, "reset-password")
                     for m in accounts.mails("lea@example.test", "password_reset"))
    reset = accounts.client.post
    assert reset("/api/v1/auth/password/reset",
                 json={"token": first, "password": NEW_PASSWORD}).status_code == 400
    assert reset("/api/v1/auth/password/reset",
                 json={"token": second, "password": NEW_PASSWORD}).status_code == 204


# --- profile -----------------------------------------------------------------------------------

def test_profile_patch_honours_if_match(accounts):
    accounts.signed_up("max@example.test")
    headers = bearer(accounts.tokens("max@example.test")["access_token"])
    got = accounts.client.get("/api/v1/me", headers=headers)
    etag = got.headers["ETag"]
    assert accounts.client.get("/api/v1/me", headers={**headers, "If-None-Match": etag}
                               ).status_code == 304

    resp = accounts.client.patch("/api/v1/me", headers={**headers, "If-Match": etag},
                                 json={"name": "Max Mustermann"})
    assert resp.status_code == 200 and resp.json["name"] == "Max Mustermann"
    assert resp.headers["ETag"] != etag
    stale = accounts.client.patch("/api/v1/me", headers={**headers, "If-Match": etag},
                                  json={"name": "Someone Else"})
    assert stale.status_code == 412
    assert accounts.user("max@example.test").name == "Max Mustermann"
    # Without If-Match the write goes through; the address is not editable here.
    plain = accounts.client.patch("/api/v1/me", headers=headers, json={"name": "Max"})
    assert plain.status_code == 200 and plain.json["name"] == "Max"
    assert accounts.client.patch("/api/v1/me", headers=headers,
                                 json={"email": "x@example.test"}).status_code == 422


def test_account_endpoints_need_a_session(accounts):
    requests = [("patch", "/api/v1/me", {"name": "X"}),
                ("post", "/api/v1/me/password", {"current_password": PASSWORD,
                                                  "new_password": NEW_PASSWORD}),
                ("get", "/api/v1/me/sessions", None), ("delete", "/api/v1/me/sessions/x", None),
                ("get", "/api/v1/me/mfa", None), ("post", "/api/v1/me/mfa/totp", None),
                ("post", "/api/v1/me/mfa/totp/confirm", {"code": "123456"}),
                ("delete", "/api/v1/me/mfa/totp", {"password": PASSWORD, "code": "123456"}),
                ("post", "/api/v1/auth/logout", None)]
    for method, path, body in requests:
        resp = getattr(accounts.client, method)(path, json=body)
        assert resp.status_code == 401, path
        assert resp.headers["Content-Type"] == "application/problem+json"


# --- accounts that may no longer authenticate ---------------------------------------------------

@pytest.mark.parametrize("state", ["disabled", "deleted"])
def test_disabled_or_deleted_accounts_cannot_authenticate_by_any_route(accounts, state):
    accounts.signed_up("ned@example.test")
    session = accounts.tokens("ned@example.test")
    accounts.client.post("/api/v1/auth/password/forgot", json={"email": "ned@example.test"})
    reset_token = token_in(accounts.mails("ned@example.test", "password_reset")[-1].body_text,
                           "reset-password")
    accounts.register("nia@example.test")
    verify_token = token_in(accounts.mails("nia@example.test")[-1].body_text, "verify-email")
    change = ({"is_active": False} if state == "disabled" else {"deleted_at": utcnow()})
    accounts.update_user("ned@example.test", **change)
    accounts.update_user("nia@example.test", **change)

    refused = accounts.login("ned@example.test")
    wrong = accounts.login("ned@example.test", "certainly the wrong one")
    assert refused.status_code == wrong.status_code == 401
    assert without_request_id(refused.json) == without_request_id(wrong.json)
    assert accounts.me(session["access_token"]).status_code == 401
    assert accounts.refresh(session["refresh_token"]).status_code == 401
    assert accounts.client.post("/api/v1/auth/password/reset", json={
        "token": reset_token, "password": NEW_PASSWORD}).status_code == 400
    assert accounts.client.post("/api/v1/auth/verify-email",
                                json={"token": verify_token}).status_code == 400
    before = len(accounts.mails("ned@example.test"))
    assert accounts.client.post("/api/v1/auth/password/forgot",
                                json={"email": "ned@example.test"}).status_code == 202
    assert len(accounts.mails("ned@example.test")) == before


def test_the_whole_path_over_http(accounts):
    """Register, verify, log in, enable TOTP, log in with a code, refresh, reuse an old
    refresh token (its session dies), reset the password (every session dies)."""
    assert accounts.register("pia@example.test").status_code == 201
    assert accounts.login("pia@example.test").status_code == 403
    assert accounts.verify("pia@example.test").status_code == 204
    first = accounts.tokens("pia@example.test")
    secret, _codes = accounts.enable_totp(first["access_token"])

    challenge = accounts.login("pia@example.test").json
    assert challenge["mfa_required"] is True
    second = accounts.client.post("/api/v1/auth/token/mfa", json={
        "mfa_token": challenge["mfa_token"], "code": totp_now(secret, steps=1)}).json
    refreshed = accounts.refresh(second["refresh_token"])
    assert refreshed.status_code == 200
    assert accounts.refresh(second["refresh_token"]).status_code == 401  # reuse
    assert accounts.refresh(refreshed.json["refresh_token"]).status_code == 401  # family gone
    other = accounts.refresh(first["refresh_token"])  # another session lives on
    assert other.status_code == 200

    accounts.client.post("/api/v1/auth/password/forgot", json={"email": "pia@example.test"})
    token = token_in(accounts.mails("pia@example.test", "password_reset")[-1].body_text,
                     "reset-password")
    assert accounts.client.post("/api/v1/auth/password/reset", json={
        "token": token, "password": NEW_PASSWORD}).status_code == 204
    for old in (first, second, refreshed.json, other.json):
        assert accounts.me(old["access_token"]).status_code == 401
    assert accounts.refresh(other.json["refresh_token"]).status_code == 401
    # TOTP stays on after a reset: the new password alone does not sign in.
    assert accounts.login("pia@example.test", NEW_PASSWORD).json["mfa_required"] is True
