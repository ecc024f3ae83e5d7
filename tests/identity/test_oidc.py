"""OpenID Connect login, end to end against a real local provider (tests/identity/
oidc_provider.py): browser legs through the test client and ``requests``, the code exchange
and key fetches over HTTP from the app itself."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import jwt
import pyotp
import pytest
import requests
from sqlalchemy import func, select

from kalpla_core.audit.models import AuditEvent
from kalpla_core.config import ConfigError, load_settings
from kalpla_core.identity import mfa
from kalpla_core.identity.federation.config import parse_oidc_providers
from kalpla_core.identity.models import Membership, RefreshToken, User, UserIdentity
from kalpla_core.identity.sessions import Client
from kalpla_core.ratelimit import limiter_of
from tests.identity.oidc_provider import OIDCProvider, new_rsa_key, running_provider

PROBLEM = "application/problem+json"
OTHER_KEY = new_rsa_key()  # not in the provider's JWKS
START = "/api/v1/auth/oidc/corp/start"


@pytest.fixture
def idp() -> Iterator[OIDCProvider]:
    with running_provider() as provider:
        provider.next_user = {"sub": "corp-0001", "email": "Ann@Example.test",
                              "email_verified": True, "name": "Ann Example"}
        yield provider


def _oidc_app(make_app, idp: OIDCProvider, issuer: str | None = None, **options: Any):
    providers = {"corp": {"issuer": issuer or idp.issuer, "client_id": idp.client_id,
                          "client_secret": idp.client_secret, **options}}
    app = make_app(plugins=[], oidc_providers=json.dumps(providers))
    # Rate-limit counters may live in a shared Redis: start every test from zero.
    limiter_of(app).reset()
    return app


@pytest.fixture
def app(make_app, idp):
    return _oidc_app(make_app, idp)


def _problem(response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.content_type == PROBLEM
    return response.get_json(force=True)


def _authorize(url: str) -> str:
    """The browser at the provider: it signs the user in and redirects back."""
    answer = requests.get(url, allow_redirects=False, timeout=10)
    assert answer.status_code == 302, answer.text
    return answer.headers["Location"]


def _login(client, edit_authorize: Callable[[str], str] | None = None,
           edit_callback: Callable[[str], str] | None = None):
    r = client.get(START)
    assert r.status_code == 302
    authorize = r.headers["Location"]
    back = urlsplit(_authorize(edit_authorize(authorize) if edit_authorize else authorize))
    assert back.path == "/api/v1/auth/oidc/corp/callback"
    query = edit_callback(back.query) if edit_callback else back.query
    return client.get(f"{back.path}?{query}")


def _with_param(url: str, name: str, value: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query[name] = value
    return urlunsplit(parts._replace(query=urlencode(query)))


def _identities(db) -> list[UserIdentity]:
    db.expire_all()
    return list(db.scalars(select(UserIdentity).order_by(UserIdentity.id)))


def test_start_redirects_with_state_nonce_and_pkce(client, idp):
    r = client.get(START)
    assert r.status_code == 302
    url = urlsplit(r.headers["Location"])
    assert f"{url.scheme}://{url.netloc}" == idp.issuer and url.path == "/authorize"
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert query["client_id"] == idp.client_id and query["response_type"] == "code"
    assert set(query["scope"].split()) == {"openid", "email", "profile"}
    assert query["redirect_uri"] == "http://localhost:5000/api/v1/auth/oidc/corp/callback"
    assert query["code_challenge_method"] == "S256"
    assert len(query["state"]) >= 32 and len(query["nonce"]) >= 32
    assert len(query["code_challenge"]) == 43  # base64url SHA-256, never the verifier itself
    cookie = r.headers["Set-Cookie"]
    assert cookie.startswith("kalpla_oidc=")
    for attribute in ("HttpOnly", "SameSite=Lax", "Path=/api/v1/auth/oidc/", "Max-Age=600"):
        assert attribute in cookie
    # The flow state is encrypted: neither state, nonce nor the challenge is readable in it.
    for value in (query["state"], query["nonce"]):
        assert value not in cookie
    assert r.headers["Cache-Control"] == "no-store"


def test_new_user_is_created_and_linked(client, idp, db):
    r = _login(client)
    assert r.status_code == 200, r.json
    assert r.headers["Cache-Control"] == "no-store"
    assert set(r.json) == {"access_token", "refresh_token", "expires_in", "token_type"}
    # The code was exchanged with the client secret and the PKCE verifier.
    (exchange,) = idp.token_requests
    assert exchange["grant_type"] == "authorization_code" and len(exchange["code_verifier"]) >= 43
    # The flow cookie is single-use: the callback clears it.
    assert client.get_cookie("kalpla_oidc", path="/api/v1/auth/oidc/") is None

    me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {r.json['access_token']}"})
    assert me.status_code == 200
    assert me.json["email"] == "ann@example.test" and me.json["name"] == "Ann Example"
    assert me.json["email_verified_at"] is not None
    user = db.get(User, me.json["id"])
    assert user.password_hash is None
    (identity,) = _identities(db)
    assert (identity.user_id, identity.provider, identity.subject) == \
        (user.id, "oidc:corp", "corp-0001")
    actions = {e.action: e for e in db.scalars(select(AuditEvent))}
    assert actions["user.provisioned"].data == {"provider": "oidc:corp"}
    assert actions["login.succeeded"].data["method"] == "oidc:corp"
    assert db.scalar(select(func.count()).select_from(RefreshToken)) == 1


def test_returning_user_signs_in_to_the_same_account(client, idp, db):
    first = _login(client)
    assert first.status_code == 200
    # The subject decides, even when the provider now reports another address.
    idp.next_user = {**idp.next_user, "email": "ann.new@example.test"}
    second = _login(client)
    assert second.status_code == 200, second.json
    assert db.scalar(select(func.count()).select_from(User)) == 1
    assert len(_identities(db)) == 1
    assert db.scalar(select(func.count()).select_from(RefreshToken)) == 2


def test_verified_email_links_to_the_existing_account(client, factories, idp, db):
    ann = factories.user(email="ann@example.test", verified=True)
    r = _login(client)
    assert r.status_code == 200, r.json
    me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {r.json['access_token']}"})
    assert me.json["id"] == ann.id
    (identity,) = _identities(db)
    assert identity.user_id == ann.id
    assert db.scalar(select(func.count()).select_from(User)) == 1
    linked = db.scalar(select(AuditEvent).where(AuditEvent.action == "identity.linked"))
    assert linked.actor_id == ann.id


def test_unverified_email_is_refused_whether_or_not_an_account_has_it(client, factories,
                                                                      idp, db):
    idp.next_user = {**idp.next_user, "email_verified": False}
    alone = _problem(_login(client), 403)
    assert alone["type"] == "urn:kalpla:problem:email-unverified"
    assert db.scalar(select(func.count()).select_from(User)) == 0

    factories.user(email="ann@example.test", verified=True)
    existing = _problem(_login(client), 403)
    assert {k: v for k, v in existing.items() if k != "request_id"} == \
        {k: v for k, v in alone.items() if k != "request_id"}  # nothing to enumerate
    assert _identities(db) == []
    assert db.scalar(select(func.count()).select_from(RefreshToken)) == 0
    failed = db.scalars(select(AuditEvent).where(AuditEvent.action == "login.failed")).all()
    assert [e.data for e in failed] == [{"method": "oidc:corp", "reason": "email-unverified"}] * 2


def test_second_factor_is_still_asked(app, client, factories, idp, db):
    ann = factories.user(email="ann@example.test", verified=True)
    kalpla = app.extensions["kalpla"]
    with kalpla.db.session() as s:
        user = s.get(User, ann.id)
        enrolment = mfa.begin_enrolment(s, kalpla, user, Client())
        codes = mfa.confirm_enrolment(s, kalpla, user, pyotp.TOTP(enrolment.secret).now(),
                                      Client())
    r = _login(client)
    assert r.status_code == 200, r.json
    assert r.json["mfa_required"] is True and "access_token" not in r.json
    assert db.scalar(select(func.count()).select_from(RefreshToken)) == 0
    done = client.post("/api/v1/auth/token/mfa",
                       json={"mfa_token": r.json["mfa_token"], "code": codes[0]})
    assert done.status_code == 200, done.json
    me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {done.json['access_token']}"})
    assert me.json["id"] == ann.id


def test_verified_email_does_not_link_to_an_unverified_account(client, factories, idp, db):
    # Someone registered Ann's address without proving it: Ann's login must not hand her
    # that account (whose password the other person knows).
    factories.user(email="ann@example.test", verified=False)
    body = _problem(_login(client), 409)
    assert body["type"] == "urn:kalpla:problem:account-unverified"
    assert _identities(db) == []


def test_trust_email_covers_a_missing_claim_only(make_app, idp, db):
    client = _oidc_app(make_app, idp, trust_email=True).test_client()
    idp.next_user = {**idp.next_user, "email_verified": "false"}
    _problem(_login(client), 403)
    idp.next_user = {k: v for k, v in idp.next_user.items() if k != "email_verified"}
    assert _login(client).status_code == 200
    assert db.scalar(select(User)).email_verified_at is not None


def test_created_users_join_the_chosen_institution_as_students(client, factories, idp, db):
    school = factories.institution("school")
    _problem(client.get(START + "?institution=nowhere"), 404)
    r = client.get(START + "?institution=school")
    back = urlsplit(_authorize(r.headers["Location"]))
    assert client.get(f"{back.path}?{back.query}").status_code == 200
    user = db.scalar(select(User))
    assert set(db.scalars(select(Membership.role).where(
        Membership.user_id == user.id, Membership.institution_id == school.id))) == {"student"}
    assert db.query(Membership).count() == 1
    # Without a choice: the default institution (or the Kalpla-Institution header's).
    idp.next_user = {"sub": "corp-0002", "email": "bo@example.test", "email_verified": True}
    assert _login(client).status_code == 200
    bo = db.scalar(select(User).where(User.email == "bo@example.test"))
    default = factories.default_institution()
    assert [(m.institution_id, m.role) for m in db.scalars(
        select(Membership).where(Membership.user_id == bo.id))] == [(default.id, "student")]


def test_disabled_account_cannot_sign_in(client, factories, idp, db):
    ann = factories.user(email="ann@example.test", verified=True, active=False)
    _problem(_login(client), 401)
    assert _identities(db) == []
    # Nor through an identity linked before the account was disabled.
    db.add(UserIdentity(user_id=ann.id, provider="oidc:corp", subject="corp-0001"))
    db.commit()
    _problem(_login(client), 401)
    assert db.scalar(select(func.count()).select_from(RefreshToken)) == 0


def test_email_is_required(client, idp, db):
    idp.next_user = {"sub": "corp-0002"}
    body = _problem(_login(client), 403)
    assert body["type"] == "urn:kalpla:problem:email-required"
    assert db.scalar(select(func.count()).select_from(User)) == 0


def test_wrong_state_is_refused_before_any_exchange(client, idp, db):
    def wrong_state(query: str) -> str:
        params = {k: v[0] for k, v in parse_qs(query).items()}
        return urlencode({**params, "state": "forged-state"})

    body = _problem(_login(client, edit_callback=wrong_state), 401)
    assert body["type"] == "urn:kalpla:problem:oidc-state-mismatch"
    assert idp.token_requests == []
    assert db.scalar(select(func.count()).select_from(User)) == 0


def test_callback_without_the_flow_cookie_is_refused(app, client, idp):
    r = client.get(START)
    back = urlsplit(_authorize(r.headers["Location"]))
    other_browser = app.test_client()
    body = _problem(other_browser.get(f"{back.path}?{back.query}"), 401)
    assert body["type"] == "urn:kalpla:problem:oidc-state-mismatch"
    assert idp.token_requests == []


def test_tampered_flow_cookie_is_refused(client, idp):
    r = client.get(START)
    sealed = client.get_cookie("kalpla_oidc", path="/api/v1/auth/oidc/").value
    raw = bytearray(base64.urlsafe_b64decode(sealed))
    raw[-40] ^= 1
    client.set_cookie("kalpla_oidc", base64.urlsafe_b64encode(bytes(raw)).decode(),
                      path="/api/v1/auth/oidc/")
    back = urlsplit(_authorize(r.headers["Location"]))
    _problem(client.get(f"{back.path}?{back.query}"), 401)
    assert idp.token_requests == []


def _resign_payload(token: str, **changes: Any) -> str:
    """The token with its payload changed and the original signature kept."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{body}.{signature}"


