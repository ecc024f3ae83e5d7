"""Modules and lessons: ordering and moves (dense positions), lesson kinds, rights, ETags and
the lesson-changed events."""

from __future__ import annotations

import types
from typing import Any

import pytest
from marshmallow import Schema, fields, validate
from sqlalchemy import select

from kalpla_core.contract import LessonChanged, LessonKind, PluginMeta
from kalpla_core.courses.models import Course, Lesson, Module
from kalpla_core.hookspecs import hookimpl
from kalpla_core.http.problems import APIError
from kalpla_core.testing import Factories
from tests.courses.structure_support import (
    World,
    add_lesson,
    add_module,
    create_course,
    enroll,
    ok,
    problem,
    stored_file,
    world,
)

pytestmark = pytest.mark.plugins()


def _structure_version(app: Any, course_id: str) -> int:
    with app.extensions["kalpla"].db.session() as s:
        course = s.get(Course, course_id)
        assert course is not None
        return course.structure_version


def _positions(app: Any, course_id: str) -> dict[str, list[tuple[str, int]]]:
    """Module title -> [(lesson title, position)] as stored, modules in position order."""
    with app.extensions["kalpla"].db.session() as s:
        modules = s.scalars(select(Module).where(Module.course_id == course_id)
                            .order_by(Module.position)).all()
        assert [m.position for m in modules] == list(range(len(modules)))
        out = {}
        for m in modules:
            lessons = s.scalars(select(Lesson).where(Lesson.module_id == m.id)
                                .order_by(Lesson.position)).all()
            assert [lesson.position for lesson in lessons] == list(range(len(lessons)))
            out[m.title] = [(lesson.title, lesson.position) for lesson in lessons]
        return out


def _titles(app: Any, course_id: str) -> dict[str, list[str]]:
    return {m: [t for t, _ in ls] for m, ls in _positions(app, course_id).items()}


def _order(client: Any, w: World, course_id: str) -> tuple[list[str], str]:
    r = client.get(f"/api/v1/courses/{course_id}/modules/order", headers=w.auth(w.instructor))
    return ok(r)["module_ids"], r.headers["ETag"]


# --- modules ----------------------------------------------------------------------------------

def test_modules_are_created_listed_moved_and_deleted_with_dense_positions(app, client,
                                                                             factories):
    w = world(factories)
    course_id = create_course(client, w)
    url = f"/api/v1/courses/{course_id}/modules"
    first = add_module(client, w, course_id, "First", summary="Where it starts")
    third = add_module(client, w, course_id, "Third")
    second = add_module(client, w, course_id, "Second", position=1)
    assert (first["position"], second["position"]) == (0, 1)
    r = client.get(url, headers=w.auth(w.instructor))
    assert [m["title"] for m in ok(r)["items"]] == ["First", "Second", "Third"]
    assert [m["position"] for m in r.json["items"]] == [0, 1, 2]
    assert r.headers["Cache-Control"] == "private, no-store"
    problem(client.post(url, json={"title": "Far", "position": 4},
                        headers=w.auth(w.instructor)), 422)
    problem(client.post(url, json={"title": ""}, headers=w.auth(w.instructor)), 422)

    # Pages follow the order.
    r = client.get(url, query_string={"limit": 2}, headers=w.auth(w.instructor))
    assert [m["title"] for m in ok(r)["items"]] == ["First", "Second"]
    assert 'rel="next"' in r.headers["Link"]
    r = client.get(url, query_string={"limit": 2, "cursor": r.json["next_cursor"]},
                   headers=w.auth(w.instructor))
    assert [m["title"] for m in ok(r)["items"]] == ["Third"] and r.json["next_cursor"] is None

    # A module's ETag: 304, and If-Match required to change it.
    item = f"/api/v1/modules/{third['id']}"
    r = client.get(item, headers=w.auth(w.instructor))
    etag = r.headers["ETag"]
    assert ok(r)["summary"] == "" and r.json["course_id"] == course_id
    assert client.get(item, headers={**w.auth(w.instructor),
                                     "If-None-Match": etag}).status_code == 304
    problem(client.patch(item, json={"title": "Last"}, headers=w.auth(w.instructor)), 428)
    r = client.patch(item, json={"title": "Last", "position": 0},
                     headers={**w.auth(w.instructor), "If-Match": etag})
    assert ok(r)["position"] == 0 and r.headers["ETag"] != etag
    problem(client.patch(item, json={"title": "Again"},
                         headers={**w.auth(w.instructor), "If-Match": etag}), 412)
    assert _titles(app, course_id) == {"Last": [], "First": [], "Second": []}
    problem(client.patch(item, json={"position": 3}, headers={
        **w.auth(w.instructor), "If-Match": r.headers["ETag"]}), 422)

    version = _structure_version(app, course_id)
    assert client.delete(f"/api/v1/modules/{first['id']}",
                         headers=w.auth(w.instructor)).status_code == 204
    assert _titles(app, course_id) == {"Last": [], "Second": []}
    assert _structure_version(app, course_id) == version + 1
    problem(client.get(f"/api/v1/modules/{first['id']}", headers=w.auth(w.instructor)), 404)
    # A stale If-Match on delete is refused.
    problem(client.delete(f"/api/v1/modules/{second['id']}",
                          headers={**w.auth(w.instructor), "If-Match": '"stale"'}), 412)


