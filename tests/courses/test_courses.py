"""Courses: authoring, rights, validation and the lifecycle draft → published → archived."""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any

import pytest

from kalpla_core.contract import CourseArchived, CoursePublished, PluginMeta
from kalpla_core.courses.models import Course
from kalpla_core.enrollment.models import Enrollment
from kalpla_core.hookspecs import hookimpl
from kalpla_core.storage.models import StoredFile

PROBLEM = "application/problem+json"
URL = "/api/v1/courses"


def _problem(response, status: int) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.content_type == PROBLEM
    return response.get_json(force=True)


@dataclass
class World:
    school: Any
    other: Any
    mentor: Any
    mentor2: Any
    admin: Any
    student: Any
    outsider: Any
    other_mentor: Any
    platform_admin: Any


def _world(factories, **institution_kwargs: Any) -> World:
    school = factories.institution("school", **institution_kwargs)
    other = factories.institution("other")
    return World(
        school=school, other=other,
        mentor=factories.user(name="Mira Mentor", roles={school: ["mentor"]}),
        mentor2=factories.user(name="Second Mentor", roles={school: ["mentor"]}),
        admin=factories.user(name="Ada Admin", roles={school: ["admin"]}),
        student=factories.user(roles={school: ["student"]}),
        outsider=factories.user(roles={other: ["student"]}),
        other_mentor=factories.user(roles={other: ["mentor"]}),
        platform_admin=factories.user(platform_admin=True),
    )


def _create(client, factories, user, inst, **fields: Any):
    body = {"slug": "intro", "title": "Introduction", **fields}
    return client.post(URL, json=body, headers=factories.auth(user, inst))


def _course(client, factories, w: World, publish: bool = False, **fields: Any) -> dict:
    r = _create(client, factories, w.mentor, w.school, **fields)
    assert r.status_code == 201, r.get_data(as_text=True)
    if publish:
        r = client.post(f"{URL}/{r.json['id']}/publish",
                        headers=factories.auth(w.mentor, w.school))
        assert r.status_code == 200, r.get_data(as_text=True)
    return r.json


def _spy_plugin(events: list[Any]) -> types.SimpleNamespace:
    ns = types.SimpleNamespace()
    ns.KALPLA_PLUGIN = PluginMeta(name="spy", version="1.0", core_requires=">=0.1")
    ns.kalpla_course_published = hookimpl(lambda event: events.append(event))
    ns.kalpla_course_archived = hookimpl(lambda event: events.append(event))
    return ns


# --- the whole path -------------------------------------------------------------------------

