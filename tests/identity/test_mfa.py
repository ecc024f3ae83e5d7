"""TOTP second factor over HTTP: enrolment, login with a code or a recovery code, replay and
brute force, turning it off, institution policy, and secrets kept out of logs and responses."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from sqlalchemy import select

from kalpla_core.audit.models import AuditEvent
from kalpla_core.identity.models import RecoveryCode, TOTPDevice
from kalpla_core.institutions.models import Institution
from tests.identity.accounts_support import (
    PASSWORD,
    Accounts,
    bearer,
    fast_hashing,
    token_in,
    totp_now,
)


@pytest.fixture
def accounts(app: Any, client: Any, monkeypatch: pytest.MonkeyPatch) -> Accounts:
    fast_hashing(monkeypatch)
    return Accounts(app, client)


def _mfa_login(accounts: Accounts, email: str, code: str) -> Any:
    challenge = accounts.login(email)
    assert challenge.status_code == 200 and challenge.json["mfa_required"] is True
    assert "access_token" not in challenge.json
    return accounts.client.post("/api/v1/auth/token/mfa", json={
        "mfa_token": challenge.json["mfa_token"], "code": code})


def test_enrolment_returns_secret_uri_and_qr_and_stores_the_secret_encrypted(accounts, app):
    accounts.signed_up("amy@example.test")
    headers = bearer(accounts.tokens("amy@example.test")["access_token"])
    resp = accounts.client.post("/api/v1/me/mfa/totp", headers=headers)
    assert resp.status_code == 201
    assert resp.headers["Cache-Control"] == "no-store"
    secret = resp.json["secret"]
    assert resp.json["otpauth_uri"].startswith("otpauth://totp/Kalpla:amy%40example.test?")
    assert f"secret={secret}" in resp.json["otpauth_uri"]
    assert resp.json["qr_svg"].startswith("<svg") and "</svg>" in resp.json["qr_svg"]
    with app.extensions["kalpla"].db.session() as s:
        device = s.scalar(select(TOTPDevice))
        assert device.confirmed_at is None
        assert secret.encode() not in device.secret_encrypted

    # Not on until confirmed: login still asks for the password only.
    assert "access_token" in accounts.login("amy@example.test").json
    wrong = accounts.client.post("/api/v1/me/mfa/totp/confirm", headers=headers,
                                 json={"code": "000000"})
    assert wrong.status_code == 422
    ok = accounts.client.post("/api/v1/me/mfa/totp/confirm", headers=headers,
                              json={"code": totp_now(secret)})
    assert ok.status_code == 200
    codes = ok.json["recovery_codes"]
    assert len(codes) == len(set(codes)) == 10
    assert "access_token" not in ok.json
    with app.extensions["kalpla"].db.session() as s:
        stored = list(s.scalars(select(RecoveryCode.code_hash)))
    assert len(stored) == 10 and not set(codes) & set(stored)

    status = accounts.client.get("/api/v1/me/mfa", headers=headers).json
    assert status == {"totp_enabled": True, "recovery_codes_left": 10, "required": False}
    again = accounts.client.post("/api/v1/me/mfa/totp", headers=headers)
    assert again.status_code == 409
    (mail,) = accounts.mails("amy@example.test", "mfa_enabled")
    assert secret not in mail.body_text and codes[0] not in mail.body_text


def test_login_with_totp_refuses_replay_and_accepts_each_recovery_code_once(accounts):
    accounts.signed_up("bo@example.test")
    secret, codes = accounts.enable_totp(accounts.tokens("bo@example.test")["access_token"])

    code = totp_now(secret, steps=1)  # the current step was spent confirming
    resp = _mfa_login(accounts, "bo@example.test", code)
    assert resp.status_code == 200, resp.json
    assert accounts.me(resp.json["access_token"]).status_code == 200
    replay = _mfa_login(accounts, "bo@example.test", code)
    assert replay.status_code == 401
    assert replay.json["type"] == "urn:kalpla:problem:invalid-code"

    recovered = _mfa_login(accounts, "bo@example.test", codes[3].upper().replace("-", " "))
    assert recovered.status_code == 200
    assert _mfa_login(accounts, "bo@example.test", codes[3]).status_code == 401
    headers = bearer(recovered.json["access_token"])
    assert accounts.client.get("/api/v1/me/mfa", headers=headers).json[
        "recovery_codes_left"] == 9


def test_challenge_token_is_not_an_access_token(accounts):
    accounts.signed_up("cy@example.test")
    accounts.enable_totp(accounts.tokens("cy@example.test")["access_token"])
    challenge = accounts.login("cy@example.test").json["mfa_token"]
    assert accounts.me(challenge).status_code == 401
    assert accounts.refresh(challenge).status_code == 401
    forged = accounts.client.post("/api/v1/auth/token/mfa",
                                  json={"mfa_token": "x.y.z", "code": "123456"})
    assert forged.status_code == 401
    assert forged.json["type"] == "urn:kalpla:problem:invalid-mfa-token"


def test_wrong_codes_lock_the_account_out(accounts):
    accounts.signed_up("di@example.test")
    secret, _ = accounts.enable_totp(accounts.tokens("di@example.test")["access_token"])
    challenge = accounts.login("di@example.test").json["mfa_token"]
    statuses = [accounts.client.post("/api/v1/auth/token/mfa", json={
        "mfa_token": challenge, "code": "000000"}).status_code for _ in range(5)]
    assert statuses == [401] * 5
    locked = accounts.client.post("/api/v1/auth/token/mfa", json={
        "mfa_token": challenge, "code": totp_now(secret, steps=1)})
    assert locked.status_code == 429
    assert locked.json["type"] == "urn:kalpla:problem:login-locked"
    assert int(locked.headers["Retry-After"]) > 0
    # The password alone does not clear the count while a second factor is pending.
    assert accounts.login("di@example.test").status_code == 429


def test_turning_totp_off_needs_password_and_code(accounts):
    accounts.signed_up("ed@example.test")
    pair = accounts.tokens("ed@example.test")
    secret, codes = accounts.enable_totp(pair["access_token"])
    headers = bearer(pair["access_token"])

    def disable(password: str, code: str) -> Any:
        return accounts.client.delete("/api/v1/me/mfa/totp", headers=headers,
                                      json={"password": password, "code": code})

    assert disable("not my password at all", totp_now(secret, 1)).status_code == 403
    assert disable(PASSWORD, "000000").status_code == 403
    assert disable(PASSWORD, codes[0]).status_code == 204
    assert "access_token" in accounts.login("ed@example.test").json
    assert disable(PASSWORD, codes[1]).status_code == 409
    with accounts.kalpla.db.session() as s:
        assert s.scalar(select(RecoveryCode)) is None
        actions = list(s.scalars(select(AuditEvent.action)))
    assert {"mfa.enabled", "mfa.disabled", "mfa.disable.failed"} <= set(actions)
    assert len(accounts.mails("ed@example.test", "mfa_disabled")) == 1


def _require_mfa(app: Any, roles: list[str]) -> None:
    with app.extensions["kalpla"].db.session() as s:
        inst = s.scalar(select(Institution).where(Institution.slug == "default"))
        inst.settings = {**inst.settings, "require_mfa_for_roles": roles}


def test_institution_can_require_mfa_for_admins(accounts, app, factories):
    default = factories.default_institution()
    factories.user(email="root@example.test", password=PASSWORD, roles={default: ["admin"]})
    factories.user(email="stu@example.test", password=PASSWORD, roles={default: ["student"]})
    admin_session = accounts.tokens("root@example.test")
    _require_mfa(app, ["admin", "mentor"])

    # Students are not concerned.
    assert "access_token" in accounts.login("stu@example.test").json
    # An admin without MFA gets a token good for enrolment only.
    resp = accounts.login("root@example.test")
    assert resp.status_code == 200
    assert resp.json["mfa_enrolment_required"] is True and "access_token" not in resp.json
    enrolment = resp.json["mfa_enrolment_token"]
    assert accounts.me(enrolment).status_code == 401
    assert accounts.client.get("/api/v1/me/sessions",
                               headers=bearer(enrolment)).status_code == 401
    # An existing session cannot be refreshed past the new rule.
    refused = accounts.refresh(admin_session["refresh_token"])
    assert refused.status_code == 403
    assert refused.json["type"] == "urn:kalpla:problem:mfa-enrolment-required"
    assert refused.json["mfa_enrolment_token"]

    started = accounts.client.post("/api/v1/me/mfa/totp", headers=bearer(enrolment))
    assert started.status_code == 201
    secret = started.json["secret"]
    done = accounts.client.post("/api/v1/me/mfa/totp/confirm", headers=bearer(enrolment),
                                json={"code": totp_now(secret)})
    assert done.status_code == 200
    assert len(done.json["recovery_codes"]) == 10
    headers = bearer(done.json["access_token"])
    assert accounts.me(done.json["access_token"]).status_code == 200
    assert accounts.client.get("/api/v1/me/mfa", headers=headers).json["required"] is True
    # From now on the admin logs in with a code, and cannot turn MFA off.
    assert accounts.login("root@example.test").json["mfa_required"] is True
    off = accounts.client.delete("/api/v1/me/mfa/totp", headers=headers, json={
        "password": PASSWORD, "code": done.json["recovery_codes"][0]})
    assert off.status_code == 403
    assert off.json["type"] == "urn:kalpla:problem:mfa-required"


def test_secrets_never_reach_logs_audit_or_later_responses(accounts, app, caplog):
    caplog.set_level(logging.DEBUG)
    accounts.register("fi@example.test")
    verify_token = token_in(accounts.mails("fi@example.test")[0].body_text, "verify-email")
    accounts.verify("fi@example.test")
    first = accounts.tokens("fi@example.test")
    secret, codes = accounts.enable_totp(first["access_token"])
    challenge = accounts.login("fi@example.test").json
    pair = accounts.client.post("/api/v1/auth/token/mfa", json={
        "mfa_token": challenge["mfa_token"], "code": codes[0]}).json
    refreshed = accounts.refresh(pair["refresh_token"]).json
    accounts.client.post("/api/v1/auth/password/forgot", json={"email": "fi@example.test"})
    reset_token = token_in(accounts.mails("fi@example.test", "password_reset")[-1].body_text,
                           "reset-password")
    headers = bearer(refreshed["access_token"])
    later = [accounts.client.get(path, headers=headers).get_data(as_text=True)
             for path in ("/api/v1/me", "/api/v1/me/sessions", "/api/v1/me/mfa")]

    with accounts.kalpla.db.session() as s:
        audit = json.dumps([[e.action, e.data, e.target_id] for e in s.scalars(
            select(AuditEvent))])
    logged = "\n".join(r.getMessage() + " " + json.dumps(
        {k: str(v) for k, v in vars(r).items()}) for r in caplog.records)
    assert "mail stored in the outbox" in logged
    secrets = [PASSWORD, secret, *codes, verify_token, reset_token, challenge["mfa_token"],
               first["access_token"], first["refresh_token"], pair["refresh_token"],
               refreshed["refresh_token"]]
    for value in secrets:
        assert value not in logged
        assert value not in audit
        assert all(value not in body for body in later)