def test_modules_are_reordered_with_the_structure_etag(app, client, factories):
    w = world(factories)
    course_id = create_course(client, w)
    ids = [add_module(client, w, course_id, t)["id"] for t in ("A", "B", "C")]
    order_url = f"/api/v1/courses/{course_id}/modules/order"
    listed, etag = _order(client, w, course_id)
    assert listed == ids
    assert client.get(order_url, headers={**w.auth(w.instructor),
                                          "If-None-Match": etag}).status_code == 304
    wanted = [ids[2], ids[0], ids[1]]

    problem(client.put(order_url, json={"module_ids": wanted},
                       headers=w.auth(w.instructor)), 428)
    for wrong in ([ids[0], ids[1]], [*ids, ids[0]], [ids[0], ids[1], "nosuchmodule"]):
        body = problem(client.put(order_url, json={"module_ids": wrong},
                                  headers={**w.auth(w.instructor), "If-Match": etag}), 422)
        assert "module_ids" in body["errors"]
    r = client.put(order_url, json={"module_ids": wanted},
                   headers={**w.auth(w.instructor), "If-Match": etag})
    assert ok(r)["module_ids"] == wanted and r.headers["ETag"] != etag
    assert list(_titles(app, course_id)) == ["C", "A", "B"]
    # The order read before is stale now, whatever it asks for.
    problem(client.put(order_url, json={"module_ids": ids},
                       headers={**w.auth(w.instructor), "If-Match": etag}), 412)
    assert list(_titles(app, course_id)) == ["C", "A", "B"]
    # Adding a module also makes an order read before it stale.
    _, etag = _order(client, w, course_id)
    add_module(client, w, course_id, "D")
    problem(client.put(order_url, json={"module_ids": wanted},
                       headers={**w.auth(w.instructor), "If-Match": etag}), 412)


def test_stale_order_loses_a_race_at_the_database(app, client, factories):
    """Two editors pass the If-Match check with the same version; the later write is refused
    by the conditional UPDATE of the structure version, not only by the header check."""
    from kalpla_core.courses import structure

    w = world(factories)
    course_id = create_course(client, w)
    ids = [add_module(client, w, course_id, t)["id"] for t in ("A", "B")]
    kalpla = app.extensions["kalpla"]
    with kalpla.db.session() as first:
        course = first.get(Course, course_id)
        assert course is not None
        seen = course.structure_version
        structure.reorder_modules(first, course, list(reversed(ids)), seen)
    with kalpla.db.session() as second:
        course = second.get(Course, course_id)
        assert course is not None
        with pytest.raises(APIError) as exc:
            structure.reorder_modules(second, course, ids, seen)
        assert exc.value.status == 412
    assert list(_titles(app, course_id)) == ["B", "A"]


# --- lessons ----------------------------------------------------------------------------------