def test_mentor_creates_edits_publishes_and_archives(make_app, factories_for):
    events: list[Any] = []
    app = make_app(plugins=["spy"], plugin_objects={"spy": _spy_plugin(events)})
    factories = factories_for(app)
    client = app.test_client()
    w = _world(factories, plugins=["spy"])
    mentor = factories.auth(w.mentor, w.school)

    r = client.post(URL, headers=mentor, json={
        "slug": "python-basics", "title": "Python basics", "summary": "Start here",
        "description": "# Week 1\n\n*Variables*", "language": "PT-br", "level": "beginner",
        "tags": ["Python", " python ", "Data  Science"], "capacity": 30,
        "enrollment_opens_at": "2030-01-01T00:00:00Z",
        "enrollment_closes_at": "2030-02-01T00:00:00+01:00", "access_days": 90,
        "instructors": [w.mentor2.id]})
    assert r.status_code == 201, r.get_data(as_text=True)
    course = r.json
    assert r.headers["Location"].endswith(f"{URL}/{course['id']}")
    assert r.headers["ETag"]
    assert course["status"] == "draft" and course["published_at"] is None
    assert course["institution"] == "school" and course["institution_id"] == w.school.id
    assert course["language"] == "pt-BR"
    assert course["tags"] == ["data science", "python"]
    assert course["description"] == "# Week 1\n\n*Variables*"
    assert {i["id"] for i in course["instructors"]} == {w.mentor.id, w.mentor2.id}
    assert course["enrollment_closes_at"].startswith("2030-01-31T23:00:00")
    assert course["enrollment_count"] == 0 and course["created_by"] == w.mentor.id

    item = f"{URL}/{course['id']}"
    r = client.get(item, headers=mentor)
    assert r.status_code == 200 and r.headers["Cache-Control"] == "private, no-store"
    etag = r.headers["ETag"]
    assert client.get(item, headers={**mentor, "If-None-Match": etag}).status_code == 304

    _problem(client.patch(item, json={"title": "Python from zero"}, headers=mentor), 428)
    r = client.patch(item, json={"title": "Python from zero", "tags": ["Beginner"],
                                 "enrollment_count": 99},
                     headers={**mentor, "If-Match": etag})
    # enrollment_count is read-only: refused as an unknown field.
    assert "enrollment_count" in _problem(r, 422)["errors"]
    r = client.patch(item, json={"title": "Python from zero", "tags": ["Beginner"]},
                     headers={**mentor, "If-Match": etag})
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.json["title"] == "Python from zero" and r.json["tags"] == ["beginner"]
    new_etag = r.headers["ETag"]
    assert new_etag != etag
    _problem(client.patch(item, json={"summary": "x"}, headers={**mentor, "If-Match": etag}),
             412)

    # Changing only a list (tags) is a new version too.
    r = client.patch(item, json={"tags": ["beginner", "code"]},
                     headers={**mentor, "If-Match": new_etag})
    assert r.status_code == 200 and r.headers["ETag"] != new_etag

    r = client.post(f"{item}/publish", headers=mentor)
    assert r.status_code == 200
    assert r.json["status"] == "published" and r.json["published_at"]
    r = client.get(item)
    assert r.status_code == 200 and r.headers["Cache-Control"] == "public, max-age=60"
    published = [e for e in events if isinstance(e, CoursePublished)]
    assert [(e.course_id, e.slug, e.title, e.institution_id) for e in published] == [
        (course["id"], "python-basics", "Python from zero", w.school.id)]

    r = client.post(f"{item}/archive", headers=mentor)
    assert r.status_code == 200 and r.json["status"] == "archived" and r.json["archived_at"]
    assert [e.course_id for e in events if isinstance(e, CourseArchived)] == [course["id"]]
    _problem(client.get(item), 404)


@pytest.fixture
def factories_for():
    from kalpla_core.testing import Factories

    return Factories


def test_events_reach_only_plugins_enabled_for_the_institution(make_app, factories_for):
    events: list[Any] = []
    app = make_app(plugins=["spy"], plugin_objects={"spy": _spy_plugin(events)})
    factories = factories_for(app)
    w = _world(factories)  # spy not enabled for the school
    _course(app.test_client(), factories, w, publish=True)
    assert events == []


# --- creating -------------------------------------------------------------------------------

def test_who_may_create(client, factories):
    w = _world(factories)
    _problem(client.post(URL, json={"slug": "a", "title": "A"},
                         headers={"Kalpla-Institution": "school"}), 401)
    _problem(_create(client, factories, w.student, w.school), 403)
    # A mentor of another institution names this one: not a mentor here.
    _problem(_create(client, factories, w.other_mentor, w.school), 403)
    _problem(_create(client, factories, w.outsider, w.school), 403)
    assert _create(client, factories, w.admin, w.school, slug="by-admin").status_code == 201
    r = _create(client, factories, w.platform_admin, w.school, slug="by-root")
    assert r.status_code == 201
    assert [i["id"] for i in r.json["instructors"]] == [w.platform_admin.id]
    with factories.kalpla.db.session() as s:
        assert s.query(Course).count() == 2


def test_slug_is_unique_per_institution(client, factories):
    w = _world(factories)
    assert _create(client, factories, w.mentor, w.school).status_code == 201
    assert _problem(_create(client, factories, w.mentor2, w.school), 409)["type"].endswith(
        "slug-taken")
    assert _create(client, factories, w.other_mentor, w.other).status_code == 201
    second = _create(client, factories, w.mentor, w.school, slug="second").json
    r = client.patch(f"{URL}/{second['id']}", json={"slug": "intro"},
                     headers={**factories.auth(w.mentor, w.school),
                              "If-Match": client.get(f"{URL}/{second['id']}",
                                                     headers=factories.auth(w.mentor)
                                                     ).headers["ETag"]})
    _problem(r, 409)