@pytest.mark.parametrize("tamper", [
    pytest.param({"token_hook": lambda t: _resign_payload(t, email="boss@example.test")},
                 id="payload-changed"),
    pytest.param({"token_hook": lambda t: jwt.encode(
        jwt.decode(t, options={"verify_signature": False}), OTHER_KEY, algorithm="RS256",
        headers={"kid": "test-key-1"})}, id="same-kid-signed-by-another-key"),
    pytest.param({"claims_hook": lambda c: {**c, "nonce": "replayed"}}, id="wrong-nonce"),
    pytest.param({"claims_hook": lambda c: {**c, "aud": "another-client"}}, id="wrong-audience"),
    pytest.param({"claims_hook": lambda c: {**c, "aud": [c["aud"], "another-client"]}},
                 id="several-audiences-without-azp"),
    pytest.param({"claims_hook": lambda c: {**c, "iss": "https://evil.example"}},
                 id="wrong-issuer"),
    pytest.param({"claims_hook": lambda c: {**c, "exp": c["iat"] - 120}}, id="expired"),
    pytest.param({"token_hook": lambda t: jwt.encode(
        jwt.decode(t, options={"verify_signature": False}), "k" * 32, algorithm="HS256",
        headers={"kid": "test-key-1"})}, id="hs256-with-our-kid"),
])
def test_invalid_id_tokens_are_refused(client, idp, db, tamper):
    idp.claims_hook = tamper.get("claims_hook")
    idp.token_hook = tamper.get("token_hook")
    body = _problem(_login(client), 401)
    assert body["type"] == "urn:kalpla:problem:oidc-invalid-id-token"
    assert db.scalar(select(func.count()).select_from(User)) == 0


