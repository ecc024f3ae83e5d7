"""Bulk enrollment: a JSON list or a CSV, enrolled by a background job row by row, with a
result per row; re-running it changes nothing."""

from __future__ import annotations

import io
import types
from typing import Any

from sqlalchemy import func, select

from kalpla_core.contract import Decision, EnrollmentRequest, PluginMeta
from kalpla_core.hookspecs import hookimpl
from kalpla_core.identity.models import Membership, User
from kalpla_core.identity.permissions import roles_of
from kalpla_core.mail.models import OutboxMessage
from tests.enrollment.enrollment_support import (
    Scene,
    course,
    course_row,
    enroll_url,
    enrollments_of,
    ok,
    problem,
    scene,
)


def _bulk_url(course_id: str) -> str:
    return enroll_url(course_id) + "/bulk"


def _run(sc: Scene, course_id: str, user: Any = None, **request: Any) -> dict[str, Any]:
    """Submit a bulk enrollment as ``user`` (the instructor), wait for the job, answer it."""
    user = user or sc.w.instructor
    r = sc.client.post(_bulk_url(course_id), headers=sc.w.auth(user), **request)
    accepted = ok(r, 202)
    assert r.headers["Location"] == f"/api/v1/jobs/{accepted['job_id']}"
    assert sc.kalpla.jobs.wait(30)
    job = ok(sc.client.get(r.headers["Location"], headers=sc.w.auth(user)))
    assert job["status"] == "succeeded", job
    assert job["progress"] == 100
    return job["result"]


def _user(sc: Scene, email: str) -> User | None:
    with sc.kalpla.db.session() as s:
        return s.scalar(select(User).where(User.email == email))


def test_a_json_list_gives_a_result_per_row_and_rerunning_changes_nothing(make_app):
    sc = scene(make_app)
    w = sc.w
    cid = course(sc.client, w)
    loner = sc.factories.user(email="loner@example.test")  # an account, member nowhere
    rows = [
        {"email": w.student.email},
        {"email": "  LONER@example.test "},
        {"email": "new.person@example.test", "role": "mentor"},
        {"email": "not-an-email"},
        {"email": w.enrolled.email, "role": "wizard"},
        {"email": w.student.email.upper()},
        {"email": w.outsider.email},
        {"email": "x" * 310 + "@example.test"},
    ]
    result = _run(sc, cid, json=rows)
    assert result["course_id"] == cid and result["total"] == 8
    assert result["counts"] == {"enrolled": 3, "already-enrolled": 1, "invited": 1,
                                "invalid": 3}
    by_row = {r["row"]: r for r in result["rows"]}
    assert [by_row[n]["result"] for n in range(1, 9)] == [
        "enrolled", "enrolled", "invited", "invalid", "invalid", "already-enrolled",
        "enrolled", "invalid"]
    assert by_row[1]["status"] == "active" and by_row[1]["enrollment_id"]
    assert by_row[6]["enrollment_id"] == by_row[1]["enrollment_id"]
    assert by_row[4]["code"] == "invalid-email" and by_row[4]["reason"]
    assert by_row[5]["code"] == "invalid-role" and "wizard" in by_row[5]["reason"]
    assert by_row[4]["email"] == "not-an-email"

    enrolled = {e.user_id: e for e in enrollments_of(sc.app, cid)}
    newcomer = _user(sc, "new.person@example.test")
    assert newcomer is not None and newcomer.password_hash is None
    assert set(enrolled) == {w.student.id, loner.id, newcomer.id, w.outsider.id}
    assert {e.source for e in enrolled.values()} == {"bulk"}
    assert {e.enrolled_by for e in enrolled.values()} == {w.instructor.id}
    with sc.kalpla.db.session() as s:
        assert roles_of(s, newcomer.id, w.school.id) == {"mentor"}
        assert roles_of(s, loner.id, w.school.id) == {"student"}
        assert roles_of(s, w.outsider.id, w.school.id) == {"student"}
        assert s.scalar(select(func.count()).select_from(OutboxMessage).where(
            OutboxMessage.to == "new.person@example.test",
            OutboxMessage.template == "invitation")) == 1
    assert course_row(sc.app, cid).enrollment_count == 4

    again = _run(sc, cid, json=rows)
    assert again["counts"] == {"enrolled": 0, "already-enrolled": 5, "invited": 0,
                               "invalid": 3}
    assert len(enrollments_of(sc.app, cid)) == 4
    with sc.kalpla.db.session() as s:
        assert s.scalar(select(func.count()).select_from(OutboxMessage).where(
            OutboxMessage.template == "invitation")) == 1


def test_csv_as_the_body_or_an_uploaded_file(make_app):
    sc = scene(make_app)
    w = sc.w
    cid = course(sc.client, w, capacity=2)
    text = ("\ufeffRole,Email,Note\n"
            f"student,{w.student.email},first\n"
            "\n"
            f",{w.enrolled.email},no role given\n"
            "student,fresh@example.test,\n")
    result = _run(sc, cid, data=text.encode(), content_type="text/csv")
    assert [(r["result"], r.get("status")) for r in result["rows"]] == [
        ("enrolled", "active"), ("enrolled", "active"), ("invited", "waitlisted")]

    other = course(sc.client, w, slug="other")
    upload = {"file": (io.BytesIO(f"email\n{w.student.email}\n".encode()), "people.csv")}
    result = _run(sc, other, data=upload, content_type="multipart/form-data")
    assert result["counts"]["enrolled"] == 1