def test_lessons_are_inserted_moved_reordered_and_deleted_densely(app, client, factories):
    w = world(factories)
    course_id = create_course(client, w)
    m1 = add_module(client, w, course_id, "M1")["id"]
    m2 = add_module(client, w, course_id, "M2")["id"]
    a = add_lesson(client, w, m1, "a")
    c = add_lesson(client, w, m1, "c")
    b = add_lesson(client, w, m1, "b", position=1)
    d = add_lesson(client, w, m2, "d")
    # Positions as each was created; c moved down when b went before it.
    assert (a["position"], c["position"], b["position"], d["position"]) == (0, 1, 1, 0)
    assert _titles(app, course_id) == {"M1": ["a", "b", "c"], "M2": ["d"]}
    r = client.get(f"/api/v1/modules/{m1}/lessons", headers=w.auth(w.instructor))
    items = ok(r)["items"]
    assert [i["title"] for i in items] == ["a", "b", "c"]
    assert "body" not in items[0] and items[0]["kind"] == "text"
    problem(client.post(f"/api/v1/modules/{m1}/lessons",
                        json={"title": "x", "kind": "text", "position": 5},
                        headers=w.auth(w.instructor)), 422)

    def patch(lesson_id: str, body: dict[str, Any], status: int = 200) -> Any:
        etag = client.get(f"/api/v1/lessons/{lesson_id}",
                          headers=w.auth(w.instructor)).headers["ETag"]
        return client.patch(f"/api/v1/lessons/{lesson_id}", json=body,
                            headers={**w.auth(w.instructor), "If-Match": etag})

    version = _structure_version(app, course_id)
    # Within the module: a to the end.
    assert ok(patch(a["id"], {"position": 2}))["position"] == 2
    assert _titles(app, course_id) == {"M1": ["b", "c", "a"], "M2": ["d"]}
    # To another module of the course, at a position.
    r = patch(c["id"], {"module_id": m2, "position": 0})
    assert ok(r)["module_id"] == m2 and r.json["position"] == 0
    assert _titles(app, course_id) == {"M1": ["b", "a"], "M2": ["c", "d"]}
    # To another module, at its end by default.
    assert ok(patch(b["id"], {"module_id": m2}))["position"] == 2
    assert _titles(app, course_id) == {"M1": ["a"], "M2": ["c", "d", "b"]}
    assert _structure_version(app, course_id) == version + 3
    # Not to a module of another course, nor beyond the end.
    other_course = create_course(client, w, slug="other-course")
    foreign = add_module(client, w, other_course, "Foreign")["id"]
    assert "module_id" in problem(patch(a["id"], {"module_id": foreign}), 422)["errors"]
    assert "position" in problem(patch(a["id"], {"module_id": m2, "position": 4}),
                                 422)["errors"]
    assert _titles(app, course_id) == {"M1": ["a"], "M2": ["c", "d", "b"]}

    # Re-order a module's lessons with the structure ETag.
    order_url = f"/api/v1/modules/{m2}/lessons/order"
    r = client.get(order_url, headers=w.auth(w.instructor))
    assert ok(r)["lesson_ids"] == [c["id"], d["id"], b["id"]]
    etag = r.headers["ETag"]
    problem(client.put(order_url, json={"lesson_ids": [b["id"], c["id"]]},
                       headers={**w.auth(w.instructor), "If-Match": etag}), 422)
    problem(client.put(order_url, json={"lesson_ids": [a["id"], c["id"], d["id"]]},
                       headers={**w.auth(w.instructor), "If-Match": etag}), 422)
    problem(client.put(order_url, json={"lesson_ids": [b["id"], c["id"], d["id"]]},
                       headers=w.auth(w.instructor)), 428)
    ok(client.put(order_url, json={"lesson_ids": [b["id"], c["id"], d["id"]]},
                  headers={**w.auth(w.instructor), "If-Match": etag}))
    assert _titles(app, course_id) == {"M1": ["a"], "M2": ["b", "c", "d"]}
    problem(client.put(order_url, json={"lesson_ids": [d["id"], c["id"], b["id"]]},
                       headers={**w.auth(w.instructor), "If-Match": etag}), 412)

    # Delete from the middle, then a module with lessons.
    assert client.delete(f"/api/v1/lessons/{c['id']}",
                         headers=w.auth(w.instructor)).status_code == 204
    assert _titles(app, course_id) == {"M1": ["a"], "M2": ["b", "d"]}
    assert client.delete(f"/api/v1/modules/{m1}",
                         headers=w.auth(w.instructor)).status_code == 204
    assert _titles(app, course_id) == {"M2": ["b", "d"]}
    problem(client.get(f"/api/v1/lessons/{a['id']}", headers=w.auth(w.instructor)), 404)


