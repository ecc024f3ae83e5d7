"""Institution members and roles: admin endpoints and the caller's own memberships."""

from __future__ import annotations

import logging
import re

from sqlalchemy import select

from kalpla_core.audit.models import AuditEvent
from kalpla_core.identity.models import Membership, User
from kalpla_core.mail.models import OutboxMessage

PROBLEM = "application/problem+json"


def _problem(response, status: int) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.content_type == PROBLEM
    return response.get_json(force=True)


def _setup(factories):
    school = factories.institution("school")
    other = factories.institution("other")
    admin = factories.user(email="admin@example.test", roles={school: ["admin"]})
    student = factories.user(email="student@example.test", roles={school: ["student"]})
    outsider_admin = factories.user(email="else@example.test", roles={other: ["admin"]})
    return school, other, admin, student, outsider_admin


def test_admin_lists_members_paginated_and_filtered_by_role(client, factories):
    school, _, admin, student, _ = _setup(factories)
    mentor = factories.user(email="mentor@example.test", roles={school: ["mentor", "student"]})
    headers = factories.auth(admin)

    r = client.get("/api/v1/institutions/school/members?limit=2", headers=headers)
    assert r.status_code == 200
    assert [m["email"] for m in r.json["items"]] == ["admin@example.test", "mentor@example.test"]
    assert r.json["items"][1]["roles"] == ["mentor", "student"]
    assert 'rel="next"' in r.headers["Link"]
    r = client.get("/api/v1/institutions/school/members",
                   query_string={"limit": 2, "cursor": r.json["next_cursor"]}, headers=headers)
    assert [m["user_id"] for m in r.json["items"]] == [student.id]
    assert r.json["next_cursor"] is None

    r = client.get("/api/v1/institutions/school/members?role=student", headers=headers)
    assert [m["user_id"] for m in r.json["items"]] == [mentor.id, student.id]
    r = client.get("/api/v1/institutions/school/members?role=owner", headers=headers)
    assert "role" in _problem(r, 422)["errors"]


def test_member_list_query_count_does_not_grow(client, factories, query_counter):
    school, _, admin, _, _ = _setup(factories)
    headers = factories.auth(admin)
    client.get("/api/v1/institutions/school/members", headers=headers)  # warm caches
    with query_counter() as few:
        client.get("/api/v1/institutions/school/members", headers=headers)
    for n in range(8):
        factories.user(roles={school: ["student", "mentor"]}, email=f"m{n}@example.test")
    with query_counter() as many:
        r = client.get("/api/v1/institutions/school/members", headers=headers)
    assert len(r.json["items"]) == 10
    assert many.count == few.count


def test_forbidden_to_students_other_admins_and_anonymous(client, factories):
    _school, _, admin, student, outsider_admin = _setup(factories)
    base = "/api/v1/institutions/school/members"
    item = f"{base}/{admin.id}"
    for who, status in ((student, 403), (outsider_admin, 403), (None, 401)):
        headers = factories.auth(who) if who else {}
        _problem(client.get(base, headers=headers), status)
        _problem(client.get(item, headers=headers), status)
        _problem(client.post(base, json={"email": "x@example.test", "roles": ["student"]},
                             headers=headers), status)
        _problem(client.patch(item, json={"roles": ["student"]}, headers=headers), status)
        _problem(client.delete(item, headers=headers), status)
    # Nothing changed.
    r = client.get(item, headers=factories.auth(admin))
    assert r.json["roles"] == ["admin"]


def test_platform_admin_manages_any_institution(client, factories):
    _school, _, _, student, _ = _setup(factories)
    root = factories.user(platform_admin=True)
    r = client.patch(f"/api/v1/institutions/school/members/{student.id}",
                     json={"roles": ["mentor"]}, headers=factories.auth(root))
    assert r.status_code == 200
    assert r.json["roles"] == ["mentor"]


def test_add_change_remove_are_audited(client, factories, db):
    school, _other, admin, _, outsider_admin = _setup(factories)
    newcomer = factories.user(email="New@Example.test")
    headers = factories.auth(admin)
    base = "/api/v1/institutions/school/members"

    r = client.post(base, json={"email": "new@example.test", "roles": ["student", "mentor"]},
                    headers=headers)
    assert r.status_code == 201, r.json
    assert r.json["user_id"] == newcomer.id and r.json["roles"] == ["mentor", "student"]
    _problem(client.post(base, json={"email": "new@example.test", "roles": ["admin"]},
                         headers=headers), 409)
    _problem(client.post(base, json={"email": "new@example.test", "roles": []},
                         headers=headers), 422)

    r = client.patch(f"{base}/{newcomer.id}", json={"roles": ["admin"]}, headers=headers)
    assert r.status_code == 200 and r.json["roles"] == ["admin"]
    # A member of another institution only is not a member here.
    _problem(client.patch(f"{base}/{outsider_admin.id}", json={"roles": ["student"]},
                          headers=headers), 404)
    _problem(client.patch(f"{base}/unknown", json={"roles": ["student"]}, headers=headers), 404)

    r = client.delete(f"{base}/{newcomer.id}", headers=headers)
    assert r.status_code == 204
    _problem(client.delete(f"{base}/{newcomer.id}", headers=headers), 404)
    assert db.scalars(select(Membership).where(Membership.user_id == newcomer.id)).all() == []

    events = db.scalars(select(AuditEvent).where(AuditEvent.target_id == newcomer.id)
                        .order_by(AuditEvent.id)).all()
    assert [(e.action, e.actor_id, e.institution_id) for e in events] == [
        ("member.added", admin.id, school.id),
        ("member.roles_changed", admin.id, school.id),
        ("member.removed", admin.id, school.id),
    ]
    assert events[1].data == {"before": ["mentor", "student"], "after": ["admin"]}