def test_pkce_verifier_mismatch_is_refused(client, idp, db):
    # A code obtained for another challenge (as an attacker injecting their own code would
    # have) cannot be redeemed with this login's verifier.
    forged = base64.urlsafe_b64encode(b"x" * 32).rstrip(b"=").decode()
    body = _problem(_login(client, edit_authorize=lambda u: _with_param(
        u, "code_challenge", forged)), 401)
    assert body["type"] == "urn:kalpla:problem:oidc-exchange-failed"
    assert len(idp.token_requests) == 1  # the exchange was tried, and the provider refused it
    assert db.scalar(select(func.count()).select_from(User)) == 0


def test_provider_error_is_reported(client, idp):
    body = _problem(_login(client, edit_callback=lambda q: q + "&error=access_denied"), 401)
    assert body["type"] == "urn:kalpla:problem:oidc-denied"


def test_both_legs_are_rate_limited_per_ip(client, idp):
    for _ in range(30):
        assert client.get(START).status_code == 302
    limited = _problem(client.get(START), 429)
    assert limited["type"] == "urn:kalpla:problem:rate-limited"
    assert int(client.get(START).headers["Retry-After"]) > 0
    for _ in range(30):
        _problem(client.get("/api/v1/auth/oidc/corp/callback?state=x&code=y"), 401)
    _problem(client.get("/api/v1/auth/oidc/corp/callback?state=x&code=y"), 429)


