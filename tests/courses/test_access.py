"""Who reads a lesson's content: staff, enrolled students, previews, and the plugins' gate."""

from __future__ import annotations

import types
from datetime import timedelta
from typing import Any

import pytest

from kalpla_core.contract import Decision, LessonAccessRequest, PluginMeta
from kalpla_core.courses.access import can_read_lesson
from kalpla_core.courses.models import Lesson
from kalpla_core.hookspecs import hookimpl
from kalpla_core.identity.models import User
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

pytestmark = pytest.mark.plugins()

STAFF = {"instructor", "admin", "platform_admin"}


def _course_with_lessons(client: Any, w: World, publish: bool = True,
                         slug: str = "intro") -> tuple[str, str, str]:
    """A course with a plain lesson and a free preview: (course, lesson, preview)."""
    course_id = create_course(client, w, publish=publish, slug=slug)
    module = add_module(client, w, course_id)["id"]
    lesson = add_lesson(client, w, module, "Deep dive")["id"]
    preview = add_lesson(client, w, module, "Taster", is_preview=True)["id"]
    return course_id, lesson, preview


def _read(client: Any, w: World, user: Any, lesson_id: str) -> Any:
    return client.get(f"/api/v1/lessons/{lesson_id}", headers=w.auth(user))


def test_published_course_lessons_by_caller(app, client, factories):
    w = world(factories)
    course_id, lesson, preview = _course_with_lessons(client, w)
    enroll(app, w.enrolled, course_id)
    for name, user in w.people().items():
        r = _read(client, w, user, lesson)
        if name in STAFF or name == "enrolled":
            assert ok(r)["body"] == "# Deep dive", name
            assert r.headers["Cache-Control"] == "private, no-store"
        elif user is None:
            body = problem(r, 401)
            assert body["reason_code"] == "not-enrolled" and "Sign in" in body["detail"]
        else:
            body = problem(r, 403)
            assert body["type"] == "urn:kalpla:problem:not-enrolled", name
            assert "body" not in body
        # The free preview is for everyone.
        assert ok(_read(client, w, user, preview))["body"] == "# Taster", name


def test_enrollment_states_decide(app, client, factories):
    w = world(factories)
    course_id, lesson, _ = _course_with_lessons(client, w)
    f = w.factories
    readers = {
        "completed": ("completed", None), "active_not_expired": ("active", timedelta(days=1)),
    }
    refused = {
        "dropped": ("dropped", None), "pending": ("pending", None),
        "waitlisted": ("waitlisted", None), "expired": ("expired", None),
        "active_past_its_expiry": ("active", timedelta(seconds=-1)),
    }
    for label, (status, expires_in) in {**readers, **refused}.items():
        user = f.user(roles={w.school: ["student"]})
        enroll(app, user, course_id, status=status, expires_in=expires_in)
        r = _read(client, w, user, lesson)
        if label in readers:
            assert r.status_code == 200, label
        else:
            assert problem(r, 403)["type"] == "urn:kalpla:problem:not-enrolled", label
    # An enrollment in another course opens nothing here.
    other_course, _, _ = _course_with_lessons(client, w, slug="other")
    enroll(app, w.student, other_course)
    problem(_read(client, w, w.student, lesson), 403)
    # The enrolled student of another institution reads (the catalog is shared).
    enroll(app, w.outsider, course_id)
    assert ok(_read(client, w, w.outsider, lesson))["id"] == lesson


def test_drafts_are_hidden_and_archived_courses_kept_for_the_enrolled(app, client, factories):
    w = world(factories)
    course_id, lesson, preview = _course_with_lessons(client, w, publish=False)
    enroll(app, w.enrolled, course_id)  # by hand: a draft takes no enrollments
    for name, user in w.people().items():
        for lesson_id in (lesson, preview):
            r = _read(client, w, user, lesson_id)
            if name in STAFF:
                assert r.status_code == 200
            else:
                problem(r, 404)  # a draft's lessons do not exist for them, previews included

    archived, lesson, preview = _course_with_lessons(client, w, slug="old")
    enroll(app, w.enrolled, archived)
    ok(client.post(f"/api/v1/courses/{archived}/archive", headers=w.auth(w.instructor)))
    for name, user in w.people().items():
        for lesson_id in (lesson, preview):
            r = _read(client, w, user, lesson_id)
            if name in STAFF or name == "enrolled":
                assert r.status_code == 200, name
            else:
                problem(r, 404)


def test_lesson_etag_after_the_access_check(app, client, factories):
    w = world(factories)
    course_id, lesson, _ = _course_with_lessons(client, w)
    enroll(app, w.enrolled, course_id)
    r = _read(client, w, w.enrolled, lesson)
    etag = r.headers["ETag"]
    r = client.get(f"/api/v1/lessons/{lesson}",
                   headers={**w.auth(w.enrolled), "If-None-Match": etag})
    assert r.status_code == 304
    # Knowing the ETag opens nothing to a reader without access.
    r = client.get(f"/api/v1/lessons/{lesson}",
                   headers={**w.auth(w.student), "If-None-Match": etag})
    problem(r, 403)