def test_the_last_admin_stays(client, factories):
    _school, _, admin, student, _ = _setup(factories)
    headers = factories.auth(admin)
    item = f"/api/v1/institutions/school/members/{admin.id}"
    assert _problem(client.patch(item, json={"roles": ["student"]}, headers=headers),
                    409)["type"].endswith("last-admin")
    _problem(client.delete(item, headers=headers), 409)
    # Keeping the admin role while adding another is fine.
    r = client.patch(item, json={"roles": ["admin", "mentor"]}, headers=headers)
    assert r.json["roles"] == ["admin", "mentor"]
    # With a second admin, the first may step down.
    client.patch(f"/api/v1/institutions/school/members/{student.id}", json={"roles": ["admin"]},
                 headers=headers)
    assert client.delete(item, headers=headers).status_code == 204


def test_my_memberships(client, factories):
    school, other, _, _, _ = _setup(factories)
    me = factories.user(roles={school: ["student", "mentor"], other: ["admin"]})
    factories.user(roles={school: ["admin"]})
    r = client.get("/api/v1/me/memberships", headers=factories.auth(me))
    assert r.status_code == 200
    assert [(m["institution"]["slug"], m["roles"]) for m in r.json["items"]] == [
        ("other", ["admin"]), ("school", ["mentor", "student"])]
    r = client.get("/api/v1/me/memberships?limit=1", headers=factories.auth(me))
    assert len(r.json["items"]) == 1 and r.json["next_cursor"]
    _problem(client.get("/api/v1/me/memberships"), 401)
    # An API key acts for its institution, not as its creator's person.
    admin = factories.user(roles={school: ["admin"]})
    key = client.post("/api/v1/institutions/school/api-keys",
                      json={"name": "k", "scopes": ["members.manage"]},
                      headers=factories.auth(admin)).json["key"]
    _problem(client.get("/api/v1/me/memberships", headers={"X-API-Key": key}), 403)


def test_inviting_a_new_address(client, factories, db, caplog):
    caplog.set_level(logging.DEBUG)
    _school, _, admin, _, _ = _setup(factories)
    r = client.post("/api/v1/institutions/school/members",
                    json={"email": "Invitee@Example.test", "roles": ["mentor"], "name": "Ivy"},
                    headers=factories.auth(admin))
    assert r.status_code == 201, r.json
    assert r.json["invited"] is True and r.json["email"] == "invitee@example.test"
    assert r.json["roles"] == ["mentor"]
    user = db.get(User, r.json["user_id"])
    assert user.password_hash is None and user.email_verified_at is None

    mail = db.scalar(select(OutboxMessage).where(OutboxMessage.to == "invitee@example.test"))
    assert mail.template == "invitation" and "School" in mail.subject
    token = re.search(r"token=([\w-]+)", mail.body_text).group(1)
    # No password yet: nobody can log in.
    login = {"email": "invitee@example.test", "password": "a brand new passphrase"}
    assert client.post("/api/v1/auth/token", json=login).status_code == 401
    r = client.post("/api/v1/auth/password/reset",
                    json={"token": token, "password": login["password"]})
    assert r.status_code < 300, r.get_data(as_text=True)
    r = client.post("/api/v1/auth/token", json=login)
    assert r.status_code == 200, r.json
    r = client.get("/api/v1/me/memberships",
                   headers={"Authorization": f"Bearer {r.json['access_token']}"})
    assert [(m["institution"]["slug"], m["roles"]) for m in r.json["items"]] == [
        ("school", ["mentor"])]

    event = db.scalar(select(AuditEvent).where(AuditEvent.action == "member.added"))
    assert event.data == {"roles": ["mentor"], "invited": True}
    assert token not in caplog.text and token not in str(event.data)
    # An existing member is not invited again.
    r = client.post("/api/v1/institutions/school/members",
                    json={"email": "invitee@example.test", "roles": ["student"]},
                    headers=factories.auth(admin))
    _problem(r, 409)