def test_lesson_patch_needs_if_match_and_changes_fields(app, client, factories):
    w = world(factories)
    course_id = create_course(client, w)
    m = add_module(client, w, course_id)["id"]
    lesson = add_lesson(client, w, m, "Notes", duration_seconds=300)
    url = f"/api/v1/lessons/{lesson['id']}"
    r = client.get(url, headers=w.auth(w.instructor))
    etag = r.headers["ETag"]
    assert ok(r)["body"] == "# Notes" and r.headers["Cache-Control"] == "private, no-store"
    assert client.get(url, headers={**w.auth(w.instructor),
                                    "If-None-Match": etag}).status_code == 304
    problem(client.patch(url, json={"title": "New"}, headers=w.auth(w.instructor)), 428)
    problem(client.patch(url, json={"title": "New"},
                         headers={**w.auth(w.instructor), "If-Match": '"other"'}), 412)
    version = _structure_version(app, course_id)
    r = client.patch(url, json={"title": "New", "body": "*changed*", "is_preview": True},
                     headers={**w.auth(w.instructor), "If-Match": etag})
    assert ok(r)["title"] == "New" and r.json["body"] == "*changed*" and r.json["is_preview"]
    assert r.headers["ETag"] != etag
    # Content edits leave the structure alone; what completion means does not.
    assert _structure_version(app, course_id) == version
    r = client.patch(url, json={"is_required": False},
                     headers={**w.auth(w.instructor), "If-Match": r.headers["ETag"]})
    assert ok(r)["is_required"] is False
    assert _structure_version(app, course_id) == version + 1
    problem(client.patch(url, json={"body": "again"},
                         headers={**w.auth(w.instructor), "If-Match": etag}), 412)
    problem(client.patch(url, json={"version": 7},
                         headers={**w.auth(w.instructor), "If-Match": r.headers["ETag"]}), 422)


# --- kinds ------------------------------------------------------------------------------------