def test_each_row_passes_the_gate_and_a_refused_row_leaves_nothing(make_app):
    asked: list[EnrollmentRequest] = []

    def _gate(session: Any, request: EnrollmentRequest) -> Decision | None:
        # Asked inside the row's transaction, where the row's new account already exists.
        asked.append(request)
        user = session.get(User, request.user_id)
        if user is not None and user.email == "blocked@example.test":
            return Decision.deny("Blocked by policy.", "blocked")
        return None

    guard = types.SimpleNamespace(
        KALPLA_PLUGIN=PluginMeta(name="guard", version="1.0", core_requires=">=0.1"),
        kalpla_enrollment_requested=hookimpl(_gate))
    sc = scene(make_app, {"guard": guard})
    w = sc.w
    cid = course(sc.client, w)
    with sc.kalpla.db.session() as s:
        members = s.scalar(select(func.count()).select_from(Membership).where(
            Membership.institution_id == w.school.id))
    result = _run(sc, cid, user=w.admin, json=[{"email": w.student.email},
                                               {"email": "blocked@example.test"}])
    assert [r["result"] for r in result["rows"]] == ["enrolled", "invalid"]
    assert result["rows"][1]["code"] == "blocked"
    assert result["rows"][1]["reason"] == "Blocked by policy."
    assert {(r.source, r.requested_by) for r in asked} == {("bulk", w.admin.id)}
    # The refused row's invitation was rolled back with it: no account, no member, no mail.
    assert _user(sc, "blocked@example.test") is None
    with sc.kalpla.db.session() as s:
        assert s.scalar(select(func.count()).select_from(OutboxMessage).where(
            OutboxMessage.to == "blocked@example.test")) == 0
        assert s.scalar(select(func.count()).select_from(Membership).where(
            Membership.institution_id == w.school.id)) == members


def test_who_may_bulk_enroll_and_what_is_refused_up_front(make_app):
    sc = scene(make_app)
    w = sc.w
    cid = course(sc.client, w)
    draft = course(sc.client, w, publish=False, slug="draft")
    url = _bulk_url(cid)
    rows = [{"email": w.student.email}]
    problem(sc.client.post(url, json=rows, headers={"Kalpla-Institution": "school"}), 401)
    for who in (w.student, w.mentor, w.outsider):
        problem(sc.client.post(url, json=rows, headers=w.auth(who)), 403)
    problem(sc.client.post(_bulk_url(draft), json=rows, headers=w.auth(w.student)), 404)
    p = problem(sc.client.post(_bulk_url(draft), json=rows, headers=w.auth(w.instructor)), 409)
    assert p["type"] == "urn:kalpla:problem:course-not-published"

    staff = w.auth(w.instructor)
    assert "rows" in problem(sc.client.post(url, json=[], headers=staff), 422)["errors"]
    assert "rows" in problem(sc.client.post(url, json={"email": "a@b.c"}, headers=staff),
                             422)["errors"]
    assert "rows" in problem(sc.client.post(url, json=[{"name": "x"}], headers=staff),
                             422)["errors"]
    problem(sc.client.post(url, data=b"name\nx\n", content_type="text/csv", headers=staff),
            422)
    problem(sc.client.post(url, data=b"\xff\xfe", content_type="text/csv", headers=staff), 422)
    problem(sc.client.post(url, data={}, content_type="multipart/form-data", headers=staff),
            422)
    problem(sc.client.post(url, data=b"a@b.c", content_type="text/plain", headers=staff), 415)
    too_many = "email\n" + "".join(f"u{n}@example.test\n" for n in range(5001))
    problem(sc.client.post(url, data=too_many.encode(), content_type="text/csv",
                           headers=staff), 422)
    # Nothing was queued by any of these.
    mine = ok(sc.client.get("/api/v1/jobs", headers=staff))["items"]
    assert mine == []


def test_the_job_is_the_owners_and_reports_progress(make_app):
    sc = scene(make_app)
    w = sc.w
    cid = course(sc.client, w)
    rows = [{"email": f"p{n}@example.test"} for n in range(60)]
    r = sc.client.post(_bulk_url(cid), json=rows, headers=w.auth(w.instructor))
    job_id = ok(r, 202)["job_id"]
    assert sc.kalpla.jobs.wait(60)
    job = ok(sc.client.get(f"/api/v1/jobs/{job_id}", headers=w.auth(w.instructor)))
    assert job["progress"] == 100 and job["progress_message"] == "60 of 60 rows"
    assert job["result"]["counts"]["invited"] == 60
    problem(sc.client.get(f"/api/v1/jobs/{job_id}", headers=w.auth(w.mentor)), 404)
    # The institution's admins read its jobs.
    assert ok(sc.client.get(f"/api/v1/jobs/{job_id}", headers=w.auth(w.admin)))["id"] == job_id
    assert len(enrollments_of(sc.app, cid)) == 60


def test_the_same_idempotency_key_does_not_start_a_second_job(make_app):
    sc = scene(make_app)
    w = sc.w
    cid = course(sc.client, w)
    headers = {**w.auth(w.instructor), "Idempotency-Key": "bulk-2026-11-26"}
    rows = [{"email": w.student.email}]
    first = ok(sc.client.post(_bulk_url(cid), json=rows, headers=headers), 202)
    r = sc.client.post(_bulk_url(cid), json=rows, headers=headers)
    assert ok(r, 202) == first and r.headers["Idempotent-Replayed"] == "true"
    assert r.headers["Location"] == first["location"]
    assert sc.kalpla.jobs.wait(30)
    assert len(ok(sc.client.get("/api/v1/jobs", headers=w.auth(w.instructor)))["items"]) == 1
