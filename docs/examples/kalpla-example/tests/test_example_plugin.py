"""The example plugin, tested with the same harness every plugin uses."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.plugins("example")


def test_routes_answer_only_where_enabled(client, factories):
    on = factories.institution("on", plugins={"example": {"greeting": "Hi there"}})
    off = factories.institution("off")
    mentor = factories.user(roles={on: ["mentor"], off: ["mentor"]})

    r = client.get("/api/v1/example/notes", headers=factories.auth(mentor, on))
    assert r.status_code == 200
    # The enablement event posted the configured greeting as the first note.
    assert [n["body"] for n in r.json["items"]] == ["Hi there"]

    r = client.get("/api/v1/example/notes", headers=factories.auth(mentor, off))
    assert r.status_code == 404
    assert r.content_type == "application/problem+json"


def test_permission_and_settings_checked(client, factories):
    inst = factories.institution("school", plugins={"example": {"max_note_length": 5}})
    student = factories.user(roles={inst: ["student"]})
    mentor = factories.user(roles={inst: ["mentor"]})

    r = client.post("/api/v1/example/notes", json={"body": "hey"},
                    headers=factories.auth(student, inst))
    assert r.status_code == 403
    r = client.post("/api/v1/example/notes", json={"body": "too long"},
                    headers=factories.auth(mentor, inst))
    assert r.status_code == 422
    assert "body" in r.json["errors"]
    r = client.post("/api/v1/example/notes", json={"body": "short"},
                    headers=factories.auth(mentor, inst))
    assert r.status_code == 201
    assert r.json["author_id"] == mentor.id


def test_invalid_settings_are_refused(client, factories):
    inst = factories.institution("school")
    admin = factories.user(roles={inst: ["admin"]})
    r = client.put("/api/v1/institutions/school/plugins/example",
                   json={"settings": {"max_note_length": 0}}, headers=factories.auth(admin))
    assert r.status_code == 422
    assert "max_note_length" in r.json["errors"]["settings"]
    r = client.get("/api/v1/institutions/school/plugins", headers=factories.auth(admin))
    assert r.json == []


def test_export_and_erase_hooks(app, factories, db):
    inst = factories.institution("school", plugins=["example"])
    mentor = factories.user(roles={inst: ["mentor"]})
    client = app.test_client()
    client.post("/api/v1/example/notes", json={"body": "mine"},
                headers=factories.auth(mentor, inst))
    pm = app.extensions["kalpla"].plugins
    (name, section), = pm.call_each("kalpla_user_export", session=db, user_id=mentor.id)
    assert name == "example" and [n["body"] for n in section["notes"]] == ["mine"]
    pm.call_each("kalpla_user_erase", session=db, user_id=mentor.id)
    (_, section), = pm.call_each("kalpla_user_export", session=db, user_id=mentor.id)
    assert section == {"notes": []}
