"""Cognito-issued bearer tokens: real tokens from moto's Cognito (server mode, JWKS fetched
over HTTP), and tokens signed with keys the tests control for the refusals."""

from __future__ import annotations

import json
import logging
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import boto3
import jwt
import pytest
from moto.server import ThreadedMotoServer
from sqlalchemy import select

from kalpla_core.audit.models import AuditEvent
from kalpla_core.config import ConfigError, load_settings
from kalpla_core.identity.federation.config import parse_cognito_pools
from kalpla_core.identity.models import Membership, User, UserIdentity
from kalpla_core.testing import Factories
from tests.identity.jwks_server import KeySetServer, running_key_set
from tests.identity.oidc_provider import new_rsa_key

PROBLEM = "application/problem+json"
REGION = "us-east-1"
PASSWORD = "Corr3ct-Horse-Battery!"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Pool:
    """A user pool in moto, with its app clients."""

    endpoint: str
    idp: Any
    pool_id: str
    client_id: str
    other_client_id: str

    @property
    def jwks_url(self) -> str:
        return f"{self.endpoint}/{self.pool_id}/.well-known/jwks.json"

    def user(self, email: str, groups: list[str] = (), verified: bool = True) -> dict[str, str]:
        """Create a user in the pool, then sign in: its Cognito tokens."""
        self.idp.admin_create_user(
            UserPoolId=self.pool_id, Username=email, MessageAction="SUPPRESS",
            UserAttributes=[{"Name": "email", "Value": email}, {"Name": "name", "Value": "Pat"},
                            {"Name": "email_verified", "Value": str(verified).lower()}])
        self.idp.admin_set_user_password(UserPoolId=self.pool_id, Username=email,
                                         Password=PASSWORD, Permanent=True)
        for group in groups:
            self.idp.admin_add_user_to_group(UserPoolId=self.pool_id, Username=email,
                                             GroupName=group)
        return self.sign_in(email)

    def sign_in(self, email: str, client_id: str | None = None) -> dict[str, str]:
        result = self.idp.admin_initiate_auth(
            UserPoolId=self.pool_id, ClientId=client_id or self.client_id,
            AuthFlow="ADMIN_NO_SRP_AUTH",
            AuthParameters={"USERNAME": email, "PASSWORD": PASSWORD})["AuthenticationResult"]
        return {"id": result["IdToken"], "access": result["AccessToken"]}


