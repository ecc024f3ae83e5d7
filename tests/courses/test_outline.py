"""The outline: the whole tree without content, in a number of queries that does not grow
with the course, visible like the course, with an ETag."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import insert

from kalpla_core.courses.models import Course, Lesson, Module
from kalpla_core.db import new_id, utcnow
from tests.courses.structure_support import (
    add_lesson,
    add_module,
    create_course,
    ok,
    problem,
    world,
)

pytestmark = pytest.mark.plugins()


def _fill(app: Any, course_id: str, modules: int, lessons: int) -> None:
    """``modules`` × ``lessons`` rows written in bulk (the API would take minutes)."""
    now = utcnow()
    module_rows, lesson_rows = [], []
    for m in range(modules):
        module_id = new_id()
        module_rows.append({"id": module_id, "course_id": course_id, "title": f"Module {m}",
                            "summary": "", "position": m, "version": 1, "created_at": now,
                            "updated_at": now})
        for n in range(lessons):
            lesson_rows.append({
                "id": new_id(), "module_id": module_id, "course_id": course_id,
                "title": f"Lesson {m}.{n}", "kind": "text", "position": n,
                "body": "x" * 2000, "duration_seconds": 60, "is_preview": n == 0,
                "is_required": True, "data": {}, "version": 1, "created_at": now,
                "updated_at": now})
    with app.extensions["kalpla"].db.session() as s:
        s.execute(insert(Module), module_rows)
        s.execute(insert(Lesson), lesson_rows)


def test_outline_shows_the_tree_without_content(app, client, factories):
    w = world(factories)
    course_id = create_course(client, w)
    m1 = add_module(client, w, course_id, "Basics", summary="Start")
    m2 = add_module(client, w, course_id, "Empty")
    m0 = add_module(client, w, course_id, "Welcome", position=0)
    intro = add_lesson(client, w, m1["id"], "Intro", duration_seconds=90, is_preview=True)
    video = add_lesson(client, w, m1["id"], "Watch", kind="video",
                       video_url="https://videos.example/1", duration_seconds=600,
                       is_required=False)
    hello = add_lesson(client, w, m0["id"], "Hello")
    url = f"/api/v1/courses/{course_id}/outline"

    r = client.get(url, headers=w.auth(w.instructor))
    tree = ok(r)
    assert r.headers["Cache-Control"] == "private, no-store"
    assert tree["course_id"] == course_id and tree["lesson_count"] == 3
    assert tree["duration_seconds"] == 690
    assert [m["id"] for m in tree["modules"]] == [m0["id"], m1["id"], m2["id"]]
    assert [m["position"] for m in tree["modules"]] == [0, 1, 2]
    welcome, basics, empty = tree["modules"]
    assert welcome["lessons"] == [{
        "id": hello["id"], "title": "Hello", "kind": "text", "position": 0,
        "duration_seconds": None, "is_preview": False, "is_required": True}]
    assert basics["summary"] == "Start" and basics["duration_seconds"] == 690
    assert [lesson["id"] for lesson in basics["lessons"]] == [intro["id"], video["id"]]
    assert basics["lessons"][0]["is_preview"] and not basics["lessons"][1]["is_required"]
    assert empty["lessons"] == [] and empty["duration_seconds"] == 0
    text = r.get_data(as_text=True)
    assert "# Intro" not in text and "videos.example" not in text

    # ETag: 304 while nothing changes; any change shown in the outline makes a new one.
    etag = r.headers["ETag"]
    assert client.get(url, headers={**w.auth(w.instructor),
                                    "If-None-Match": etag}).status_code == 304
    lesson_etag = client.get(f"/api/v1/lessons/{hello['id']}",
                             headers=w.auth(w.instructor)).headers["ETag"]
    ok(client.patch(f"/api/v1/lessons/{hello['id']}", json={"title": "Hi"},
                    headers={**w.auth(w.instructor), "If-Match": lesson_etag}))
    r = client.get(url, headers={**w.auth(w.instructor), "If-None-Match": etag})
    assert ok(r)["modules"][0]["lessons"][0]["title"] == "Hi" and r.headers["ETag"] != etag
    # Its structure ETag is the one re-orders take.
    order = client.get(f"/api/v1/courses/{course_id}/modules/order",
                       headers=w.auth(w.instructor))
    assert r.json["structure_etag"] == order.headers["ETag"]


@pytest.mark.parametrize("status", ["draft", "published", "archived"])
def test_outline_is_visible_like_the_course(app, client, factories, status):
    from tests.courses.structure_support import enroll

    w = world(factories)
    course_id = create_course(client, w, publish=status != "draft")
    add_lesson(client, w, add_module(client, w, course_id)["id"])
    enroll(app, w.enrolled, course_id)
    if status == "archived":
        ok(client.post(f"/api/v1/courses/{course_id}/archive", headers=w.auth(w.instructor)))
    url = f"/api/v1/courses/{course_id}/outline"
    for name, user in w.people().items():
        r = client.get(url, headers=w.auth(user))
        staff = name in ("instructor", "admin", "platform_admin")
        visible = (status == "published" or staff
                   or (status == "archived" and name == "enrolled"))
        if visible:
            assert ok(r)["lesson_count"] == 1, name
            public = status == "published"
            assert r.headers["Cache-Control"] == (
                "public, max-age=60" if public else "private, no-store")
        else:
            problem(r, 404)
    problem(client.get("/api/v1/courses/nosuch/outline"), 404)


def _count(client: Any, query_counter: Any, url: str, headers: dict[str, str]) -> int:
    with query_counter() as q:
        r = client.get(url, headers=headers)
    assert r.status_code == 200, r.get_data(as_text=True)
    return q.count


def test_outline_queries_do_not_grow_with_the_course(app, client, factories, query_counter):
    w = world(factories)
    big = create_course(client, w, publish=True, slug="big")
    small = create_course(client, w, publish=True, slug="small")
    draft_big = create_course(client, w, slug="draft-big")
    draft_small = create_course(client, w, slug="draft-small")
    for course_id, size in ((big, (50, 20)), (small, (1, 1)), (draft_big, (50, 20)),
                            (draft_small, (1, 1))):
        _fill(app, course_id, *size)

    r = client.get(f"/api/v1/courses/{big}/outline")
    assert ok(r)["lesson_count"] == 1000 and len(r.json["modules"]) == 50
    assert all(len(m["lessons"]) == 20 for m in r.json["modules"])
    assert [m["position"] for m in r.json["modules"]] == list(range(50))

    # Anonymous, published: the course, then the tree.
    anonymous = {"Kalpla-Institution": "school"}
    counts = {_count(client, query_counter, f"/api/v1/courses/{c}/outline", anonymous)
              for c in (big, small)}
    assert counts == {2}
    # Staff of a draft: authentication and rights add a fixed number, the same for both.
    staff = w.auth(w.instructor)
    counts = {_count(client, query_counter, f"/api/v1/courses/{c}/outline", staff)
              for c in (draft_big, draft_small)}
    assert len(counts) == 1 and counts.pop() <= 6


def test_outline_of_an_empty_course(app, client, factories):
    w = world(factories)
    course_id = create_course(client, w, publish=True)
    tree = ok(client.get(f"/api/v1/courses/{course_id}/outline"))
    assert tree["modules"] == [] and tree["lesson_count"] == 0
    with app.extensions["kalpla"].db.session() as s:
        course = s.get(Course, course_id)
        assert course is not None
        assert tree["structure_version"] == course.structure_version