def test_core_lesson_kinds_are_checked(app, client, factories):
    w = world(factories)
    course_id = create_course(client, w)
    m = add_module(client, w, course_id)["id"]
    url = f"/api/v1/modules/{m}/lessons"
    video = stored_file(app, w.school)
    pdf = stored_file(app, w.school, content_type="application/pdf", filename="notes.pdf")
    pending = stored_file(app, w.school, status="pending")
    foreign = stored_file(app, w.other)
    elsewhere = stored_file(app, w.school, course_id=create_course(client, w, slug="else"))

    def post(status: int, **body: Any) -> dict[str, Any]:
        r = client.post(url, json={"title": "L", **body}, headers=w.auth(w.instructor))
        return ok(r, status) if status < 400 else problem(r, status)

    def errors(**body: Any) -> set[str]:
        return set(post(422, **body)["errors"])

    assert errors(kind="slides") == {"kind"}
    assert errors(kind="text", video_url="https://videos.example/1") == {"video_url"}
    assert errors(kind="text", file_id=pdf) == {"file_id"}
    assert errors(kind="text", data={"x": 1}) == {"data"}
    assert errors(kind="video", duration_seconds=60) == {"video_url"}
    assert errors(kind="video", video_url="https://videos.example/1") == {"duration_seconds"}
    assert errors(kind="video", video_url="http://videos.example/1",
                  duration_seconds=60) == {"video_url"}
    assert errors(kind="video", video_url="https://videos.example/1", file_id=video,
                  duration_seconds=60) == {"video_url"}
    for bad in (pdf, pending, foreign, elsewhere, "nosuchfile"):
        assert errors(kind="video", file_id=bad, duration_seconds=60) == {"file_id"}, bad
    assert errors(kind="file") == {"file_id"}
    assert errors(kind="file", file_id=pending) == {"file_id"}
    assert errors(kind="file", file_id=pdf, video_url="https://videos.example/1") == {
        "video_url"}
    assert errors(kind="text", duration_seconds=-1) == {"duration_seconds"}

    text = post(201, kind="text", body="Read **this**", duration_seconds=120)
    assert text["body"] == "Read **this**" and text["data"] == {}
    by_url = post(201, kind="video", video_url="https://videos.example/intro",
                  duration_seconds=600, is_preview=True)
    assert by_url["video_url"] == "https://videos.example/intro" and by_url["is_preview"]
    by_file = post(201, kind="video", file_id=video, duration_seconds=42, is_required=False)
    assert by_file["file_id"] == video and by_file["is_required"] is False
    assert post(201, kind="file", file_id=pdf)["file_id"] == pdf

    # Changing the kind checks the lesson as it will be.
    lesson_url = f"/api/v1/lessons/{text['id']}"
    etag = client.get(lesson_url, headers=w.auth(w.instructor)).headers["ETag"]
    headers = {**w.auth(w.instructor), "If-Match": etag}
    assert set(problem(client.patch(lesson_url, json={"kind": "video"}, headers=headers),
                       422)["errors"]) == {"video_url"}
    r = client.patch(lesson_url, json={"kind": "video", "file_id": video}, headers=headers)
    assert ok(r)["kind"] == "video" and r.json["duration_seconds"] == 120
    # The other way, the video fields have to go.
    headers["If-Match"] = r.headers["ETag"]
    assert "file_id" in problem(client.patch(lesson_url, json={"kind": "text"},
                                             headers=headers), 422)["errors"]
    r = client.patch(lesson_url, json={"kind": "text", "file_id": None}, headers=headers)
    assert ok(r)["kind"] == "text" and r.json["file_id"] is None


class QuizData(Schema):
    questions = fields.List(fields.String(validate=validate.Length(min=1)), required=True,
                            validate=validate.Length(min=1))
    pass_mark = fields.Integer(load_default=50, validate=validate.Range(0, 100))


def _quiz_plugin(events: list[Any] | None = None) -> types.SimpleNamespace:
    ns = types.SimpleNamespace()
    ns.KALPLA_PLUGIN = PluginMeta(name="quizzes", version="1.0", core_requires=">=0.1")
    ns.kalpla_lesson_kinds = hookimpl(lambda: [LessonKind("quiz", "Quiz", QuizData)])
    if events is not None:
        ns.kalpla_lesson_changed = hookimpl(lambda event: events.append(event))
    return ns


def test_a_plugin_kind_is_validated_by_its_schema_where_enabled(make_app):
    app = make_app(plugins=["quizzes"], plugin_objects={"quizzes": _quiz_plugin()})
    client = app.test_client()
    w = world(Factories(app), plugins=["quizzes"])
    course_id = create_course(client, w)
    m = add_module(client, w, course_id)["id"]
    url = f"/api/v1/modules/{m}/lessons"
    headers = w.auth(w.instructor)

    r = client.post(url, json={"title": "Q", "kind": "quiz", "data": {"pass_mark": 101}},
                    headers=headers)
    errors = problem(r, 422)["errors"]["data"]
    assert set(errors) == {"questions", "pass_mark"}
    problem(client.post(url, json={"title": "Q", "kind": "quiz",
                                   "data": {"questions": ["?"], "extra": 1}},
                        headers=headers), 422)
    r = client.post(url, json={"title": "Q", "kind": "quiz", "data": {"questions": ["2+2?"]}},
                    headers=headers)
    assert ok(r, 201)["data"] == {"questions": ["2+2?"], "pass_mark": 50}
    problem(client.post(url, json={"title": "Q", "kind": "quiz", "data": {"questions": ["?"]},
                                   "video_url": "https://videos.example/1"},
                        headers=headers), 422)

    # The same kind where the plugin is not enabled is refused.
    other = w.factories.institution("elsewhere")
    mentor = w.factories.user(roles={other: ["mentor"]})
    elsewhere = w.factories.auth(mentor, other)
    r = client.post("/api/v1/courses", json={"slug": "x", "title": "X"}, headers=elsewhere)
    m2 = ok(client.post(f"/api/v1/courses/{ok(r, 201)['id']}/modules", json={"title": "M"},
                        headers=elsewhere), 201)["id"]
    body = problem(client.post(f"/api/v1/modules/{m2}/lessons",
                               json={"title": "Q", "kind": "quiz",
                                     "data": {"questions": ["?"]}}, headers=elsewhere), 422)
    assert "not enabled" in body["errors"]["kind"][0]