@pytest.fixture(scope="module")
def moto_pool() -> Iterator[Pool]:
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        idp = boto3.client("cognito-idp", region_name=REGION, endpoint_url=endpoint,
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        pool_id = idp.create_user_pool(PoolName="school", UsernameAttributes=["email"])[
            "UserPool"]["Id"]
        clients = [idp.create_user_pool_client(
            UserPoolId=pool_id, ClientName=name,
            ExplicitAuthFlows=["ALLOW_ADMIN_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"],
            ReadAttributes=["email", "email_verified", "name"])["UserPoolClient"]["ClientId"]
            for name in ("web", "another-app")]
        for group in ("Students", "Mentors", "Moderators", "Admins"):
            idp.create_group(UserPoolId=pool_id, GroupName=group)
        yield Pool(endpoint, idp, pool_id, clients[0], clients[1])
    finally:
        server.stop()


def _pool_setting(pool: Pool, **overrides: Any) -> str:
    return json.dumps([{"region": REGION, "user_pool_id": pool.pool_id,
                        "client_ids": [pool.client_id], "institution": "school",
                        "jwks_url": pool.jwks_url, "endpoint_url": pool.endpoint,
                        **overrides}])


@pytest.fixture
def app(make_app, moto_pool):
    return make_app(plugins=[], cognito_user_pools=_pool_setting(moto_pool))


@pytest.fixture
def school(factories):
    return factories.institution("school")


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Kalpla-Institution": "school"}


def _unique_email() -> str:
    return f"pat-{secrets.token_hex(4)}@example.test"


def _refused(response) -> dict[str, Any]:
    assert response.status_code == 401, response.get_data(as_text=True)
    assert response.content_type == PROBLEM
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    return response.get_json(force=True)


def _roles(db, user_id: str, institution_id: str) -> set[str]:
    db.expire_all()
    return set(db.scalars(select(Membership.role).where(
        Membership.user_id == user_id, Membership.institution_id == institution_id)))


# --- tokens from moto's Cognito ----------------------------------------------------------

def test_id_token_signs_in_and_provisions_the_user(client, moto_pool, school, db):
    email = _unique_email()
    tokens = moto_pool.user(email, groups=["Mentors"])
    r = client.get("/api/v1/me", headers=_bearer(tokens["id"]))
    assert r.status_code == 200, r.json
    assert r.json["email"] == email and r.json["name"] == "Pat"
    assert r.json["email_verified_at"] is not None
    sub = jwt.decode(tokens["id"], options={"verify_signature": False})["sub"]
    identity = db.scalar(select(UserIdentity).where(UserIdentity.subject == sub))
    assert identity.provider == f"cognito:{moto_pool.pool_id}"
    assert identity.user_id == r.json["id"]
    assert _roles(db, r.json["id"], school.id) == {"mentor"}
    actions = [e.action for e in db.scalars(select(AuditEvent).order_by(AuditEvent.id))]
    assert actions == ["user.provisioned", "member.roles_synced"]

    # The same user again: no second account, no new audit noise when nothing changed.
    again = client.get("/api/v1/me", headers=_bearer(moto_pool.sign_in(email)["access"]))
    assert again.status_code == 200 and again.json["id"] == r.json["id"]
    assert db.query(User).count() == 1
    assert db.query(AuditEvent).count() == 2


def test_access_token_of_a_new_user_reads_the_profile_from_cognito(client, moto_pool, school,
                                                                   db):
    email = _unique_email()
    tokens = moto_pool.user(email, groups=["Students"])
    r = client.get("/api/v1/me", headers=_bearer(tokens["access"]))
    assert r.status_code == 200, r.json
    assert r.json["email"] == email  # from GetUser: access tokens carry no email
    assert _roles(db, r.json["id"], school.id) == {"student"}


def test_groups_are_mapped_to_roles_and_synced_on_each_sign_in(client, moto_pool, factories,
                                                              school, db):
    elsewhere = factories.institution("elsewhere")
    email = _unique_email()
    r = client.get("/api/v1/me", headers=_bearer(moto_pool.user(email, ["Students"])["id"]))
    user_id = r.json["id"]
    # A role in another institution belongs to Kalpla, not to the pool: never touched.
    db.add(Membership(user_id=user_id, institution_id=elsewhere.id, role="mentor"))
    db.commit()
    members = "/api/v1/institutions/school/members"
    assert client.get(members, headers=_bearer(moto_pool.sign_in(email)["id"])
                      ).status_code == 403

    moto_pool.idp.admin_remove_user_from_group(UserPoolId=moto_pool.pool_id, Username=email,
                                               GroupName="Students")
    for group in ("Admins", "Moderators"):
        moto_pool.idp.admin_add_user_to_group(UserPoolId=moto_pool.pool_id, Username=email,
                                              GroupName=group)
    listing = client.get(members, headers=_bearer(moto_pool.sign_in(email)["access"]))
    assert listing.status_code == 200, listing.json
    assert _roles(db, user_id, school.id) == {"admin", "moderator"}
    assert _roles(db, user_id, elsewhere.id) == {"mentor"}
    synced = db.scalars(select(AuditEvent).where(AuditEvent.action == "member.roles_synced")
                        .order_by(AuditEvent.id)).all()
    assert synced[-1].data == {"source": f"cognito:{moto_pool.pool_id}",
                               "roles": ["admin", "moderator"], "previous": ["student"]}


def test_verified_email_links_to_an_existing_account(client, moto_pool, factories, school, db):
    email = _unique_email()
    kalpla_user = factories.user(email=email, verified=True)
    r = client.get("/api/v1/me", headers=_bearer(moto_pool.user(email)["id"]))
    assert r.status_code == 200 and r.json["id"] == kalpla_user.id
    assert db.scalar(select(UserIdentity.user_id)) == kalpla_user.id


def test_unverified_email_neither_links_nor_provisions(client, moto_pool, factories, school,
                                                      db):
    email = _unique_email()
    factories.user(email=email, verified=True)
    body = _refused(client.get("/api/v1/me",
                               headers=_bearer(moto_pool.user(email, verified=False)["id"])))
    assert "does not vouch" in body["detail"]
    lone = moto_pool.user(_unique_email(), verified=False)
    _refused(client.get("/api/v1/me", headers=_bearer(lone["id"])))
    assert db.scalar(select(UserIdentity)) is None
    assert db.query(User).count() == 1


def test_token_of_another_app_client_is_refused(client, moto_pool, school):
    email = _unique_email()
    moto_pool.user(email)
    tokens = moto_pool.sign_in(email, client_id=moto_pool.other_client_id)
    for kind in ("id", "access"):
        body = _refused(client.get("/api/v1/me", headers=_bearer(tokens[kind])))
        assert "another app client" in body["detail"]


def test_token_use_is_enforced(make_app, moto_pool, factories):
    app = make_app(plugins=[], cognito_user_pools=_pool_setting(moto_pool, token_use=["id"]))
    Factories(app).institution("school")
    tokens = moto_pool.user(_unique_email())
    client = app.test_client()
    assert client.get("/api/v1/me", headers=_bearer(tokens["id"])).status_code == 200
    body = _refused(client.get("/api/v1/me", headers=_bearer(tokens["access"])))
    assert "'access'" in body["detail"]


def test_disabled_deleted_account_and_missing_institution_are_refused(client, moto_pool, factories,
                                                              db):
    email = _unique_email()
    tokens = moto_pool.user(email)
    _refused(client.get("/api/v1/me", headers=_bearer(tokens["id"])))  # no "school" yet
    factories.institution("school")
    r = client.get("/api/v1/me", headers=_bearer(tokens["id"]))
    assert r.status_code == 200
    user = db.get(User, r.json["id"])
    user.is_active = False
    db.commit()
    _refused(client.get("/api/v1/me", headers=_bearer(tokens["id"])))
    user.is_active, user.deleted_at = True, datetime.now(UTC)
    db.commit()
    _refused(client.get("/api/v1/me", headers=_bearer(tokens["access"])))


def test_tokens_stay_out_of_logs(client, moto_pool, school, caplog):
    tokens = moto_pool.user(_unique_email())
    caplog.set_level(logging.DEBUG)  # from here on: the app's requests only
    assert client.get("/api/v1/me", headers=_bearer(tokens["access"])).status_code == 200
    forged = tokens["id"][:-4] + ("AAAA" if not tokens["id"].endswith("AAAA") else "BBBB")
    _refused(client.get("/api/v1/me", headers=_bearer(forged)))
    for token in (*tokens.values(), forged):
        assert token not in caplog.text
        assert token.split(".")[2] not in caplog.text


# --- tokens signed with keys the tests control -------------------------------------------

TEST_POOL = f"{REGION}_TestPool1"
TEST_ISSUER = f"https://cognito-idp.{REGION}.amazonaws.com/{TEST_POOL}"


@pytest.fixture
def key_set() -> Iterator[KeySetServer]:
    with running_key_set() as server:
        server.add_key("key-a")
        yield server


@pytest.fixture
def signed_app(make_app, key_set):
    pools = [{"region": REGION, "user_pool_id": TEST_POOL, "client_ids": ["client-a"],
              "jwks_url": key_set.url, "endpoint_url": key_set.url.rsplit("/", 1)[0]}]
    app = make_app(plugins=[], cognito_user_pools=json.dumps(pools))
    Factories(app).institution("school")
    return app


def _claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": TEST_ISSUER, "sub": "sub-1", "aud": "client-a", "token_use": "id",
              "iat": now, "auth_time": now, "exp": now + 600, "email": "lee@example.test",
              "email_verified": True, "cognito:groups": ["Admins"]}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _me(app: Any, token: str) -> Any:
    return app.test_client().get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})