@pytest.mark.parametrize(("fields", "field"), [
    ({"slug": "Not A Slug"}, "slug"),
    ({"language": "english"}, "language"),
    ({"language": "e1"}, "language"),
    ({"level": "expert"}, "level"),
    ({"tags": [f"t{n}" for n in range(21)]}, "tags"),
    ({"tags": ["   "]}, "tags"),
    ({"capacity": -1}, "capacity"),
    ({"access_days": 0}, "access_days"),
    ({"enrollment_opens_at": "2030-02-01T00:00:00Z",
      "enrollment_closes_at": "2030-01-01T00:00:00Z"}, "enrollment_closes_at"),
    ({"title": "x" * 201}, "title"),
    ({"status": "published"}, "status"),
    ({"cover_file_id": "nope"}, "cover_file_id"),
    ({"prerequisites": ["nope"]}, "prerequisites"),
])
def test_invalid_fields_are_refused_and_nothing_is_written(client, factories, fields, field):
    w = _world(factories)
    body = _problem(_create(client, factories, w.mentor, w.school, **fields), 422)
    assert field in body["errors"]
    with factories.kalpla.db.session() as s:
        assert s.query(Course).count() == 0


def test_instructors_must_be_mentors_or_admins_of_the_institution(client, factories):
    w = _world(factories)
    for wrong in (w.student, w.other_mentor, w.outsider):
        body = _problem(_create(client, factories, w.mentor, w.school,
                                instructors=[wrong.id]), 422)
        assert wrong.id in body["errors"]["instructors"][0]
    r = _create(client, factories, w.mentor, w.school, instructors=[w.admin.id, w.mentor2.id])
    assert {i["id"] for i in r.json["instructors"]} == {w.mentor.id, w.admin.id, w.mentor2.id}
    assert sorted(i["name"] for i in r.json["instructors"]) == [
        "Ada Admin", "Mira Mentor", "Second Mentor"]
    # Nobody left to instruct it.
    etag = r.headers["ETag"]
    r = client.patch(f"{URL}/{r.json['id']}", json={"instructors": []},
                     headers={**factories.auth(w.mentor, w.school), "If-Match": etag})
    assert "instructors" in _problem(r, 422)["errors"]


def _file(factories, inst, **fields: Any) -> str:
    values = {"institution_id": inst.id, "provider": "local", "filename": "cover.png",
              "content_type": "image/png", "size": 10, "status": "ready", **fields}
    values.setdefault("storage_key", f"k/{values['filename']}/{values['status']}/{inst.slug}")
    with factories.kalpla.db.session() as s:
        f = StoredFile(**values)
        s.add(f)
        s.flush()
        return f.id


def test_cover_image_is_a_ready_image_of_the_institution(client, factories):
    w = _world(factories)
    pending = _file(factories, w.school, status="pending")
    pdf = _file(factories, w.school, filename="notes.pdf", content_type="application/pdf")
    foreign = _file(factories, w.other)
    good = _file(factories, w.school)
    for wrong in (pending, pdf, foreign):
        _problem(_create(client, factories, w.mentor, w.school, cover_file_id=wrong), 422)
    r = _create(client, factories, w.mentor, w.school, cover_file_id=good)
    assert r.status_code == 201 and r.json["cover_file_id"] == good
    r = client.patch(f"{URL}/{r.json['id']}", json={"cover_file_id": None},
                     headers={**factories.auth(w.mentor), "If-Match": r.headers["ETag"]})
    assert r.status_code == 200 and r.json["cover_file_id"] is None


