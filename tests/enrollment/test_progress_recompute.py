"""Progress summaries follow the course's lessons: recomputed deterministically after lessons
are added, removed or made optional (through the lesson-changed event, in a job for big
courses, and lazily on read), undoing no completion and completing the course once."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from kalpla_core.courses.models import Course, Lesson
from kalpla_core.db import utcnow
from kalpla_core.enrollment import progress
from kalpla_core.enrollment.models import Enrollment, LessonProgress
from kalpla_core.jobs.models import Job
from tests.courses.structure_support import add_lesson, add_module, ok
from tests.enrollment.test_progress import Setup, enroll, report, setup


def _row(s: Setup, user: Any = None) -> Enrollment:
    return s.enrollment(user)


def _summary(e: Enrollment) -> tuple[int, int, int, str]:
    return e.lessons_completed, e.lessons_required, e.progress_percent, e.status


def _finish_all(s: Setup, user: Any = None) -> None:
    user = s.w.enrolled if user is None else user
    ok(s.post("text", user=user, event="viewed"))
    ok(s.post("video", user=user, event="video", position_seconds=600, percent=100))
    ok(s.post("file", user=user, event="viewed"))
    report(s, user=user)


def _headers(s: Setup) -> dict[str, str]:
    return s.w.auth(s.w.instructor)


def test_adding_a_required_lesson_lowers_the_percent_and_undoes_nothing(make_app):
    s = setup(make_app)
    starter = s.w.factories.user(roles={s.w.school: ["student"]})
    enroll(s.app, starter, s.course_id)
    ok(s.post("text", user=starter, event="viewed"))
    _finish_all(s)
    done = _row(s)
    assert _summary(done) == (4, 4, 100, "completed")
    with s.app.extensions["kalpla"].db.session() as session:
        before = set(session.execute(select(LessonProgress.lesson_id,
                                            LessonProgress.completed_at)).all())

    module = add_module(s.client, s.w, s.course_id, "More")["id"]
    extra = add_lesson(s.client, s.w, module, "New chapter")["id"]
    # The lesson-changed event recomputed every enrollment; no read was needed.
    after = _row(s)
    assert _summary(after) == (4, 5, 80, "completed")
    assert after.completed_at == done.completed_at
    with s.app.extensions["kalpla"].db.session() as session:
        assert after.structure_version == session.scalar(
            select(Course.structure_version).where(Course.id == s.course_id))
    assert _summary(_row(s, starter)) == (1, 5, 20, "active")
    with s.app.extensions["kalpla"].db.session() as session:
        assert before <= set(session.execute(select(LessonProgress.lesson_id,
                                                    LessonProgress.completed_at)).all())

    # Doing the new lesson brings it back to 100 %; the course is not completed twice.
    body = ok(s.post(extra, event="viewed"))
    assert body["summary"]["percent"] == 100 and not body["course_completed"]
    assert len(s.heard.names("kalpla_course_completed")) == 1


def test_removing_lessons_can_complete_the_course(make_app):
    s = setup(make_app)
    other = s.w.factories.user(roles={s.w.school: ["student"]})
    enroll(s.app, other, s.course_id)
    # One did all but the quiz, the other all but the file.
    ok(s.post("text", event="viewed"))
    ok(s.post("video", event="video", position_seconds=600, percent=100))
    ok(s.post("file", event="viewed"))
    ok(s.post("text", user=other, event="viewed"))
    ok(s.post("video", user=other, event="video", position_seconds=600, percent=100))
    report(s, user=other)
    assert _summary(_row(s)) == _summary(_row(s, other)) == (3, 4, 75, "active")

    r = s.client.delete(f"/api/v1/lessons/{s.lessons['quiz']}", headers=_headers(s))
    assert r.status_code == 204, r.get_data(as_text=True)
    assert _summary(_row(s)) == (3, 3, 100, "completed")
    assert _summary(_row(s, other)) == (2, 3, 66, "active")
    (first,) = s.heard.names("kalpla_course_completed")
    assert first.user_id == s.w.enrolled.id

    # Making the file optional completes the other student too.
    etag = s.client.get(f"/api/v1/lessons/{s.lessons['file']}",
                        headers=_headers(s)).headers["ETag"]
    ok(s.client.patch(f"/api/v1/lessons/{s.lessons['file']}", json={"is_required": False},
                      headers={**_headers(s), "If-Match": etag}))
    assert _summary(_row(s, other)) == (2, 2, 100, "completed")
    assert [e.user_id for e in s.heard.names("kalpla_course_completed")] == [
        s.w.enrolled.id, other.id]
    assert [(e.user_id, e.new_status) for e in
            s.heard.names("kalpla_enrollment_status_changed")] == [
        (s.w.enrolled.id, "completed"), (other.id, "completed")]


def test_removing_every_required_lesson_completes_nobody(make_app):
    s = setup(make_app)
    ok(s.post("optional", event="viewed"))
    for kind in ("text", "video", "file", "quiz"):
        r = s.client.delete(f"/api/v1/lessons/{s.lessons[kind]}", headers=_headers(s))
        assert r.status_code == 204
    assert _summary(_row(s)) == (0, 0, 0, "active")
    assert s.heard.names("kalpla_course_completed") == []


def _change_behind_the_events(s: Setup) -> str:
    """Add a required lesson and bump the structure without announcing it."""
    with s.app.extensions["kalpla"].db.session() as session:
        module_id = session.scalar(select(Lesson.module_id).where(
            Lesson.id == s.lessons["text"]))
        lesson = Lesson(module_id=module_id, course_id=s.course_id, title="Quiet",
                        kind="text", position=99)
        session.add(lesson)
        session.execute(update(Course).where(Course.id == s.course_id).values(
            structure_version=Course.structure_version + 1))
        session.flush()
        return lesson.id


def test_a_read_recomputes_a_stale_summary(make_app):
    s = setup(make_app)
    ok(s.post("text", event="viewed"))
    quiet = _change_behind_the_events(s)
    assert _summary(_row(s)) == (1, 4, 25, "active")  # stale until read
    body = ok(s.mine())
    assert (body["summary"]["lessons_required"], body["summary"]["percent"]) == (5, 20)
    assert quiet in [line["lesson_id"] for line in body["lessons"]]
    assert _summary(_row(s)) == (1, 5, 20, "active")
    # Staff reading the enrollment see the same.
    url = f"/api/v1/enrollments/{_row(s).id}/progress"
    assert ok(s.client.get(url, headers=_headers(s)))["summary"]["percent"] == 20


def test_an_event_recomputes_against_the_current_lessons(make_app):
    s = setup(make_app)
    _change_behind_the_events(s)
    body = ok(s.post("text", event="viewed"))
    assert (body["summary"]["lessons_completed"], body["summary"]["lessons_required"]) == (1, 5)


def _expected(session: Any, enrollment_id: str, course_id: str) -> tuple[int, int, int]:
    """The summary computed from scratch in Python: the pure function it must equal."""
    required = set(session.scalars(select(Lesson.id).where(Lesson.course_id == course_id,
                                                           Lesson.is_required.is_(True))))
    done = set(session.scalars(select(LessonProgress.lesson_id).where(
        LessonProgress.enrollment_id == enrollment_id,
        LessonProgress.completed_at.is_not(None))))
    count = len(required & done)
    return count, len(required), count * 100 // len(required) if required else 0


def test_recompute_course_in_bulk_is_deterministic_and_idempotent(make_app):
    s = setup(make_app, enroll_student=False)
    kalpla = s.app.extensions["kalpla"]
    kinds = ("text", "video", "file", "quiz", "optional")
    students = [s.w.factories.user(roles={s.w.school: ["student"]}) for _ in range(23)]
    with kalpla.db.session() as session:
        start = utcnow() - timedelta(days=1)
        for n, student in enumerate(students):
            e = Enrollment(institution_id=s.w.school.id, course_id=s.course_id,
                           user_id=student.id, status="active", activated_at=start)
            session.add(e)
            session.flush()
            # Student n completed the lessons whose bit is set in n (and opened the rest).
            for bit, kind in enumerate(kinds):
                finished = n >> bit & 1
                session.add(LessonProgress(
                    enrollment_id=e.id, lesson_id=s.lessons[kind], first_viewed_at=start,
                    last_event_at=start + timedelta(minutes=bit),
                    completed_at=start if finished else None,
                    completed_by="viewed" if finished else None))
    _change_behind_the_events(s)

    with kalpla.db.session() as session:
        counts = []
        while True:
            with s.app.app_context():
                counts.append(progress.recompute_course(session, kalpla, s.course_id, limit=7))
            session.commit()
            if counts[-1] < 7:
                break
    assert counts == [7, 7, 7, 2]
    with kalpla.db.session() as session:
        assert progress.recompute_course(session, kalpla, s.course_id) == 0
        rows = session.scalars(select(Enrollment).where(Enrollment.course_id == s.course_id))
        first = {e.id: (*_summary(e)[:3], e.last_lesson_id) for e in rows}
        for enrollment_id, values in first.items():
            assert values[:3] == _expected(session, enrollment_id, s.course_id)
            # The lesson with the latest event: the optional one, opened last by everyone.
            assert values[3] == s.lessons["optional"]
        # From a blank slate, the same summaries again.
        session.execute(update(Enrollment).values(
            lessons_completed=0, lessons_required=0, progress_percent=0, structure_version=0,
            last_lesson_id=None))
        with s.app.app_context():
            assert progress.recompute_course(session, kalpla, s.course_id) == len(students)
        rows = session.scalars(select(Enrollment).where(Enrollment.course_id == s.course_id)
                               .execution_options(populate_existing=True))
        assert {e.id: (*_summary(e)[:3], e.last_lesson_id) for e in rows} == first
    # Nobody had all five required lessons (the quiet one is new), so nobody completed.
    assert s.heard.names("kalpla_course_completed") == []


def test_a_big_course_is_recomputed_by_a_job(make_app, monkeypatch):
    s = setup(make_app)
    monkeypatch.setattr(progress, "INLINE_LIMIT", 2)
    monkeypatch.setattr(progress, "BATCH", 2)
    others = [s.w.factories.user(roles={s.w.school: ["student"]}) for _ in range(4)]
    for other in others:
        enroll(s.app, other, s.course_id)
    ok(s.post("text", event="viewed"))
    kalpla = s.app.extensions["kalpla"]

    module = add_module(s.client, s.w, s.course_id, "More")["id"]
    add_lesson(s.client, s.w, module, "New")
    assert kalpla.jobs.wait(30)
    with kalpla.db.session() as session:
        (job,) = session.scalars(select(Job).where(Job.name == progress.RECOMPUTE_JOB)).all()
        assert (job.status, job.result) == ("succeeded", {"recomputed": 5})
    assert _summary(_row(s)) == (1, 5, 20, "active")
    assert {_summary(_row(s, other)) for other in others} == {(0, 5, 0, "active")}


@pytest.mark.parametrize("earlier_finished", [False, True])
def test_a_queued_recompute_is_not_queued_twice(make_app, monkeypatch, earlier_finished):
    s = setup(make_app)
    monkeypatch.setattr(progress, "INLINE_LIMIT", 0)
    kalpla = s.app.extensions["kalpla"]
    monkeypatch.setattr(kalpla.jobs, "_submit", lambda job_id: None)  # nothing runs them
    if earlier_finished:  # a finished job does not stand in for a new one
        with kalpla.db.session() as session:
            session.add(Job(name=progress.RECOMPUTE_JOB, params={"course_id": s.course_id},
                            institution_id=s.w.school.id, status="succeeded"))
    _change_behind_the_events(s)
    for _ in range(3):
        progress.on_lesson_changed(kalpla, s.course_id)
    with kalpla.db.session() as session:
        statuses = sorted(session.scalars(select(Job.status).where(
            Job.name == progress.RECOMPUTE_JOB)))
    assert statuses == (["queued", "succeeded"] if earlier_finished else ["queued"])
