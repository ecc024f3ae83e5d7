"""Institution API keys: creation (shown once, stored hashed), scopes, revocation, usage and
per-key quotas."""

from __future__ import annotations

import hashlib
import logging
import time

import pytest
from sqlalchemy import select

from kalpla_core.audit.models import AuditEvent
from kalpla_core.contract import Permission, PluginMeta
from kalpla_core.hookspecs import hookimpl
from kalpla_core.identity import apikeys
from kalpla_core.identity.models import APIKey, User
from kalpla_core.testing import Factories

PROBLEM = "application/problem+json"


def _problem(response, status: int) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.content_type == PROBLEM
    return response.get_json(force=True)


@pytest.fixture
def school(factories):
    return factories.institution("school")


@pytest.fixture
def admin(factories, school):
    return factories.user(email="admin@example.test", roles={school: ["admin"]})


def _create(client, factories, user, slug="school", **body):
    body = {"name": "integration", **body}
    return client.post(f"/api/v1/institutions/{slug}/api-keys", json=body,
                       headers=factories.auth(user))


def test_key_is_shown_once_and_stored_hashed(client, factories, admin, db, caplog):
    caplog.set_level(logging.DEBUG)
    r = _create(client, factories, admin, scopes=["members.manage"], rate_plan="bulk")
    assert r.status_code == 201, r.json
    assert r.headers["Cache-Control"] == "no-store"
    key = r.json["key"]
    assert key.startswith(f"klp_{r.json['prefix']}_")
    assert r.json["scopes"] == ["members.manage"] and r.json["rate_plan"] == "bulk"
    row = db.get(APIKey, r.json["id"])
    assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert row.created_by == admin.id

    listing = client.get("/api/v1/institutions/school/api-keys", headers=factories.auth(admin))
    item = client.get(f"/api/v1/institutions/school/api-keys/{row.id}",
                      headers=factories.auth(admin))
    assert [k["id"] for k in listing.json["items"]] == [row.id]
    assert item.json["prefix"] == row.prefix
    # Using the key, then revoking it, leaves no trace of the secret anywhere.
    client.get("/api/v1/institutions/school/members", headers={"X-API-Key": key})
    client.delete(f"/api/v1/institutions/school/api-keys/{row.id}",
                  headers=factories.auth(admin))
    secret = key.split("_", 2)[2]
    for text in (listing.get_data(as_text=True), item.get_data(as_text=True), caplog.text):
        assert secret not in text and row.key_hash not in text
    events = db.scalars(select(AuditEvent).where(AuditEvent.target_id == row.id)
                        .order_by(AuditEvent.id)).all()
    assert [e.action for e in events] == ["apikey.created", "apikey.revoked"]
    assert all(secret not in str(e.data) and row.key_hash not in str(e.data) for e in events)


def test_create_validates_scopes_and_plan(client, factories, admin):
    r = _create(client, factories, admin, scopes=["no.such.permission"])
    assert "scopes" in _problem(r, 422)["errors"]
    r = _create(client, factories, admin, rate_plan="unlimited")
    assert "rate_plan" in _problem(r, 422)["errors"]
    _problem(_create(client, factories, admin, name=""), 422)


class Grading:
    """A plugin whose permission admins do not hold by default."""

    KALPLA_PLUGIN = PluginMeta(name="grading", version="1.0", core_requires=">=0.1")

    @staticmethod
    @hookimpl
    def kalpla_permissions():
        return [Permission("grading.grade", "Grade submissions", ("mentor",))]


def test_scopes_must_be_held_by_the_creator(make_app):
    app = make_app(plugins=["grading"], plugin_objects={"grading": Grading})
    factories = Factories(app)
    client = app.test_client()
    school = factories.institution("school")
    admin = factories.user(roles={school: ["admin"]})
    r = _create(client, factories, admin, scopes=["grading.grade"])
    assert _problem(r, 403)["type"].endswith("scope-not-held")
    both = factories.user(roles={school: ["admin", "mentor"]})
    assert _create(client, factories, both, scopes=["grading.grade"]).status_code == 201


def test_forbidden_to_students_other_admins_and_anonymous(client, factories, school, admin):
    key_id = _create(client, factories, admin).json["id"]
    student = factories.user(roles={school: ["student"]})
    other = factories.institution("other")
    other_admin = factories.user(roles={other: ["admin"]})
    base = "/api/v1/institutions/school/api-keys"
    for who, status in ((student, 403), (other_admin, 403), (None, 401)):
        headers = factories.auth(who) if who else {}
        _problem(client.get(base, headers=headers), status)
        _problem(client.get(f"{base}/{key_id}", headers=headers), status)
        _problem(client.post(base, json={"name": "x"}, headers=headers), status)
        _problem(client.delete(f"{base}/{key_id}", headers=headers), status)
    # A key of another institution is not found through this one.
    other_key = _create(client, factories, other_admin, slug="other").json["id"]
    _problem(client.delete(f"{base}/{other_key}", headers=factories.auth(admin)), 404)
    r = client.get(base, headers=factories.auth(admin))
    assert [k["revoked_at"] for k in r.json["items"]] == [None]


