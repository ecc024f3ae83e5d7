"""Who may do what with files, on every endpoint: the anonymous caller, a student of the
institution, an enrolled student, a student of another institution, a mentor who does not
instruct the course, the instructor, an admin and a platform admin. Files go through the
real flow (ask, upload, confirm) on the local provider."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kalpla_core.testing import Factories
from tests.courses.structure_support import (
    World,
    add_lesson,
    add_module,
    create_course,
    enroll,
    ok,
    problem,
    world,
)
from tests.courses.test_access import _gatekeeper

STAFF = {"instructor", "admin", "platform_admin"}
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(200))
PDF = b"%PDF-1.7\n" + bytes(range(256)) * 4


@pytest.fixture
def app(make_app: Any, tmp_path: Path) -> Any:
    return make_app(plugins=[], instance_path=str(tmp_path / "instance"))


def _ask(client: Any, w: World, user: Any, course_id: str, data: bytes = PDF,
         **fields: Any) -> Any:
    body = {"course_id": course_id, "purpose": "resource", "filename": "notes.pdf",
            "content_type": "application/pdf", "size": len(data), **fields}
    return client.post("/api/v1/files", json=body, headers=w.auth(user))


def _upload(client: Any, w: World, course_id: str, data: bytes = PDF, confirm: bool = True,
            user: Any = None, **fields: Any) -> str:
    """A file through the whole flow; its id."""
    asked = ok(_ask(client, w, user or w.instructor, course_id, data, **fields), 201)
    upload = asked["upload"]
    assert client.put(upload["url"], data=data, headers=upload["headers"]).status_code == 204
    if confirm:
        ok(client.post(f"/api/v1/files/{asked['id']}/confirm", headers=w.auth(w.instructor)))
    return asked["id"]


def _refused(r: Any, name: str, user: Any) -> dict[str, Any]:
    """401 for the anonymous caller, 403 for everyone else."""
    return problem(r, 401 if user is None else 403)


def test_asking_for_an_upload(app, client, factories):
    w = world(factories)
    published = create_course(client, w, publish=True)
    draft = create_course(client, w, slug="draft")
    for name, user in w.people().items():
        r = _ask(client, w, user, published)
        if name in STAFF:
            assert ok(r, 201)["owner_id"] == user.id, name
        else:
            _refused(r, name, user)
        # A draft does not exist for those outside its staff.
        r = _ask(client, w, user, draft)
        if name in STAFF:
            ok(r, 201)
        else:
            problem(r, 404)
    problem(_ask(client, w, w.instructor, "nope"), 404)


def test_an_upload_for_a_lesson_must_be_of_the_course(app, client, factories):
    w = world(factories)
    course_id = create_course(client, w)
    other = create_course(client, w, slug="other")
    lesson = add_lesson(client, w, add_module(client, w, other)["id"])["id"]
    body = problem(_ask(client, w, w.instructor, course_id, lesson_id=lesson), 422)
    assert body["errors"] == {"lesson_id": ["Give a lesson of this course."]}
    own = add_lesson(client, w, add_module(client, w, course_id)["id"])["id"]
    body = problem(_ask(client, w, w.instructor, course_id, PNG, lesson_id=own,
                        purpose="cover", content_type="image/png"), 422)
    assert body["errors"] == {"lesson_id": ["A cover belongs to the course, not to a lesson."]}
    assert ok(_ask(client, w, w.instructor, course_id, lesson_id=own), 201)["lesson_id"] == own


def test_confirming(app, client, factories):
    w = world(factories)
    course_id = create_course(client, w, publish=True)
    enroll(app, w.enrolled, course_id)
    for name, user in w.people().items():
        file_id = _upload(client, w, course_id, confirm=False)
        r = client.post(f"/api/v1/files/{file_id}/confirm", headers=w.auth(user))
        if name in STAFF:
            assert ok(r)["status"] == "ready", name
        else:
            _refused(r, name, user)
    draft = create_course(client, w, slug="draft")
    file_id = _upload(client, w, draft, confirm=False)
    for name, user in w.people().items():
        r = client.post(f"/api/v1/files/{file_id}/confirm", headers=w.auth(user))
        if name in STAFF:
            ok(r)
        else:
            problem(r, 404)


def _reads(client: Any, w: World, file_id: str) -> dict[str, int]:
    """Status of the metadata and of the download for each caller (they always agree)."""
    out = {}
    for name, user in w.people().items():
        meta = client.get(f"/api/v1/files/{file_id}", headers=w.auth(user))
        link = client.get(f"/api/v1/files/{file_id}/download", headers=w.auth(user))
        assert meta.status_code == link.status_code, name
        if link.status_code == 200:
            assert link.headers["Cache-Control"] == "private, no-store", name
            assert meta.get_json()["id"] == file_id
            assert client.get(link.get_json()["url"]).status_code == 200
        out[name] = link.status_code
    return out


ANONYMOUS_401 = {"anonymous": 401, "student": 403, "outsider": 403, "mentor": 403}


def test_reading_a_course_resource(app, client, factories):
    w = world(factories)
    course_id = create_course(client, w, publish=True)
    enroll(app, w.enrolled, course_id)
    resource = _upload(client, w, course_id)
    assert _reads(client, w, resource) == {**ANONYMOUS_401, "enrolled": 200, "instructor": 200,
                                           "admin": 200, "platform_admin": 200}
    body = problem(client.get(f"/api/v1/files/{resource}/download", headers=w.auth(w.student)),
                   403)
    assert body["type"] == "urn:kalpla:problem:not-enrolled"
    # Enrolled elsewhere is enrolled: the catalog is shared between institutions.
    enroll(app, w.outsider, course_id)
    assert _reads(client, w, resource)["outsider"] == 200

    # A pending file exists for the staff alone.
    pending = _upload(client, w, course_id, confirm=False)
    for name, user in w.people().items():
        r = client.get(f"/api/v1/files/{pending}", headers=w.auth(user))
        if name in STAFF:
            assert ok(r)["status"] == "pending"
            body = problem(client.get(f"/api/v1/files/{pending}/download",
                                      headers=w.auth(user)), 409)
            assert body["type"] == "urn:kalpla:problem:file-not-ready"
        else:
            problem(r, 404)


def test_reading_files_of_a_draft_and_of_an_archived_course(app, client, factories):
    w = world(factories)
    draft = create_course(client, w)
    enroll(app, w.enrolled, draft)  # by hand: a draft takes no enrollments
    resource = _upload(client, w, draft)
    cover = _upload(client, w, draft, PNG, purpose="cover", content_type="image/png",
                    filename="cover.png")
    for file_id in (resource, cover):
        assert _reads(client, w, file_id) == {
            "anonymous": 404, "student": 404, "outsider": 404, "mentor": 404, "enrolled": 404,
            "instructor": 200, "admin": 200, "platform_admin": 200}

    archived = create_course(client, w, slug="old", publish=True)
    enroll(app, w.enrolled, archived)
    resource = _upload(client, w, archived)
    cover = _upload(client, w, archived, PNG, purpose="cover", content_type="image/png",
                    filename="cover.png")
    ok(client.post(f"/api/v1/courses/{archived}/archive", headers=w.auth(w.instructor)))
    for file_id in (resource, cover):
        assert _reads(client, w, file_id) == {
            "anonymous": 404, "student": 404, "outsider": 404, "mentor": 404, "enrolled": 200,
            "instructor": 200, "admin": 200, "platform_admin": 200}


def test_the_cover_of_a_published_course_is_for_everyone(app, client, factories):
    w = world(factories)
    course_id = create_course(client, w, publish=True)
    cover = _upload(client, w, course_id, PNG, purpose="cover", content_type="image/png",
                    filename="cover.png")
    assert set(_reads(client, w, cover).values()) == {200}
    link = ok(client.get(f"/api/v1/files/{cover}/download"))
    got = client.get(link["url"])
    assert got.data == PNG and got.mimetype == "image/png"
    assert got.headers["Content-Disposition"].startswith('inline; filename="cover.png"')


def test_lesson_files_follow_the_lesson_access_rules(app, client, factories):
    w = world(factories)
    course_id = create_course(client, w, publish=True)
    enroll(app, w.enrolled, course_id)
    module = add_module(client, w, course_id)["id"]
    handout = _upload(client, w, course_id, purpose="lesson-file")
    preview_handout = _upload(client, w, course_id, purpose="lesson-file")
    add_lesson(client, w, module, "Handout", kind="file", file_id=handout)
    add_lesson(client, w, module, "Taster", kind="file", file_id=preview_handout,
               is_preview=True)
    lesson = add_lesson(client, w, module, "Reading")["id"]
    attached = _upload(client, w, course_id, lesson_id=lesson)  # a resource of one lesson
    unused = _upload(client, w, course_id, purpose="lesson-file")

    readers = {**ANONYMOUS_401, "enrolled": 200, "instructor": 200, "admin": 200,
               "platform_admin": 200}
    assert _reads(client, w, handout) == readers
    assert _reads(client, w, attached) == readers
    body = problem(client.get(f"/api/v1/files/{handout}/download"), 401)
    assert body["reason_code"] == "not-enrolled" and "Sign in" in body["detail"]
    # A free preview's file is for everyone.
    assert set(_reads(client, w, preview_handout).values()) == {200}
    # A lesson file no lesson uses is the staff's.
    assert _reads(client, w, unused) == {**ANONYMOUS_401, "enrolled": 403, "instructor": 200,
                                         "admin": 200, "platform_admin": 200}


def test_a_plugin_gate_narrows_lesson_files(make_app, tmp_path):
    app = make_app(plugins=["gatekeeper"], plugin_objects={"gatekeeper": _gatekeeper([])},
                   instance_path=str(tmp_path / "instance"))
    client = app.test_client()
    w = world(Factories(app), plugins=["gatekeeper"])
    course_id = create_course(client, w, publish=True)
    enroll(app, w.enrolled, course_id)
    module = add_module(client, w, course_id)["id"]
    locked = _upload(client, w, course_id, purpose="lesson-file")
    add_lesson(client, w, module, "Locked handout", kind="file", file_id=locked)
    body = problem(client.get(f"/api/v1/files/{locked}/download", headers=w.auth(w.enrolled)),
                   403)
    assert body["type"] == "urn:kalpla:problem:not-yet-open" and body["plugin"] == "gatekeeper"
    ok(client.get(f"/api/v1/files/{locked}/download", headers=w.auth(w.instructor)))


def test_deleting(app, client, factories):
    w = world(factories)
    course_id = create_course(client, w, publish=True)
    enroll(app, w.enrolled, course_id)
    for name, user in w.people().items():
        file_id = _upload(client, w, course_id)
        r = client.delete(f"/api/v1/files/{file_id}", headers=w.auth(user))
        if name in STAFF:
            assert r.status_code == 204, name
            problem(client.get(f"/api/v1/files/{file_id}", headers=w.auth(w.admin)), 404)
        else:
            _refused(r, name, user)
            ok(client.get(f"/api/v1/files/{file_id}", headers=w.auth(w.admin)))
    draft = create_course(client, w, slug="draft")
    file_id = _upload(client, w, draft)
    for name, user in w.people().items():
        if name not in STAFF:
            problem(client.delete(f"/api/v1/files/{file_id}", headers=w.auth(user)), 404)


def test_a_file_in_use_stays_and_a_deleted_cover_leaves_its_course(app, client, factories):
    w = world(factories)
    course_id = create_course(client, w)
    module = add_module(client, w, course_id)["id"]
    handout = _upload(client, w, course_id, purpose="lesson-file")
    lesson = add_lesson(client, w, module, "Handout", kind="file", file_id=handout)["id"]
    body = problem(client.delete(f"/api/v1/files/{handout}", headers=w.auth(w.instructor)), 409)
    assert body["type"] == "urn:kalpla:problem:file-in-use" and body["lessons"] == [lesson]

    cover = _upload(client, w, course_id, PNG, purpose="cover", content_type="image/png",
                    filename="cover.png")
    r = client.get(f"/api/v1/courses/{course_id}", headers=w.auth(w.instructor))
    ok(client.patch(f"/api/v1/courses/{course_id}", json={"cover_file_id": cover},
                    headers={**w.auth(w.instructor), "If-Match": r.headers["ETag"]}))
    before = client.get(f"/api/v1/courses/{course_id}", headers=w.auth(w.instructor))
    assert before.get_json()["cover_file_id"] == cover
    assert client.delete(f"/api/v1/files/{cover}",
                         headers=w.auth(w.instructor)).status_code == 204
    after = client.get(f"/api/v1/courses/{course_id}", headers=w.auth(w.instructor))
    assert after.get_json()["cover_file_id"] is None
    assert after.headers["ETag"] != before.headers["ETag"]  # caches learn of it


def test_listing_a_course_s_resources(app, client, factories):
    w = world(factories)
    course_id = create_course(client, w, publish=True)
    enroll(app, w.enrolled, course_id)
    resources = [_upload(client, w, course_id, PDF[:100 + i]) for i in range(3)]
    # Not listed: a pending one, a cover, a lesson's file, another course's resource.
    _upload(client, w, course_id, confirm=False)
    _upload(client, w, course_id, PNG, purpose="cover", content_type="image/png")
    lesson = add_lesson(client, w, add_module(client, w, course_id)["id"])["id"]
    _upload(client, w, course_id, lesson_id=lesson)
    _upload(client, w, create_course(client, w, slug="other", publish=True))

    for name, user in w.people().items():
        r = client.get(f"/api/v1/courses/{course_id}/resources?limit=2", headers=w.auth(user))
        if name not in STAFF and name != "enrolled":
            body = _refused(r, name, user)
            assert body.get("reason_code", body["type"]).endswith("not-enrolled")
            continue
        first = ok(r)
        assert r.headers["Cache-Control"] == "private, no-store"
        assert len(first["items"]) == 2 and first["next_cursor"]
        assert r.headers["Link"].endswith('rel="next"')
        second = ok(client.get(f"/api/v1/courses/{course_id}/resources?limit=2&cursor="
                               f"{first['next_cursor']}", headers=w.auth(user)))
        assert second["next_cursor"] is None
        ids = [f["id"] for f in first["items"] + second["items"]]
        assert ids == list(reversed(resources)), name  # newest first, each once

    draft = create_course(client, w, slug="draft")
    _upload(client, w, draft)
    for name, user in w.people().items():
        r = client.get(f"/api/v1/courses/{draft}/resources", headers=w.auth(user))
        if name in STAFF:
            assert len(ok(r)["items"]) == 1
        else:
            problem(r, 404)


def test_the_resource_list_costs_the_same_for_many_files(app, client, factories,
                                                         query_counter):
    w = world(factories)
    course_id = create_course(client, w, publish=True)
    enroll(app, w.enrolled, course_id)
    _upload(client, w, course_id)
    counts = []
    for extra in (0, 8):
        for _ in range(extra):
            _upload(client, w, course_id)
        with query_counter() as q:
            ok(client.get(f"/api/v1/courses/{course_id}/resources",
                          headers=w.auth(w.enrolled)))
        counts.append(q.count)
    assert counts[0] == counts[1]


def test_files_of_another_institution_s_course(app, client, factories):
    """An admin of one institution is no one in another's courses."""
    w = world(factories)
    course_id = create_course(client, w, publish=True)
    resource = _upload(client, w, course_id)
    other_admin = factories.user(roles={w.other: ["admin"]})
    headers = factories.auth(other_admin, w.other)
    problem(client.get(f"/api/v1/files/{resource}/download", headers=headers), 403)
    problem(client.delete(f"/api/v1/files/{resource}", headers=headers), 403)
    problem(client.post("/api/v1/files", headers=headers, json={
        "course_id": course_id, "purpose": "resource", "filename": "x.pdf",
        "content_type": "application/pdf", "size": 10}), 403)
    assert ok(client.get(f"/api/v1/files/{resource}", headers=w.auth(w.instructor)))["status"] \
        == "ready"