# --- rights -----------------------------------------------------------------------------------

WRITERS = {"instructor", "admin", "platform_admin"}


@pytest.mark.parametrize("published", [False, True])
def test_only_course_staff_write_the_structure(app, client, factories, published):
    w = world(factories)
    course_id = create_course(client, w, publish=published)
    enroll(app, w.enrolled, course_id)
    m = add_module(client, w, course_id)["id"]
    lesson = add_lesson(client, w, m)["id"]
    module_etag = client.get(f"/api/v1/modules/{m}", headers=w.auth(w.instructor)
                             ).headers["ETag"]
    lesson_etag = client.get(f"/api/v1/lessons/{lesson}", headers=w.auth(w.instructor)
                             ).headers["ETag"]
    order_etag = _order(client, w, course_id)[1]

    def attempts() -> list[tuple[str, str, dict[str, Any], dict[str, str]]]:
        return [
            ("post", f"/api/v1/courses/{course_id}/modules", {"title": "New"}, {}),
            ("patch", f"/api/v1/modules/{m}", {"title": "Renamed"},
             {"If-Match": module_etag}),
            ("put", f"/api/v1/courses/{course_id}/modules/order", {"module_ids": [m]},
             {"If-Match": order_etag}),
            ("post", f"/api/v1/modules/{m}/lessons", {"title": "New", "kind": "text"}, {}),
            ("patch", f"/api/v1/lessons/{lesson}", {"title": "Renamed"},
             {"If-Match": lesson_etag}),
            ("put", f"/api/v1/modules/{m}/lessons/order", {"lesson_ids": [lesson]},
             {"If-Match": order_etag}),
            ("delete", f"/api/v1/lessons/{lesson}", {}, {}),
            ("delete", f"/api/v1/modules/{m}", {}, {}),
        ]

    for name, user in w.people().items():
        if name in WRITERS:
            continue
        for method, url, body, extra in attempts():
            r = getattr(client, method)(url, json=body or None,
                                        headers={**w.auth(user), **extra})
            # A draft does not exist for them (even for one enrolled in it by hand).
            expected = 404 if not published else 401 if user is None else 403
            problem(r, expected)
    assert _titles(app, course_id) == {"Module": ["Lesson"]}

    # Each of the staff may write (the admin and platform admin without instructing).
    for name in sorted(WRITERS):
        r = client.post(f"/api/v1/courses/{course_id}/modules", json={"title": name},
                        headers=w.auth(w.people()[name]))
        ok(r, 201)
    assert list(_titles(app, course_id)) == ["Module", "admin", "instructor",
                                              "platform_admin"]


@pytest.mark.parametrize("published", [False, True])
def test_structure_reads_follow_the_course_visibility(app, client, factories, published):
    w = world(factories)
    course_id = create_course(client, w, publish=published)
    m = add_module(client, w, course_id)["id"]
    lesson = add_lesson(client, w, m)["id"]
    reads = [f"/api/v1/courses/{course_id}/modules", f"/api/v1/modules/{m}",
             f"/api/v1/modules/{m}/lessons", f"/api/v1/courses/{course_id}/modules/order",
             f"/api/v1/modules/{m}/lessons/order"]
    for name, user in w.people().items():
        for url in reads:
            r = client.get(url, headers=w.auth(user))
            if published or name in WRITERS:
                assert r.status_code == 200, (name, url, r.get_data(as_text=True))
            else:
                problem(r, 404)
    # Unknown ids are 404 for everyone.
    for url in ("/api/v1/modules/nosuch", "/api/v1/lessons/nosuch",
                "/api/v1/courses/nosuch/modules", "/api/v1/modules/nosuch/lessons"):
        problem(client.get(url, headers=w.auth(w.admin)), 404)
    r = client.get(f"/api/v1/modules/{m}", headers=w.auth(None))
    if published:
        assert r.headers["Cache-Control"] == "public, max-age=60"
    # The lesson list never shows content, even to staff.
    items = ok(client.get(f"/api/v1/modules/{m}/lessons", headers=w.auth(w.admin)))["items"]
    assert items[0]["id"] == lesson and "body" not in items[0]