def test_requests_with_a_key_act_with_its_scopes_only(client, factories, school, admin, db):
    other = factories.institution("other")
    factories.user(roles={other: ["admin"]})
    creator = factories.user(roles={school: ["admin"], other: ["admin"]})
    key = _create(client, factories, creator, scopes=["members.manage"]).json["key"]

    for headers in ({"X-API-Key": key}, {"Authorization": f"Bearer {key}"}):
        r = client.get("/api/v1/institutions/school/members", headers=headers)
        assert r.status_code == 200, r.json
    # Its creator may edit the institution; the key, without institutions.manage, may not.
    etag = client.get("/api/v1/institutions/school",
                      headers=factories.auth(creator)).headers["ETag"]
    r = client.patch("/api/v1/institutions/school", json={"name": "Renamed"},
                     headers={"X-API-Key": key, "If-Match": etag})
    _problem(r, 403)
    r = client.patch("/api/v1/institutions/school", json={"name": "Renamed"},
                     headers={**factories.auth(creator), "If-Match": etag})
    assert r.status_code == 200
    # A key of one institution is refused in another, whatever its creator holds there.
    _problem(client.get("/api/v1/institutions/other/members", headers={"X-API-Key": key}), 403)
    # Keys do not mint keys.
    _problem(client.post("/api/v1/institutions/school/api-keys", json={"name": "child"},
                         headers={"X-API-Key": key}), 403)

    row = db.scalar(select(APIKey).where(APIKey.created_by == creator.id))
    assert row.usage_count == 5 and row.last_used_at is not None


def test_revoked_malformed_and_orphaned_keys_are_refused(client, factories, school, admin, db):
    created = _create(client, factories, admin, scopes=["members.manage"]).json
    key = created["key"]
    members = "/api/v1/institutions/school/members"
    assert client.get(members, headers={"X-API-Key": key}).status_code == 200
    for bad in (key[:-2] + "xx", "klp_", "klp_nosuchprefix_secret", key + "x"):
        _problem(client.get(members, headers={"Authorization": f"Bearer {bad}"}), 401)
    # A header that is not a Kalpla key is not claimed: the request is anonymous.
    assert client.get("/api/v1/institutions", headers={"X-API-Key": "other-system"}).status_code \
        == 200
    _problem(client.get(members, headers={"X-API-Key": "other-system"}), 401)

    # The creator's account is disabled: the key stops working.
    db.get(User, admin.id).is_active = False
    db.commit()
    _problem(client.get(members, headers={"X-API-Key": key}), 401)
    db.get(User, admin.id).is_active = True
    db.commit()
    assert client.get(members, headers={"X-API-Key": key}).status_code == 200

    r = client.delete(f"/api/v1/institutions/school/api-keys/{created['id']}",
                      headers=factories.auth(admin))
    assert r.status_code == 204
    assert _problem(client.get(members, headers={"X-API-Key": key}), 401)["detail"]
    r = client.get("/api/v1/institutions/school/api-keys?include_revoked=true",
                   headers=factories.auth(admin))
    assert r.json["items"][0]["revoked_at"] is not None
    r = client.get("/api/v1/institutions/school/api-keys", headers=factories.auth(admin))
    assert r.json["items"] == []


def test_quota_per_key(client, factories, admin, monkeypatch):
    monkeypatch.setitem(apikeys.RATE_PLANS, "standard",
                        apikeys.RatePlan("standard", 3, 60, "three per minute"))
    one = _create(client, factories, admin, scopes=["members.manage"]).json["key"]
    two = _create(client, factories, admin, scopes=["members.manage"]).json["key"]
    members = "/api/v1/institutions/school/members"
    remaining = []
    for _ in range(3):
        r = client.get(members, headers={"X-API-Key": one})
        assert r.status_code == 200
        assert r.headers["RateLimit-Limit"] == "3"
        assert r.headers["RateLimit-Policy"] == "3;w=60"
        remaining.append(r.headers["RateLimit-Remaining"])
    assert remaining == ["2", "1", "0"]
    r = client.get(members, headers={"X-API-Key": one})
    body = _problem(r, 429)
    assert body["type"].endswith("rate-limited")
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    assert r.headers["RateLimit-Remaining"] == "0"
    # Another key has its own quota; requests without a key carry no quota headers.
    assert client.get(members, headers={"X-API-Key": two}).status_code == 200
    r = client.get(members, headers=factories.auth(admin))
    assert r.status_code == 200 and "RateLimit-Limit" not in r.headers


def test_quota_window_ends(client, factories, admin, monkeypatch):
    monkeypatch.setitem(apikeys.RATE_PLANS, "bulk", apikeys.RatePlan("bulk", 2, 1, "two a second"))
    key = _create(client, factories, admin, scopes=["members.manage"], rate_plan="bulk").json["key"]
    members = "/api/v1/institutions/school/members"
    statuses = [client.get(members, headers={"X-API-Key": key}).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    time.sleep(1.1)
    r = client.get(members, headers={"X-API-Key": key})
    assert r.status_code == 200 and r.headers["RateLimit-Remaining"] == "1"