def test_prerequisites_same_institution_no_self_no_cycle(client, factories):
    w = _world(factories)
    mentor = factories.auth(w.mentor, w.school)
    a = _course(client, factories, w, slug="a")
    b = _course(client, factories, w, slug="b", prerequisites=[a["id"]])
    c = _course(client, factories, w, slug="c", prerequisites=[b["id"]])
    assert b["prerequisites"] == [a["id"]]
    foreign = _create(client, factories, w.other_mentor, w.other, slug="f").json

    def patch(course: dict, required: list[str]):
        etag = client.get(f"{URL}/{course['id']}", headers=mentor).headers["ETag"]
        return client.patch(f"{URL}/{course['id']}", json={"prerequisites": required},
                            headers={**mentor, "If-Match": etag})

    assert "itself" in _problem(patch(a, [a["id"]]), 422)["errors"]["prerequisites"][0]
    assert "cycle" in _problem(patch(a, [c["id"]]), 422)["errors"]["prerequisites"][0]
    assert "cycle" in _problem(patch(a, [b["id"]]), 422)["errors"]["prerequisites"][0]
    assert foreign["id"] in _problem(patch(a, [foreign["id"]]), 422)["errors"][
        "prerequisites"][0]
    r = patch(c, [a["id"], b["id"]])
    assert r.status_code == 200 and r.json["prerequisites"] == sorted([a["id"], b["id"]])
    r = patch(c, [])
    assert r.status_code == 200 and r.json["prerequisites"] == []


# --- reading and editing rights -------------------------------------------------------------

def test_drafts_are_unknown_to_everyone_but_their_staff(client, factories):
    w = _world(factories)
    draft = _course(client, factories, w)
    item = f"{URL}/{draft['id']}"
    for user, inst in ((None, None), (w.student, w.school), (w.outsider, w.other),
                       (w.mentor2, w.school), (w.other_mentor, w.other)):
        headers = factories.auth(user, inst) if user else {}
        assert _problem(client.get(item, headers=headers), 404)["status"] == 404
        # Writes answer the same 404: nothing tells a draft exists.
        _problem(client.post(f"{item}/publish", headers=headers), 404)
        _problem(client.patch(item, json={"title": "x"},
                              headers={**headers, "If-Match": "*"}), 404)
        _problem(client.delete(item, headers=headers), 404)
    for user in (w.mentor, w.admin, w.platform_admin):
        assert client.get(item, headers=factories.auth(user)).status_code == 200
    _problem(client.get(f"{URL}/no-such-course"), 404)


def test_published_course_is_public(client, factories):
    w = _world(factories)
    course = _course(client, factories, w, publish=True)
    for user, inst in ((None, None), (w.student, w.school), (w.outsider, w.other)):
        r = client.get(f"{URL}/{course['id']}",
                       headers=factories.auth(user, inst) if user else {})
        assert r.status_code == 200 and r.json["title"] == "Introduction"
        assert r.headers["Cache-Control"] == "public, max-age=60"


def test_a_mentor_cannot_edit_another_mentors_course_unless_admin(client, factories):
    w = _world(factories)
    course = _course(client, factories, w, publish=True)
    item = f"{URL}/{course['id']}"
    etag = client.get(item).headers["ETag"]

    def attempts(headers: dict[str, str]) -> list[Any]:
        return [
            client.patch(item, json={"summary": "changed"},
                         headers={**headers, "If-Match": etag}),
            client.post(f"{item}/publish", headers=headers),
            client.post(f"{item}/archive", headers=headers),
            client.delete(item, headers=headers),
        ]

    for r in attempts({}):
        _problem(r, 401)
    for user, inst in ((w.mentor2, w.school), (w.student, w.school), (w.outsider, w.other),
                       (w.other_mentor, w.other)):
        for r in attempts(factories.auth(user, inst)):
            _problem(r, 403)
    assert client.get(item).json["summary"] == ""

    r = client.patch(item, json={"summary": "by the admin"},
                     headers={**factories.auth(w.admin, w.school), "If-Match": etag})
    assert r.status_code == 200 and r.json["summary"] == "by the admin"

    # Made an instructor, the second mentor may edit it.
    r = client.patch(item, json={"instructors": [w.mentor.id, w.mentor2.id]},
                     headers={**factories.auth(w.mentor), "If-Match": r.headers["ETag"]})
    assert r.status_code == 200
    r = client.patch(item, json={"summary": "by mentor 2"},
                     headers={**factories.auth(w.mentor2), "If-Match": r.headers["ETag"]})
    assert r.status_code == 200 and r.json["summary"] == "by mentor 2"