def test_the_service_gives_reasons(app, client, factories, db):
    w = world(factories)
    draft, draft_lesson, _ = _course_with_lessons(client, w, publish=False, slug="draft")
    course_id, lesson, preview = _course_with_lessons(client, w)
    enroll(app, w.enrolled, course_id)
    enroll(app, w.student, draft)  # by hand
    kalpla = app.extensions["kalpla"]

    def decide(user: Any, lesson_id: str) -> Decision:
        fresh = db.get(User, user.id) if user is not None else None
        target = db.get(Lesson, lesson_id)
        assert target is not None
        return can_read_lesson(db, kalpla, fresh, target)

    assert decide(w.instructor, draft_lesson).outcome == "allow"
    assert decide(w.platform_admin, draft_lesson).outcome == "allow"
    assert decide(w.student, draft_lesson).code == "course-not-published"
    assert decide(None, preview).outcome == "allow"
    assert decide(w.enrolled, lesson).outcome == "allow"
    denied = decide(w.mentor, lesson)
    assert (denied.outcome, denied.code) == ("deny", "not-enrolled") and denied.reason
    assert decide(w.outsider, lesson).code == "not-enrolled"
    # An account switched off reads only what the anonymous read.
    with kalpla.db.session() as s:
        user = s.get(User, w.enrolled.id)
        assert user is not None
        user.is_active = False
    db.expire_all()
    assert decide(w.enrolled, lesson).code == "not-enrolled"
    assert decide(w.enrolled, preview).outcome == "allow"


# --- the plugins' gate ------------------------------------------------------------------------

def _gatekeeper(asked: list[LessonAccessRequest]) -> types.SimpleNamespace:
    """Denies lessons whose title starts with "Locked"; holds "Paid" ones pending."""
    ns = types.SimpleNamespace()
    ns.KALPLA_PLUGIN = PluginMeta(name="gatekeeper", version="1.0", core_requires=">=0.1")

    @hookimpl
    def kalpla_lesson_access(session: Any, request: LessonAccessRequest) -> Decision | None:
        asked.append(request)
        title = session.get(Lesson, request.lesson_id).title
        if title.startswith("Locked"):
            return Decision.deny("This lesson opens next week.", "not-yet-open")
        if title.startswith("Paid"):
            return Decision.pending("Buy the add-on to read it.",
                                    {"type": "checkout", "url": "https://shop.example/1"},
                                    code="payment-required")
        return None

    ns.kalpla_lesson_access = kalpla_lesson_access
    return ns


def test_a_plugin_narrows_access_where_it_is_enabled(make_app):
    asked: list[LessonAccessRequest] = []
    app = make_app(plugins=["gatekeeper"], plugin_objects={"gatekeeper": _gatekeeper(asked)})
    client = app.test_client()
    w = world(Factories(app), plugins=["gatekeeper"])
    course_id = create_course(client, w, publish=True)
    module = add_module(client, w, course_id)["id"]
    open_lesson = add_lesson(client, w, module, "Open")["id"]
    locked = add_lesson(client, w, module, "Locked lesson")["id"]
    locked_preview = add_lesson(client, w, module, "Locked preview", is_preview=True)["id"]
    paid = add_lesson(client, w, module, "Paid extra")["id"]
    enroll(app, w.enrolled, course_id)

    assert ok(_read(client, w, w.enrolled, open_lesson))["title"] == "Open"
    assert asked[-1] == LessonAccessRequest(institution_id=w.school.id, course_id=course_id,
                                            lesson_id=open_lesson, user_id=w.enrolled.id)
    body = problem(_read(client, w, w.enrolled, locked), 403)
    assert body["type"] == "urn:kalpla:problem:not-yet-open"
    assert body["detail"] == "This lesson opens next week." and body["plugin"] == "gatekeeper"
    body = problem(_read(client, w, w.enrolled, paid), 403)
    assert body["type"] == "urn:kalpla:problem:payment-required"
    assert body["action"] == {"type": "checkout", "url": "https://shop.example/1"}
    # A preview can be narrowed too, for the anonymous as for anyone (403: signing in
    # would not help).
    body = problem(_read(client, w, None, locked_preview), 403)
    assert body["plugin"] == "gatekeeper"
    assert asked[-1].user_id is None
    # Never widened: the core's refusal stands without asking the plugin.
    before = len(asked)
    problem(_read(client, w, w.student, open_lesson), 403)
    assert len(asked) == before
    # The course's staff author the lesson: the gate does not lock them out.
    for user in (w.instructor, w.admin, w.platform_admin):
        assert ok(_read(client, w, user, locked))["title"] == "Locked lesson"
    assert len(asked) == before


