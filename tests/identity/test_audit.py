"""The audit log API: who reads which events, filters, pagination, append-only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from kalpla_core.audit.models import AuditEvent

PROBLEM = "application/problem+json"
URL = "/api/v1/audit-events"
T0 = datetime(2030, 1, 1, tzinfo=UTC)


def _problem(response, status: int) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.content_type == PROBLEM
    return response.get_json(force=True)


@pytest.fixture
def world(factories, db):
    school = factories.institution("school")
    other = factories.institution("other")
    admin = factories.user(roles={school: ["admin"]})
    student = factories.user(roles={school: ["student"]})
    other_admin = factories.user(roles={other: ["admin"]})
    rows = [
        AuditEvent(action="login.succeeded", actor_id=student.id, institution_id=None,
                   occurred_at=T0),
        AuditEvent(action="member.added", actor_id=admin.id, institution_id=school.id,
                   target_type="user", target_id=student.id, occurred_at=T0 + timedelta(1)),
        AuditEvent(action="member.roles_changed", actor_id=admin.id, institution_id=school.id,
                   occurred_at=T0 + timedelta(2), data={"before": ["student"]}),
        AuditEvent(action="apikey.created", actor_id=other_admin.id, institution_id=other.id,
                   occurred_at=T0 + timedelta(3)),
        AuditEvent(action="member.removed", actor_id=student.id, institution_id=school.id,
                   occurred_at=T0 + timedelta(4)),
    ]
    db.add_all(rows)
    db.commit()
    return {"school": school, "other": other, "admin": admin, "student": student,
            "other_admin": other_admin, "ids": [r.id for r in rows]}


def _actions(response) -> list[str]:
    assert response.status_code == 200, response.json
    return [e["action"] for e in response.json["items"]]


def test_institution_admin_reads_their_institution_newest_first(client, factories, world):
    headers = factories.auth(world["admin"], world["school"])
    r = client.get(URL, headers=headers)
    assert _actions(r) == ["member.removed", "member.roles_changed", "member.added"]
    assert r.json["items"][1]["data"] == {"before": ["student"]}

    r = client.get(URL, query_string={"limit": 2}, headers=headers)
    assert _actions(r) == ["member.removed", "member.roles_changed"]
    assert 'rel="next"' in r.headers["Link"]
    r = client.get(URL, query_string={"limit": 2, "cursor": r.json["next_cursor"]},
                   headers=headers)
    assert _actions(r) == ["member.added"] and r.json["next_cursor"] is None

    # The institution can be named by the query instead of the header, with the same check.
    r = client.get(URL, query_string={"institution": "school"},
                   headers=factories.auth(world["admin"]))
    assert len(r.json["items"]) == 3


def test_filters(client, factories, world):
    headers = factories.auth(world["admin"], world["school"])
    assert _actions(client.get(URL, query_string={"action": "member.added"},
                               headers=headers)) == ["member.added"]
    assert _actions(client.get(URL, query_string={"actor_id": world["student"].id},
                               headers=headers)) == ["member.removed"]
    since = (T0 + timedelta(2)).isoformat()
    assert _actions(client.get(URL, query_string={"since": since}, headers=headers)) == [
        "member.removed", "member.roles_changed"]
    r = client.get(URL, query_string={"since": "2030-01-01T00:00:00"}, headers=headers)
    assert "since" in _problem(r, 422)["errors"]


def test_platform_admin_reads_everything_or_one_institution(client, factories, world):
    root = factories.user(platform_admin=True)
    r = client.get(URL, headers=factories.auth(root))
    assert [e["id"] for e in r.json["items"]] == list(reversed(world["ids"]))
    r = client.get(URL, query_string={"institution": "other"}, headers=factories.auth(root))
    assert _actions(r) == ["apikey.created"]
    r = client.get(URL, headers=factories.auth(root, world["school"]))
    assert len(r.json["items"]) == 3
    _problem(client.get(URL, query_string={"institution": "nowhere"},
                        headers=factories.auth(root)), 404)


def test_forbidden_to_students_other_admins_and_anonymous(client, factories, world):
    school = world["school"]
    _problem(client.get(URL, headers=factories.auth(world["student"], school)), 403)
    _problem(client.get(URL, headers=factories.auth(world["other_admin"], school)), 403)
    _problem(client.get(URL, query_string={"institution": "school"},
                        headers=factories.auth(world["other_admin"], world["other"])), 403)
    # Without a header, a non-platform admin reads the default institution, not all.
    _problem(client.get(URL, headers=factories.auth(world["admin"])), 403)
    _problem(client.get(URL), 401)
    _problem(client.get(URL, headers={"Kalpla-Institution": "school"}), 401)


def test_api_keys_read_with_the_audit_scope_only(client, factories, world):
    # Even a platform admin's key reads only its own institution's events.
    root = factories.user(platform_admin=True)

    def key(scopes):
        r = client.post("/api/v1/institutions/school/api-keys",
                        json={"name": "siem", "scopes": scopes}, headers=factories.auth(root))
        return r.json["key"]

    with_scope, without = key(["audit.read"]), key(["members.manage"])
    r = client.get(URL, headers={"X-API-Key": with_scope, "Kalpla-Institution": "school"})
    assert _actions(r) == ["member.removed", "member.roles_changed", "member.added",
                           "apikey.created", "apikey.created"]
    _problem(client.get(URL, headers={"X-API-Key": without, "Kalpla-Institution": "school"}),
             403)
    _problem(client.get(URL, headers={"X-API-Key": with_scope, "Kalpla-Institution": "other"}),
             403)
    _problem(client.get(URL, headers={"X-API-Key": with_scope}), 403)


def test_the_log_is_append_only(client, factories, world):
    root = factories.user(platform_admin=True)
    headers = factories.auth(root)
    event_id = world["ids"][0]
    for method in ("post", "put", "patch", "delete"):
        _problem(getattr(client, method)(URL, json={}, headers=headers), 405)
        assert getattr(client, method)(f"{URL}/{event_id}", json={},
                                       headers=headers).status_code in (404, 405)
    assert len(client.get(URL, headers=headers).json["items"]) == 5


def test_query_count_does_not_grow(client, factories, world, db, query_counter):
    headers = factories.auth(world["admin"], world["school"])
    client.get(URL, headers=headers)
    with query_counter() as few:
        client.get(URL, headers=headers)
    db.add_all([AuditEvent(action="login.failed", institution_id=world["school"].id)
                for _ in range(15)])
    db.commit()
    with query_counter() as many:
        r = client.get(URL, headers=headers)
    assert len(r.json["items"]) == 18
    assert many.count == few.count