def test_a_former_mentor_no_longer_edits_the_course_they_created(client, factories, db):
    from kalpla_core.identity.models import Membership

    w = _world(factories)
    course = _course(client, factories, w)
    db.query(Membership).filter_by(user_id=w.mentor.id).delete()
    db.commit()
    _problem(client.get(f"{URL}/{course['id']}", headers=factories.auth(w.mentor)), 404)


# --- lifecycle ------------------------------------------------------------------------------

def test_lifecycle_transitions(client, factories):
    w = _world(factories)
    mentor = factories.auth(w.mentor, w.school)
    untitled = _course(client, factories, w, slug="untitled", title="")
    body = _problem(client.post(f"{URL}/{untitled['id']}/publish", headers=mentor), 422)
    assert "title" in body["errors"]

    course = _course(client, factories, w)
    item = f"{URL}/{course['id']}"
    _problem(client.post(f"{item}/publish", headers={**mentor, "If-Match": '"stale"'}), 412)
    etag = client.get(item, headers=mentor).headers["ETag"]
    assert client.post(f"{item}/publish", headers={**mentor, "If-Match": etag}).status_code \
        == 200
    _problem(client.post(f"{item}/publish", headers=mentor), 409)
    r = client.patch(item, json={"title": " "},
                     headers={**mentor, "If-Match": client.get(item).headers["ETag"]})
    assert "title" in _problem(r, 422)["errors"]
    assert client.post(f"{item}/archive", headers=mentor).status_code == 200
    _problem(client.post(f"{item}/archive", headers=mentor), 409)
    _problem(client.post(f"{item}/publish", headers=mentor), 409)
    # A draft may be archived directly.
    assert client.post(f"{URL}/{untitled['id']}/archive", headers=mentor).status_code == 200


def _enroll(db, course: dict, user, status: str = "active") -> None:
    db.add(Enrollment(institution_id=course["institution_id"], course_id=course["id"],
                      user_id=user.id, status=status))
    db.commit()


def test_delete(client, factories, db):
    w = _world(factories)
    mentor = factories.auth(w.mentor, w.school)
    draft = _course(client, factories, w, slug="draft")
    assert client.delete(f"{URL}/{draft['id']}", headers=mentor).status_code == 204
    _problem(client.get(f"{URL}/{draft['id']}", headers=mentor), 404)

    published = _course(client, factories, w, slug="published", publish=True)
    item = f"{URL}/{published['id']}"
    assert _problem(client.delete(item, headers=mentor), 409)["type"].endswith(
        "archive-first")
    client.post(f"{item}/archive", headers=mentor)
    _enroll(db, published, w.student, status="dropped")
    assert _problem(client.delete(item, headers=mentor), 409)["type"].endswith(
        "has-enrollments")
    assert client.get(item, headers=mentor).status_code == 200

    required = _course(client, factories, w, slug="required")
    _course(client, factories, w, slug="follow-up", prerequisites=[required["id"]])
    assert _problem(client.delete(f"{URL}/{required['id']}", headers=mentor), 409)[
        "type"].endswith("required-by-others")

    lonely = _course(client, factories, w, slug="lonely")
    _problem(client.delete(f"{URL}/{lonely['id']}",
                           headers={**mentor, "If-Match": '"stale"'}), 412)
    assert client.delete(f"{URL}/{lonely['id']}",
                         headers=factories.auth(w.admin, w.school)).status_code == 204


def test_archived_course_stays_readable_by_its_enrolled_students(client, factories, db):
    w = _world(factories)
    other_student = factories.user(roles={w.school: ["student"]})
    course = _course(client, factories, w, publish=True)
    _enroll(db, course, w.student)
    client.post(f"{URL}/{course['id']}/archive", headers=factories.auth(w.mentor))
    r = client.get(f"{URL}/{course['id']}", headers=factories.auth(w.student))
    assert r.status_code == 200 and r.headers["Cache-Control"] == "private, no-store"
    _problem(client.get(f"{URL}/{course['id']}", headers=factories.auth(other_student)), 404)