def test_a_well_signed_token_is_accepted(signed_app, key_set):
    # The control for the refusals below: only the named defect differs.
    r = _me(signed_app, key_set.sign(_claims(), "key-a"))
    assert r.status_code == 200, r.json
    assert r.json["email"] == "lee@example.test"


DEFECTS = {  # case -> what the refusal says
    "bad-signature": "invalid", "wrong-issuer": "not recognised",
    "wrong-audience": "another app client", "wrong-client": "another app client",
    "expired": "expired", "no-token-use": "invalid", "refresh-token-use": "'refresh'",
    "hs256": "invalid", "alg-none": "invalid", "unknown-kid": "invalid",
    "malformed": "not recognised"}


@pytest.mark.parametrize("case", sorted(DEFECTS))
def test_defective_tokens_are_refused(signed_app, key_set, case):
    sign = key_set.sign
    token = {
        "bad-signature": lambda: sign(_claims(), "key-a", key=new_rsa_key()),
        "wrong-issuer": lambda: sign(_claims(iss=f"https://cognito-idp.{REGION}.amazonaws.com/"
                                                 f"{REGION}_Other"), "key-a"),
        "wrong-audience": lambda: sign(_claims(aud="client-b"), "key-a"),
        "wrong-client": lambda: sign(_claims(token_use="access", aud=None,
                                             client_id="client-b"), "key-a"),
        "expired": lambda: sign(_claims(iat=int(time.time()) - 7200,
                                        exp=int(time.time()) - 60), "key-a"),
        "no-token-use": lambda: sign(_claims(token_use=None), "key-a"),
        "refresh-token-use": lambda: sign(_claims(token_use="refresh"), "key-a"),
        "hs256": lambda: jwt.encode(_claims(), "k" * 32, algorithm="HS256",
                                    headers={"kid": "key-a"}),
        "alg-none": lambda: jwt.encode(_claims(), None, algorithm="none",
                                       headers={"kid": "key-a"}),
        "unknown-kid": lambda: sign(_claims(), "key-z", key=new_rsa_key()),
        "malformed": lambda: "not.a.jwt",
    }[case]()
    assert DEFECTS[case] in _refused(_me(signed_app, token))["detail"]
    with signed_app.extensions["kalpla"].db.session() as s:
        assert s.scalar(select(User)) is None