def test_unknown_provider_is_404(client):
    _problem(client.get("/api/v1/auth/oidc/nobody/start"), 404)
    _problem(client.get("/api/v1/auth/oidc/nobody/callback?state=x&code=y"), 404)


def test_unreachable_or_misconfigured_provider_is_502(make_app, idp):
    app = _oidc_app(make_app, idp, issuer=idp.issuer + "/elsewhere")
    body = _problem(app.test_client().get(START), 502)
    assert body["type"] == "urn:kalpla:problem:oidc-provider-unavailable"


def test_secrets_never_reach_logs_audit_or_responses(client, idp, db, caplog):
    caplog.set_level(logging.DEBUG)
    ok = _login(client)
    assert ok.status_code == 200
    idp.claims_hook = lambda c: {**c, "nonce": "replayed"}
    refused = _login(client)
    assert refused.status_code == 401
    audit = json.dumps([e.data for e in db.scalars(select(AuditEvent))])
    visible = [caplog.text, audit, refused.get_data(as_text=True), ok.get_data(as_text=True)]
    assert idp.secrets_issued
    for secret in [idp.client_secret, *idp.secrets_issued]:
        for text in visible:
            assert secret not in text
    for text in (caplog.text, audit):
        assert ok.json["refresh_token"] not in text and ok.json["access_token"] not in text


def test_provider_settings_are_validated(tmp_path):
    base = {"client_id": "id", "client_secret": "s3cr3t-value"}
    for bad, message in [
        ("{not json", "not valid JSON"),
        ("/no/such/file.json", "not a file"),
        (json.dumps(["corp"]), "must be a JSON object"),
        (json.dumps({"Corp!": {"preset": "google", **base}}), "provider name"),
        (json.dumps({"corp": {"preset": "myspace", **base}}), "preset must be one of"),
        (json.dumps({"corp": base}), "needs an issuer"),
        (json.dumps({"corp": {"issuer": "http://idp.example", **base}}), "https"),
        (json.dumps({"corp": {"preset": "google", "client_id": "id"}}), "client_secret"),
        (json.dumps({"corp": {"preset": "google", "scopes": ["email"], **base}}), "openid"),
        (json.dumps({"corp": {"preset": "google", "colour": "red", **base}}), "unknown keys"),
        (json.dumps({"corp": {"preset": "facebook", "trust_email": "yes", **base}}),
         "trust_email"),
    ]:
        with pytest.raises(ConfigError, match="KALPLA_OIDC_PROVIDERS") as info:
            parse_oidc_providers(bad)
        assert message in str(info.value)

    path = tmp_path / "providers.json"
    path.write_text(json.dumps({"google": {"preset": "google", **base},
                                "corp": {"issuer": "https://login.corp.example", **base,
                                         "scopes": "openid email"}}))
    google, corp = parse_oidc_providers(str(path))
    assert google.issuer == "https://accounts.google.com" and not google.needs_discovery
    assert corp.needs_discovery and corp.scopes == ("openid", "email")
    assert corp.discovery_url == "https://login.corp.example/.well-known/openid-configuration"
    settings = load_settings({"instance_path": str(tmp_path), "secret_key": "s" * 40,
                              "oidc_providers": str(path)}, environ={})
    assert settings.redacted()["KALPLA_OIDC_PROVIDERS"] == "google,corp"
    assert "s3cr3t-value" not in repr(settings.oidc_providers)
