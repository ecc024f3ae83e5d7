"""Enrolling, the checks before it, rosters, my enrollments, dropping, re-enrolling, access
expiry and completion."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import update

from kalpla_core.cli import make_cli
from kalpla_core.db import utcnow
from kalpla_core.enrollment import service
from kalpla_core.enrollment.models import Enrollment
from kalpla_core.http.problems import APIError
from tests.enrollment.enrollment_support import (
    course,
    course_row,
    enroll_url,
    enrollments_of,
    ok,
    problem,
    scene,
    spy_plugin,
    transitions,
)


def _set(app: Any, enrollment_id: str, **values: Any) -> None:
    with app.extensions["kalpla"].db.session() as s:
        s.execute(update(Enrollment).where(Enrollment.id == enrollment_id).values(**values))


# --- the whole path -------------------------------------------------------------------------

def test_student_enrolls_reads_it_and_events_follow_the_commit(make_app):
    events: list[Any] = []
    sc = scene(make_app, {"spy": spy_plugin(events)})
    w = sc.w
    cid = course(sc.client, w, access_days=30)
    course_etag = sc.client.get(f"/api/v1/courses/{cid}").headers["ETag"]

    r = sc.enroll(w.student, cid)
    body = ok(r, 201)
    assert r.headers["Location"].endswith(f"/api/v1/enrollments/{body['id']}")
    assert body["status"] == "active" and body["source"] == "self"
    assert body["user_id"] == w.student.id and body["course_id"] == cid
    assert body["enrolled_by"] is None and body["waitlist_position"] is None
    assert body["institution_id"] == w.school.id
    # Access runs for the course's access_days from activation.
    activated = datetime.fromisoformat(body["activated_at"])
    assert datetime.fromisoformat(body["expires_at"]) - activated == timedelta(days=30)
    assert transitions(events) == [("created", "active")]
    assert events[0].institution_id == w.school.id and events[0].user_id == w.student.id
    assert course_row(sc.app, cid).enrollment_count == 1
    # Counting a seat is not an edit: the course's editors keep their ETag.
    assert sc.client.get(f"/api/v1/courses/{cid}").headers["ETag"] == course_etag

    item = f"/api/v1/enrollments/{body['id']}"
    r = sc.client.get(item, headers=w.auth(w.student))
    assert ok(r)["id"] == body["id"]
    etag = r.headers["ETag"]
    assert sc.client.get(item, headers={**w.auth(w.student), "If-None-Match": etag}
                         ).status_code == 304
    mine = ok(sc.client.get("/api/v1/me/enrollments", headers=w.auth(w.student)))
    assert [e["id"] for e in mine["items"]] == [body["id"]]

    # A second try is refused, naming the enrollment.
    p = problem(sc.enroll(w.student, cid), 409)
    assert p["type"] == "urn:kalpla:problem:already-enrolled"
    assert p["enrollment_id"] == body["id"] and p["enrollment_status"] == "active"
    assert len(enrollments_of(sc.app, cid)) == 1


def test_who_may_enroll_themselves(make_app):
    sc = scene(make_app)
    w = sc.w
    cid = course(sc.client, w)
    draft = course(sc.client, w, publish=False, slug="draft")
    assert problem(sc.client.post(enroll_url(cid)), 401)
    # A student of another institution sees the published course but is not a member.
    p = problem(sc.enroll(w.outsider, cid), 403)
    assert p["type"] == "urn:kalpla:problem:not-a-member"
    # A draft is unknown to students; its staff are told it is not published.
    problem(sc.enroll(w.student, draft), 404)
    p = problem(sc.enroll(w.instructor, draft), 409)
    assert p["type"] == "urn:kalpla:problem:course-not-published"
    problem(sc.enroll(w.student, "nope"), 404)
    # A mentor, an admin or a platform admin may take a course too.
    assert ok(sc.enroll(w.mentor, cid), 201)["status"] == "active"
    assert ok(sc.enroll(w.platform_admin, cid), 201)["status"] == "active"
    assert ok(sc.enroll(w.student, cid), 201)["source"] == "self"
    assert course_row(sc.app, cid).enrollment_count == 3
    assert enrollments_of(sc.app, draft) == []


def test_archived_course_takes_no_enrollment(make_app):
    sc = scene(make_app)
    w = sc.w
    cid = course(sc.client, w)
    ok(sc.enroll(w.enrolled, cid), 201)
    ok(sc.client.post(f"/api/v1/courses/{cid}/archive", headers=w.auth(w.instructor)))
    problem(sc.enroll(w.student, cid), 404)  # archived courses are for their students only
    p = problem(sc.enroll(w.admin, cid, user_id=w.student.id), 409)
    assert p["type"] == "urn:kalpla:problem:course-archived"


def test_enrollment_window(make_app):
    sc = scene(make_app)
    w = sc.w
    now = utcnow()
    later = course(sc.client, w, slug="later",
                   enrollment_opens_at=(now + timedelta(days=2)).isoformat())
    closed = course(sc.client, w, slug="closed",
                    enrollment_opens_at=(now - timedelta(days=9)).isoformat(),
                    enrollment_closes_at=(now - timedelta(days=1)).isoformat())
    open_now = course(sc.client, w, slug="open",
                      enrollment_opens_at=(now - timedelta(days=1)).isoformat(),
                      enrollment_closes_at=(now + timedelta(days=1)).isoformat())
    p = problem(sc.enroll(w.student, later), 409)
    assert p["type"] == "urn:kalpla:problem:enrollment-not-open" and p["opens_at"]
    p = problem(sc.enroll(w.student, closed), 409)
    assert p["type"] == "urn:kalpla:problem:enrollment-closed" and p["closed_at"]
    ok(sc.enroll(w.student, open_now), 201)
    # Staff who enroll someone decide for themselves.
    body = ok(sc.enroll(w.instructor, closed, user_id=w.student.id), 201)
    assert body["status"] == "active" and body["source"] == "staff"
    assert body["enrolled_by"] == w.instructor.id


def test_prerequisites_must_be_completed(make_app):
    sc = scene(make_app)
    w = sc.w
    basics = course(sc.client, w, slug="basics")
    algebra = course(sc.client, w, slug="algebra")
    advanced = course(sc.client, w, slug="advanced", prerequisites=[basics, algebra])

    p = problem(sc.enroll(w.student, advanced), 403)
    assert p["type"] == "urn:kalpla:problem:prerequisites-missing"
    assert p["missing"] == [{"id": algebra, "title": "Algebra"},
                            {"id": basics, "title": "Basics"}]
    first = ok(sc.enroll(w.student, basics), 201)
    ok(sc.enroll(w.student, algebra), 201)
    with sc.kalpla.db.session() as s:
        assert service.complete_enrollment(s, sc.kalpla, first["id"]) is True
    p = problem(sc.enroll(w.student, advanced), 403)
    assert p["missing"] == [{"id": algebra, "title": "Algebra"}]  # active is not completed
    (second,) = enrollments_of(sc.app, algebra)
    with sc.kalpla.db.session() as s:
        service.complete_enrollment(s, sc.kalpla, second.id)
    assert ok(sc.enroll(w.student, advanced), 201)["status"] == "active"


# --- staff enrolling others -----------------------------------------------------------------

def test_staff_enroll_members(make_app):
    events: list[Any] = []
    sc = scene(make_app, {"spy": spy_plugin(events)})
    w = sc.w
    cid = course(sc.client, w)
    # Only the course's staff enroll others.
    for who in (w.student, w.mentor, w.outsider):
        problem(sc.enroll(who, cid, user_id=w.enrolled.id), 403)
    problem(sc.client.post(enroll_url(cid), json={"user_id": w.enrolled.id},
                           headers={"Kalpla-Institution": "school"}), 401)
    body = ok(sc.enroll(w.instructor, cid, user_id=w.enrolled.id), 201)
    assert body["user_id"] == w.enrolled.id and body["enrolled_by"] == w.instructor.id
    assert body["source"] == "staff"
    ok(sc.enroll(w.admin, cid, user_id=w.student.id), 201)
    # Only members of the course's institution, and only users that exist.
    p = problem(sc.enroll(w.admin, cid, user_id=w.outsider.id), 422)
    assert "user_id" in p["errors"]
    assert "user_id" in problem(sc.enroll(w.admin, cid, user_id="0" * 32), 422)["errors"]
    p = problem(sc.enroll(w.admin, cid, user_id=w.student.id), 409)
    assert p["type"] == "urn:kalpla:problem:already-enrolled"
    assert [e.user_id for e in events] == [w.enrolled.id, w.student.id]


# --- rosters and my enrollments -------------------------------------------------------------

def test_roster_for_staff_only_paginated_and_filtered(make_app):
    sc = scene(make_app)
    w = sc.w
    cid = course(sc.client, w, capacity=3)
    students = [sc.factories.user(roles={w.school: ["student"]}) for _ in range(5)]
    ids = [ok(sc.enroll(s, cid), 201)["id"] for s in students]
    url = enroll_url(cid)

    problem(sc.client.get(url, headers={"Kalpla-Institution": "school"}), 401)
    for who in (w.student, w.mentor, w.outsider, students[0]):
        problem(sc.client.get(url, headers=w.auth(who)), 403)
    draft = course(sc.client, w, publish=False, slug="draft")
    problem(sc.client.get(enroll_url(draft), headers=w.auth(w.student)), 404)

    seen: list[dict[str, Any]] = []
    r = sc.client.get(f"{url}?limit=2", headers=w.auth(w.instructor))
    page = ok(r)
    while True:
        seen += page["items"]
        if not page["next_cursor"]:
            assert "Link" not in r.headers
            break
        assert 'rel="next"' in r.headers["Link"]
        r = sc.client.get(f"{url}?limit=2&cursor={page['next_cursor']}",
                          headers=w.auth(w.instructor))
        page = ok(r)
    assert sorted(e["id"] for e in seen) == sorted(ids)
    assert [e["status"] for e in seen] == ["active"] * 3 + ["waitlisted"] * 2
    assert {e["user"]["email"] for e in seen} == {s.email for s in students}

    waiting = ok(sc.client.get(f"{url}?status=waitlisted", headers=w.auth(w.admin)))["items"]
    assert [e["id"] for e in waiting] == ids[3:]
    assert [e["waitlist_position"] for e in waiting] == [1, 2]
    assert len(ok(sc.client.get(f"{url}?status=active", headers=w.auth(w.admin)))["items"]) == 3
    problem(sc.client.get(f"{url}?status=lost", headers=w.auth(w.admin)), 422)


def test_roster_reads_in_bounded_queries(make_app, query_counter):
    sc = scene(make_app)
    w = sc.w
    cid = course(sc.client, w)

    def count() -> int:
        headers = w.auth(w.instructor)
        with query_counter() as q:
            ok(sc.client.get(enroll_url(cid), headers=headers))
        return q.count

    ok(sc.enroll(w.student, cid), 201)
    few = count()
    for _ in range(6):
        ok(sc.enroll(sc.factories.user(roles={w.school: ["student"]}), cid), 201)
    assert count() == few


def test_my_enrollments_read_in_bounded_queries(make_app, query_counter):
    sc = scene(make_app)
    w = sc.w
    courses = [course(sc.client, w, slug=f"c{n}", capacity=1) for n in range(6)]
    ok(sc.enroll(w.enrolled, courses[0]), 201)

    def count() -> int:
        headers = w.auth(w.student)
        with query_counter() as q:
            ok(sc.client.get("/api/v1/me/enrollments", headers=headers))
        return q.count

    ok(sc.enroll(w.student, courses[0]), 201)  # waitlisted: its place is read too
    few = count()
    for cid in courses[1:]:
        ok(sc.enroll(w.student, cid), 201)
    assert count() == few


def test_my_enrollments_across_institutions(make_app):
    sc = scene(make_app)
    w = sc.w
    first = course(sc.client, w, slug="first")
    second = course(sc.client, w, slug="second")
    other_mentor = sc.factories.user(roles={w.other: ["mentor"]})
    r = sc.client.post("/api/v1/courses", json={"slug": "abroad", "title": "Abroad"},
                       headers=sc.factories.auth(other_mentor, w.other))
    abroad = ok(r, 201)["id"]
    ok(sc.client.post(f"/api/v1/courses/{abroad}/publish",
                      headers=sc.factories.auth(other_mentor, w.other)))
    both = sc.factories.user(roles={w.school: ["student"], w.other: ["student"]})
    a = ok(sc.enroll(both, first), 201)["id"]
    b = ok(sc.enroll(both, second), 201)["id"]
    c = ok(sc.enroll(both, abroad), 201)["id"]
    ok(sc.client.delete(f"/api/v1/enrollments/{b}", headers=w.auth(both)))

    url = "/api/v1/me/enrollments"
    problem(sc.client.get(url), 401)
    items = ok(sc.client.get(url, headers=w.auth(both)))["items"]
    assert [e["id"] for e in items] == [c, b, a]  # newest first
    page = ok(sc.client.get(f"{url}?limit=2", headers=w.auth(both)))
    assert len(page["items"]) == 2 and page["next_cursor"]
    rest = ok(sc.client.get(f"{url}?limit=2&cursor={page['next_cursor']}",
                            headers=w.auth(both)))
    assert [e["id"] for e in rest["items"]] == [a] and rest["next_cursor"] is None
    dropped = ok(sc.client.get(f"{url}?status=dropped", headers=w.auth(both)))["items"]
    assert [e["id"] for e in dropped] == [b]
    assert ok(sc.client.get(url, headers=w.auth(w.student)))["items"] == []


# --- reading, dropping and enrolling again -------------------------------------------------

def test_who_reads_and_drops_an_enrollment(make_app):
    events: list[Any] = []
    sc = scene(make_app, {"spy": spy_plugin(events)})
    w = sc.w
    cid = course(sc.client, w)
    eid = ok(sc.enroll(w.enrolled, cid), 201)["id"]
    item = f"/api/v1/enrollments/{eid}"

    problem(sc.client.get(item), 401)
    for who in (w.student, w.outsider, w.mentor):
        problem(sc.client.get(item, headers=w.auth(who)), 404)
        problem(sc.client.delete(item, headers=w.auth(who)), 404)
    for who in (w.enrolled, w.instructor, w.admin, w.platform_admin):
        assert ok(sc.client.get(item, headers=w.auth(who)))["id"] == eid
    problem(sc.client.get("/api/v1/enrollments/nope", headers=w.auth(w.admin)), 404)

    body = ok(sc.client.delete(item, headers=w.auth(w.enrolled)))
    assert body["status"] == "dropped" and body["dropped_at"]
    assert course_row(sc.app, cid).enrollment_count == 0
    # Dropping again changes nothing.
    assert ok(sc.client.delete(item, headers=w.auth(w.instructor)))["status"] == "dropped"
    assert transitions(events) == [("created", "active"), ("active", "dropped")]
    assert events[-1].reason == "Dropped by the student."


def test_reenrolling_after_a_drop_reuses_the_enrollment(make_app):
    events: list[Any] = []
    sc = scene(make_app, {"spy": spy_plugin(events)})
    w = sc.w
    cid = course(sc.client, w)
    eid = ok(sc.enroll(w.student, cid), 201)["id"]
    ok(sc.client.delete(f"/api/v1/enrollments/{eid}", headers=w.auth(w.admin)))
    assert events[-1].reason == "Dropped by the course's staff."
    again = ok(sc.enroll(w.student, cid), 201)
    assert again["id"] == eid and again["status"] == "active" and again["dropped_at"] is None
    assert transitions(events) == [("created", "active"), ("active", "dropped"),
                                   ("dropped", "active")]
    assert len(enrollments_of(sc.app, cid)) == 1
    assert course_row(sc.app, cid).enrollment_count == 1


def test_completed_enrollment_is_kept(make_app):
    events: list[Any] = []
    sc = scene(make_app, {"spy": spy_plugin(events)})
    w = sc.w
    cid = course(sc.client, w)
    eid = ok(sc.enroll(w.student, cid), 201)["id"]
    with sc.kalpla.db.session() as s:
        assert service.complete_enrollment(s, sc.kalpla, eid) is True
    with sc.kalpla.db.session() as s:
        assert service.complete_enrollment(s, sc.kalpla, eid) is False  # once only
    assert transitions(events) == [("created", "active"), ("active", "completed")]
    item = f"/api/v1/enrollments/{eid}"
    body = ok(sc.client.get(item, headers=w.auth(w.student)))
    assert body["status"] == "completed" and body["completed_at"]
    p = problem(sc.client.delete(item, headers=w.auth(w.student)), 409)
    assert p["type"] == "urn:kalpla:problem:invalid-state"
    problem(sc.enroll(w.student, cid), 409)
    assert course_row(sc.app, cid).enrollment_count == 1

    other = ok(sc.enroll(w.enrolled, cid), 201)["id"]
    ok(sc.client.delete(f"/api/v1/enrollments/{other}", headers=w.auth(w.enrolled)))
    with pytest.raises(APIError) as exc, sc.kalpla.db.session() as s:
        service.complete_enrollment(s, sc.kalpla, other)
    assert exc.value.code == "invalid-state"


# --- access expiry --------------------------------------------------------------------------

def test_expired_access_is_applied_when_read(make_app):
    events: list[Any] = []
    sc = scene(make_app, {"spy": spy_plugin(events)})
    w = sc.w
    cid = course(sc.client, w, access_days=10)
    eid = ok(sc.enroll(w.student, cid), 201)["id"]
    _set(sc.app, eid, expires_at=utcnow() - timedelta(minutes=1))

    body = ok(sc.client.get(f"/api/v1/enrollments/{eid}", headers=w.auth(w.student)))
    assert body["status"] == "expired"
    assert course_row(sc.app, cid).enrollment_count == 0
    assert transitions(events)[-1] == ("active", "expired")
    # Enrolling again is allowed, on the same row, with a new access period.
    again = ok(sc.enroll(w.student, cid), 201)
    assert again["id"] == eid and again["status"] == "active"
    assert again["expires_at"] > body["expires_at"]


def test_expired_access_is_applied_on_lists_and_reenrollment(make_app):
    sc = scene(make_app)
    w = sc.w
    cid = course(sc.client, w, access_days=10)
    a = ok(sc.enroll(w.student, cid), 201)["id"]
    b = ok(sc.enroll(w.enrolled, cid), 201)["id"]
    past = utcnow() - timedelta(seconds=1)
    _set(sc.app, a, expires_at=past)
    _set(sc.app, b, expires_at=past)
    mine = ok(sc.client.get("/api/v1/me/enrollments?status=active", headers=w.auth(w.student)))
    assert mine["items"] == []
    roster = ok(sc.client.get(enroll_url(cid), headers=w.auth(w.instructor)))["items"]
    assert {e["status"] for e in roster} == {"expired"}
    assert course_row(sc.app, cid).enrollment_count == 0


def test_expiry_without_a_reader_directly_and_through_the_cli(make_app):
    sc = scene(make_app)
    w = sc.w
    cid = course(sc.client, w, access_days=5)
    forever = course(sc.client, w, slug="forever")
    a = ok(sc.enroll(w.student, cid), 201)["id"]
    b = ok(sc.enroll(w.enrolled, cid), 201)["id"]
    ok(sc.enroll(w.student, forever), 201)
    with sc.kalpla.db.session() as s:
        assert service.expire_enrollments(s, sc.kalpla, utcnow()) == 0
        assert service.expire_enrollments(s, sc.kalpla, utcnow() + timedelta(days=6)) == 2
    assert {e.status for e in enrollments_of(sc.app, cid)} == {"expired"}
    assert {e.status for e in enrollments_of(sc.app, forever)} == {"active"}
    assert course_row(sc.app, cid).enrollment_count == 0
    assert course_row(sc.app, forever).enrollment_count == 1

    ok(sc.enroll(w.student, cid), 201)
    _set(sc.app, a, expires_at=utcnow() - timedelta(seconds=1))
    result = CliRunner().invoke(make_cli(lambda: sc.app), ["enrollments", "expire"])
    assert result.exit_code == 0, result.output
    assert "1 enrollment(s) expired, 0 seat offer(s) passed on." in result.output
    statuses = {e.id: e.status for e in enrollments_of(sc.app, cid)}
    assert statuses == {a: "expired", b: "expired"}