def test_the_gate_of_a_plugin_not_enabled_is_not_asked(make_app):
    asked: list[LessonAccessRequest] = []
    app = make_app(plugins=["gatekeeper"], plugin_objects={"gatekeeper": _gatekeeper(asked)})
    client = app.test_client()
    w = world(Factories(app))
    course_id = create_course(client, w, publish=True)
    locked = add_lesson(client, w, add_module(client, w, course_id)["id"], "Locked")["id"]
    enroll(app, w.enrolled, course_id)
    assert ok(_read(client, w, w.enrolled, locked))["title"] == "Locked"
    assert asked == []


# --- the lesson's file ------------------------------------------------------------------------

VIDEO = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8


def _uploaded(client: Any, w: World, course_id: str, data: bytes, content_type: str,
              purpose: str) -> str:
    """A file through the upload flow (ask, upload, confirm); its id."""
    asked = ok(client.post("/api/v1/files", json={
        "course_id": course_id, "purpose": purpose, "filename": "clip.mp4",
        "content_type": content_type, "size": len(data)}, headers=w.auth(w.instructor)), 201)
    upload = asked["upload"]
    assert client.put(upload["url"], data=data, headers=upload["headers"]).status_code == 204
    ok(client.post(f"/api/v1/files/{asked['id']}/confirm", headers=w.auth(w.instructor)))
    return asked["id"]


def test_lesson_file_links_follow_the_access_rules(app, client, factories):
    w = world(factories)
    course_id = create_course(client, w, publish=True)
    module = add_module(client, w, course_id)["id"]
    video = _uploaded(client, w, course_id, VIDEO, "video/mp4", "video")
    lesson = add_lesson(client, w, module, "Watch", kind="video", file_id=video,
                        duration_seconds=30)["id"]
    preview = add_lesson(client, w, module, "Trailer", kind="video", file_id=video,
                         duration_seconds=30, is_preview=True)["id"]
    text = add_lesson(client, w, module, "Read")["id"]
    enroll(app, w.enrolled, course_id)

    for name, user in w.people().items():
        r = client.get(f"/api/v1/lessons/{lesson}/file", headers=w.auth(user))
        if name in STAFF or name == "enrolled":
            link = ok(r)
            assert r.headers["Cache-Control"] == "private, no-store"
            assert link["content_type"] == "video/mp4" and link["size"] == len(VIDEO)
            assert 0 < link["expires_in"] <= 3600
            got = client.get(link["url"])  # the signature is the permission
            assert got.status_code == 200 and got.data == VIDEO, name
        elif user is None:
            problem(r, 401)
        else:
            assert problem(r, 403)["type"] == "urn:kalpla:problem:not-enrolled"
        assert ok(client.get(f"/api/v1/lessons/{preview}/file", headers=w.auth(user)))["url"]
    # A lesson without a file, an unknown lesson.
    assert problem(client.get(f"/api/v1/lessons/{text}/file", headers=w.auth(w.enrolled)),
                   404)["type"] == "urn:kalpla:problem:no-file"
    problem(client.get("/api/v1/lessons/nosuch/file", headers=w.auth(w.admin)), 404)

    # A draft's lesson files do not exist for anyone but its staff.
    draft = create_course(client, w, slug="draft")
    clip = _uploaded(client, w, draft, VIDEO, "video/mp4", "video")
    hidden = add_lesson(client, w, add_module(client, w, draft)["id"], "Draft clip",
                        kind="video", file_id=clip, duration_seconds=5, is_preview=True)["id"]
    for name, user in w.people().items():
        r = client.get(f"/api/v1/lessons/{hidden}/file", headers=w.auth(user))
        if name in STAFF:
            assert ok(r)["url"]
        else:
            problem(r, 404)


def test_a_plugin_gate_narrows_the_lesson_file_too(make_app):
    asked: list[LessonAccessRequest] = []
    app = make_app(plugins=["gatekeeper"], plugin_objects={"gatekeeper": _gatekeeper(asked)})
    client = app.test_client()
    w = world(Factories(app), plugins=["gatekeeper"])
    course_id = create_course(client, w, publish=True)
    video = _uploaded(client, w, course_id, VIDEO, "video/mp4", "video")
    locked = add_lesson(client, w, add_module(client, w, course_id)["id"], "Locked clip",
                        kind="video", file_id=video, duration_seconds=5)["id"]
    enroll(app, w.enrolled, course_id)
    body = problem(client.get(f"/api/v1/lessons/{locked}/file", headers=w.auth(w.enrolled)),
                   403)
    assert body["plugin"] == "gatekeeper" and "url" not in body
    assert ok(client.get(f"/api/v1/lessons/{locked}/file", headers=w.auth(w.instructor)))