# --- events -----------------------------------------------------------------------------------

def test_lesson_changes_are_announced_after_commit(make_app):
    events: list[LessonChanged] = []
    seen_committed: list[bool] = []
    apps: list[Any] = []

    def record(event: LessonChanged) -> None:
        # Delivered after commit: another session already sees the change.
        with apps[0].extensions["kalpla"].db.session() as s:
            exists = s.get(Lesson, event.lesson_id) is not None
        seen_committed.append(exists == (event.change != "deleted"))
        events.append(event)

    plugin = _quiz_plugin()
    plugin.kalpla_lesson_changed = hookimpl(record)
    app = make_app(plugins=["quizzes"], plugin_objects={"quizzes": plugin})
    apps.append(app)
    client = app.test_client()
    w = world(Factories(app), plugins=["quizzes"])
    course_id = create_course(client, w)
    m1 = add_module(client, w, course_id, "M1")["id"]
    m2 = add_module(client, w, course_id, "M2")["id"]
    a = add_lesson(client, w, m1, "a")["id"]
    b = add_lesson(client, w, m1, "b")["id"]
    assert [(e.lesson_id, e.change) for e in events] == [(a, "created"), (b, "created")]
    assert all(e.course_id == course_id and e.institution_id == w.school.id for e in events)

    # A refused write announces nothing.
    events.clear()
    problem(client.post(f"/api/v1/modules/{m1}/lessons", json={"title": "x", "kind": "video"},
                        headers=w.auth(w.instructor)), 422)
    assert events == []

    etag = client.get(f"/api/v1/lessons/{a}", headers=w.auth(w.instructor)).headers["ETag"]
    ok(client.patch(f"/api/v1/lessons/{a}", json={"module_id": m2, "title": "A"},
                    headers={**w.auth(w.instructor), "If-Match": etag}))
    assert [(e.lesson_id, e.change) for e in events] == [(a, "moved"), (a, "updated")]
    c = add_lesson(client, w, m1, "c")["id"]
    events.clear()
    r = client.get(f"/api/v1/modules/{m1}/lessons/order", headers=w.auth(w.instructor))
    ok(client.put(f"/api/v1/modules/{m1}/lessons/order", json={"lesson_ids": [c, b]},
                  headers={**w.auth(w.instructor), "If-Match": r.headers["ETag"]}))
    assert sorted((e.lesson_id, e.change) for e in events) == sorted(
        [(b, "moved"), (c, "moved")])
    events.clear()
    assert client.delete(f"/api/v1/modules/{m1}", headers=w.auth(w.instructor)
                         ).status_code == 204
    assert [(e.lesson_id, e.change) for e in events] == [(c, "deleted"), (b, "deleted")]
    events.clear()
    assert client.delete(f"/api/v1/lessons/{a}", headers=w.auth(w.instructor)
                         ).status_code == 204
    assert [(e.lesson_id, e.change) for e in events] == [(a, "deleted")]
    assert seen_committed and all(seen_committed)


def test_lesson_changes_reach_only_plugins_enabled_for_the_institution(make_app):
    events: list[LessonChanged] = []
    app = make_app(plugins=["quizzes"], plugin_objects={"quizzes": _quiz_plugin(events)})
    client = app.test_client()
    w = world(Factories(app))  # quizzes not enabled for the school
    course_id = create_course(client, w)
    add_lesson(client, w, add_module(client, w, course_id)["id"])
    assert events == []