def test_expiry_message_and_access_tokens_of_linked_users(signed_app, key_set, db):
    body = _refused(_me(signed_app, key_set.sign(_claims(exp=int(time.time()) - 1), "key-a")))
    assert "expired" in body["detail"]
    # An access token (no email) of a user already linked signs in without any lookup.
    assert _me(signed_app, key_set.sign(_claims(), "key-a")).status_code == 200
    access = key_set.sign(_claims(token_use="access", aud=None, client_id="client-a"), "key-a")
    r = _me(signed_app, access)
    assert r.status_code == 200 and r.json["email"] == "lee@example.test"


def test_key_set_is_cached_and_refetched_once_for_a_new_key(signed_app, key_set):
    assert _me(signed_app, key_set.sign(_claims(), "key-a")).status_code == 200
    assert _me(signed_app, key_set.sign(_claims(), "key-a")).status_code == 200
    assert key_set.fetches == 1  # cached
    key_set.add_key("key-b")  # the pool rotated its keys
    assert _me(signed_app, key_set.sign(_claims(), "key-b")).status_code == 200
    assert key_set.fetches == 2
    # A key id nobody publishes costs one more fetch, then is refused without fetching.
    _refused(_me(signed_app, key_set.sign(_claims(), "forged-1", key=new_rsa_key())))
    assert key_set.fetches == 3
    _refused(_me(signed_app, key_set.sign(_claims(), "forged-2", key=new_rsa_key())))
    assert key_set.fetches == 3


def test_kalpla_tokens_still_work_beside_cognito(signed_app):
    factories = Factories(signed_app)
    user = factories.user()
    r = signed_app.test_client().get("/api/v1/me", headers=factories.auth(user))
    assert r.status_code == 200 and r.json["id"] == user.id


def test_pool_settings_are_validated(tmp_path):
    good = {"region": "eu-west-1", "user_pool_id": "eu-west-1_AbC123", "client_ids": ["c1"]}
    for bad, message in [
        ("[]", "must be a JSON list"),
        (json.dumps([{**good, "region": "Mars"}]), "region"),
        (json.dumps([{**good, "user_pool_id": "us-east-1_AbC123"}]), "user_pool_id"),
        (json.dumps([{**good, "client_ids": []}]), "client_ids"),
        (json.dumps([{**good, "token_use": ["refresh"]}]), "token_use"),
        (json.dumps([{**good, "groups": {"Teachers": "teacher"}}]), "groups"),
        (json.dumps([{**good, "institution": "Not A Slug"}]), "institution"),
        (json.dumps([{**good, "jwks_url": "http://keys.example/jwks.json"}]), "https"),
        (json.dumps([good, good]), "twice"),
        (json.dumps([{**good, "pool": "x"}]), "unknown keys"),
    ]:
        with pytest.raises(ConfigError, match="KALPLA_COGNITO_USER_POOLS") as info:
            parse_cognito_pools(bad)
        assert message in str(info.value)

    (pool,) = parse_cognito_pools(json.dumps(good))
    assert pool.issuer == "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbC123"
    assert pool.jwks_url == pool.issuer + "/.well-known/jwks.json"
    assert pool.token_use == ("access", "id") and pool.institution == "default"
    assert pool.roles_for(["Students", "Admins", "Unknown"]) == {"student", "admin"}
    path = tmp_path / "pools.json"
    path.write_text(json.dumps(good))
    settings = load_settings({"instance_path": str(tmp_path), "secret_key": "s" * 40,
                              "cognito_user_pools": str(path)}, environ={})
    assert settings.redacted()["KALPLA_COGNITO_USER_POOLS"] == "eu-west-1_AbC123"
