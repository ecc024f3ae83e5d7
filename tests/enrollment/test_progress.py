"""Learning events and progress: completion rules per kind, idempotent and order-independent
recording, completion of the enrollment, who records and who reads."""

from __future__ import annotations

import threading
import types
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from kalpla_core.contract import LessonKind, PluginMeta
from kalpla_core.courses.models import Course
from kalpla_core.db import utcnow
from kalpla_core.enrollment import progress
from kalpla_core.enrollment.models import Enrollment, LessonProgress
from kalpla_core.hookspecs import hookimpl
from kalpla_core.http.problems import APIError
from kalpla_core.institutions.models import Institution
from kalpla_core.testing import Factories, count_queries
from tests.courses.structure_support import (
    World,
    add_lesson,
    add_module,
    create_course,
    ok,
    problem,
    stored_file,
    world,
)

PLUGIN = "quizzer"
EVENT_HOOKS = ("kalpla_lesson_completed", "kalpla_course_completed",
               "kalpla_enrollment_status_changed")


@dataclass
class Heard:
    """Events a test plugin heard, by hook."""

    events: dict[str, list[Any]] = field(default_factory=lambda: {h: [] for h in EVENT_HOOKS})

    def names(self, hook: str) -> list[Any]:
        return self.events[hook]


def quiz_plugin(heard: Heard, name: str = PLUGIN, kind: str = "quiz") -> types.SimpleNamespace:
    """A plugin contributing the ``quiz`` lesson kind and recording progress events."""
    ns = types.SimpleNamespace()
    ns.KALPLA_PLUGIN = PluginMeta(name=name, version="1.0", core_requires=">=0.1")
    ns.kalpla_lesson_kinds = hookimpl(lambda: [LessonKind(kind, kind.title())])
    for hook in EVENT_HOOKS:
        setattr(ns, hook, hookimpl(lambda event, _h=hook: heard.events[_h].append(event)))
    return ns


@dataclass
class Setup:
    app: Any
    client: Any
    w: World
    heard: Heard
    course_id: str
    lessons: dict[str, str]  # text, video, file, quiz, optional

    def post(self, lesson: str, user: Any = None, **body: Any) -> Any:
        user = self.w.enrolled if user is None else user
        return self.client.post(f"/api/v1/lessons/{self.lessons.get(lesson, lesson)}/progress",
                                json=body, headers=self.w.auth(user))

    def mine(self, user: Any = None) -> Any:
        user = self.w.enrolled if user is None else user
        return self.client.get(f"/api/v1/courses/{self.course_id}/progress",
                               headers=self.w.auth(user))

    def enrollment(self, user: Any = None) -> Enrollment:
        user = self.w.enrolled if user is None else user
        with self.app.extensions["kalpla"].db.session() as s:
            return s.scalars(select(Enrollment).where(
                Enrollment.course_id == self.course_id,
                Enrollment.user_id == user.id)).one()


def enroll(app: Any, user: Any, course_id: str, status: str = "active",
           since: timedelta = timedelta(days=1), expires_in: timedelta | None = None) -> str:
    """An enrollment row that started ``since`` ago (events may be dated back to then)."""
    with app.extensions["kalpla"].db.session() as s:
        course = s.get(Course, course_id)
        assert course is not None
        start = utcnow() - since
        e = Enrollment(institution_id=course.institution_id, course_id=course_id,
                       user_id=user.id, status=status, activated_at=start,
                       expires_at=utcnow() + expires_in if expires_in is not None else None)
        s.add(e)
        s.flush()
        return e.id


def setup(make_app: Any, *, settings: dict[str, Any] | None = None,
          enroll_student: bool = True) -> Setup:
    heard = Heard()
    app = make_app(plugins=[PLUGIN], plugin_objects={PLUGIN: quiz_plugin(heard)})
    client = app.test_client()
    w = world(Factories(app), plugins=[PLUGIN])
    if settings:
        with app.extensions["kalpla"].db.session() as s:
            inst = s.get(Institution, w.school.id)
            assert inst is not None
            inst.settings = settings
    course_id = create_course(client, w, publish=True)
    first = add_module(client, w, course_id, "Start")["id"]
    second = add_module(client, w, course_id, "Then")["id"]
    file_id = stored_file(app, w.school, "application/pdf", filename="notes.pdf")
    lessons = {
        "text": add_lesson(client, w, first, "Read")["id"],
        "video": add_lesson(client, w, first, "Watch", kind="video", body="",
                            video_url="https://video.example/v.mp4",
                            duration_seconds=600)["id"],
        "file": add_lesson(client, w, second, "Download", kind="file", body="",
                           file_id=file_id)["id"],
        "quiz": add_lesson(client, w, second, "Check", kind="quiz", body="")["id"],
        "optional": add_lesson(client, w, second, "Extra", is_required=False)["id"],
    }
    if enroll_student:
        enroll(app, w.enrolled, course_id)
    return Setup(app, client, w, heard, course_id, lessons)


def report(s: Setup, lesson: str = "quiz", user: Any = None, plugin: str = PLUGIN,
           **kwargs: Any) -> progress.EventResult:
    """The plugin's report, in a unit of work of its own (as a plugin job or route would)."""
    kalpla = s.app.extensions["kalpla"]
    user = s.w.enrolled if user is None else user
    with s.app.app_context(), kalpla.db.session() as session:
        return progress.report_lesson_completed(
            session, kalpla, lesson_id=s.lessons.get(lesson, lesson), plugin=plugin,
            user_id=user.id, **kwargs)


def iso(moment: datetime) -> str:
    return moment.isoformat()


# --- recording ----------------------------------------------------------------------------

def test_out_of_order_and_repeated_events_reach_100_percent_once(make_app):
    s = setup(make_app)
    now = utcnow()
    t = {n: iso(now - timedelta(minutes=60 - n)) for n in range(60)}

    # The video: a late 95 % arrives first, then older and lower reports.
    body = ok(s.post("video", event="video", position_seconds=570, percent=95,
                     occurred_at=t[30]))
    assert body["lesson_completed"] and body["lesson"]["completed_by"] == "watched"
    assert body["summary"] == {**body["summary"], "lessons_completed": 1,
                               "lessons_required": 4, "percent": 25, "status": "active"}
    body = ok(s.post("video", event="video", position_seconds=120, percent=20,
                     occurred_at=t[10]))
    assert not body["lesson_completed"]
    lesson = body["lesson"]
    assert (lesson["position_seconds"], lesson["percent"]) == (570, 95)
    assert lesson["first_viewed_at"] == t[10] and lesson["last_event_at"] == t[30]
    assert lesson["completed_at"] == t[30]
    # An earlier event that completes it on its own moves the completion back, once.
    body = ok(s.post("video", event="video", position_seconds=560, percent=93,
                     occurred_at=t[20]))
    assert not body["lesson_completed"] and body["lesson"]["completed_at"] == t[20]
    assert body["lesson"]["percent"] == 95

    # The text lesson, viewed twice; the file, marked done then viewed.
    for _ in range(2):
        ok(s.post("text", event="viewed", occurred_at=t[40]))
    ok(s.post("file", event="completed", occurred_at=t[41]))
    body = ok(s.post("file", event="viewed", occurred_at=t[42]))
    assert body["lesson"]["completed_by"] == "manual" and body["summary"]["percent"] == 75
    # The optional lesson does not count.
    body = ok(s.post("optional", event="viewed"))
    assert body["lesson"]["completed"] and body["summary"]["lessons_completed"] == 3

    assert s.enrollment().status == "active"
    result = report(s)
    assert result.lesson_completed and result.course_completed
    assert result.summary.percent == 100 and result.summary.status == "completed"
    # Repeats after completion change nothing and announce nothing.
    report(s)
    body = ok(s.post("text", event="completed"))
    assert not body["course_completed"] and body["summary"]["status"] == "completed"

    enrollment = s.enrollment()
    assert (enrollment.status, enrollment.progress_percent) == ("completed", 100)
    completed = s.heard.names("kalpla_lesson_completed")
    assert sorted(e.lesson_id for e in completed) == sorted(
        s.lessons[k] for k in ("video", "text", "file", "optional", "quiz"))
    (course_done,) = s.heard.names("kalpla_course_completed")
    assert (course_done.enrollment_id, course_done.user_id) == (enrollment.id, s.w.enrolled.id)
    assert [(e.old_status, e.new_status) for e in
            s.heard.names("kalpla_enrollment_status_changed")] == [("active", "completed")]


def test_the_same_events_in_any_order_give_the_same_progress(make_app):
    s = setup(make_app)
    second = s.w.factories.user(roles={s.w.school: ["student"]})
    enroll(s.app, second, s.course_id)
    now = utcnow()
    events = [
        ("video", {"event": "video", "position_seconds": 60, "percent": 10,
                   "occurred_at": iso(now - timedelta(minutes=9))}),
        ("video", {"event": "video", "position_seconds": 300, "percent": 92,
                   "occurred_at": iso(now - timedelta(minutes=5))}),
        ("video", {"event": "video", "position_seconds": 200, "percent": 96,
                   "occurred_at": iso(now - timedelta(minutes=7))}),
        ("text", {"event": "viewed", "occurred_at": iso(now - timedelta(minutes=8))}),
        ("text", {"event": "completed", "occurred_at": iso(now - timedelta(minutes=6))}),
    ]
    for lesson, body in events:
        ok(s.post(lesson, **body))
    for lesson, body in reversed(events):
        ok(s.post(lesson, user=second, **body))
    with s.app.extensions["kalpla"].db.session() as session:
        rows = session.execute(
            select(Enrollment.user_id, LessonProgress.lesson_id, LessonProgress.first_viewed_at,
                   LessonProgress.last_event_at, LessonProgress.position_seconds,
                   LessonProgress.max_percent, LessonProgress.completed_at,
                   LessonProgress.completed_by)
            .join(Enrollment, Enrollment.id == LessonProgress.enrollment_id)).all()
    by_user: dict[str, set[tuple[Any, ...]]] = {}
    for row in rows:
        by_user.setdefault(row[0], set()).add(tuple(row[1:]))
    assert by_user[s.w.enrolled.id] == by_user[second.id]
    video = next(r for r in by_user[second.id] if r[0] == s.lessons["video"])
    assert video[3:] == (300, 96, now - timedelta(minutes=7), "watched")
    mine, theirs = ok(s.mine()), ok(s.mine(second))
    assert mine["summary"]["percent"] == theirs["summary"]["percent"] == 50
    # The latest event, not the last one to arrive, names the last lesson.
    assert mine["summary"]["last_lesson_id"] == theirs["summary"]["last_lesson_id"] \
        == s.lessons["video"]


def test_video_completes_at_the_threshold(make_app):
    s = setup(make_app)
    body = ok(s.post("video", event="video", position_seconds=534, percent=89.9))
    assert not body["lesson"]["completed"] and body["lesson"]["percent"] == 89
    assert s.heard.names("kalpla_lesson_completed") == []
    body = ok(s.post("video", event="video", position_seconds=540, percent=90))
    assert body["lesson"]["completed"] and body["lesson_completed"]
    # Watching on, or again, completes nothing twice.
    ok(s.post("video", event="video", position_seconds=600, percent=100))
    assert len(s.heard.names("kalpla_lesson_completed")) == 1


def test_the_institution_sets_the_video_threshold(make_app):
    s = setup(make_app, settings={"video_completion_percent": 75})
    assert not ok(s.post("video", event="video", position_seconds=1, percent=74))[
        "lesson"]["completed"]
    assert ok(s.post("video", event="video", position_seconds=2, percent=75))[
        "lesson"]["completed"]


def test_only_text_and_file_lessons_are_marked_completed_by_hand(make_app):
    s = setup(make_app)
    r = problem(s.post("video", event="completed"), 422)
    assert r["type"] == "urn:kalpla:problem:manual-completion-not-allowed"
    r = problem(s.post("quiz", event="completed"), 422)
    assert PLUGIN in r["detail"]
    assert ok(s.post("text", event="completed"))["lesson"]["completed_by"] == "manual"
    # A video event on another kind, or one missing its numbers, is refused.
    assert "event" in problem(s.post("text", event="video", position_seconds=1, percent=5),
                              422)["errors"]
    assert set(problem(s.post("video", event="video"), 422)["errors"]) == {
        "position_seconds", "percent"}
    assert "percent" in problem(s.post("video", event="viewed", percent=3), 422)["errors"]
    assert "percent" in problem(s.post("video", event="video", position_seconds=1,
                                       percent=101), 422)["errors"]
    assert "event" in problem(s.post("text", event="finished"), 422)["errors"]
    with s.app.extensions["kalpla"].db.session() as session:
        assert session.scalar(select(LessonProgress.lesson_id).where(
            LessonProgress.lesson_id == s.lessons["video"])) is None


def test_a_plugin_kind_is_completed_only_by_its_plugin(make_app):
    s = setup(make_app)
    # Opening the quiz is recorded; it completes nothing.
    body = ok(s.post("quiz", event="viewed"))
    assert body["lesson"]["first_viewed_at"] and not body["lesson"]["completed"]
    kalpla = s.app.extensions["kalpla"]
    # Another plugin, or the core's kinds, cannot be reported.
    with pytest.raises(APIError) as refused:
        report(s, plugin="other")
    assert refused.value.code == "not-plugin-kind"
    with pytest.raises(APIError) as refused:
        report(s, lesson="text")
    assert refused.value.code == "not-plugin-kind"
    # A student without an enrollment cannot be reported.
    with pytest.raises(APIError) as refused:
        report(s, user=s.w.student)
    assert refused.value.status == 404
    with pytest.raises(TypeError), kalpla.db.session() as session:
        progress.report_lesson_completed(session, kalpla, lesson_id=s.lessons["quiz"],
                                         plugin=PLUGIN)

    result = report(s)
    assert result.lesson_completed and result.lesson.completed_by == f"plugin:{PLUGIN}"
    assert result.summary.lessons_completed == 1
    # By enrollment id, later: nothing changes; earlier: the completion moves back.
    enrollment_id = s.enrollment().id
    with kalpla.db.session() as session:
        later = progress.report_lesson_completed(
            session, kalpla, lesson_id=s.lessons["quiz"], plugin=PLUGIN,
            enrollment_id=enrollment_id)
    assert not later.lesson_completed and later.lesson.completed_at == result.lesson.completed_at
    earlier = utcnow() - timedelta(hours=1)
    with kalpla.db.session() as session:
        moved = progress.report_lesson_completed(
            session, kalpla, lesson_id=s.lessons["quiz"], plugin=PLUGIN,
            enrollment_id=enrollment_id, occurred_at=earlier)
    assert moved.lesson.completed_at == earlier and not moved.lesson_completed
    assert len(s.heard.names("kalpla_lesson_completed")) == 1


def test_a_plugin_not_enabled_for_the_institution_cannot_report(make_app):
    s = setup(make_app)
    from kalpla_core.institutions.service import disable_plugin

    kalpla = s.app.extensions["kalpla"]
    with kalpla.db.session() as session:
        disable_plugin(session, kalpla, session.get(Institution, s.w.school.id), PLUGIN)
    with pytest.raises(APIError) as refused:
        report(s)
    assert refused.value.code == "plugin-not-enabled"


def test_who_records_progress(make_app):
    s = setup(make_app)
    w = s.w
    url = s.lessons["text"]
    # Anonymous callers sign in; students without an enrollment, of another institution,
    # mentors who do not teach the course are refused; the course's staff only preview.
    anonymous = s.client.post(f"/api/v1/lessons/{url}/progress", json={"event": "viewed"},
                              headers=w.auth(None))
    assert problem(anonymous, 401)["type"] == "urn:kalpla:problem:unauthorized"
    for user in (w.student, w.outsider, w.mentor):
        assert problem(s.post("text", user=user, event="viewed"), 403)["type"] == \
            "urn:kalpla:problem:not-enrolled"
    for user in (w.instructor, w.admin, w.platform_admin):
        body = problem(s.post("text", user=user, event="viewed"), 403)
        assert body["type"] == "urn:kalpla:problem:not-enrolled"
        assert "staff" in body["detail"]
    # Enrollments that do not seat the student, or whose access ran out.
    for status, expires_in in (("dropped", None), ("pending", None), ("waitlisted", None),
                               ("expired", None), ("active", timedelta(seconds=-1))):
        user = w.factories.user(roles={w.school: ["student"]})
        enroll(s.app, user, s.course_id, status=status, expires_in=expires_in)
        assert problem(s.post("text", user=user, event="viewed"), 403)["type"] == \
            "urn:kalpla:problem:not-enrolled", status
    # Unknown lessons, and lessons of a draft, are not found.
    assert problem(s.post("nope", event="viewed"), 404)["type"] == \
        "urn:kalpla:problem:not-found"
    draft = create_course(s.client, w, slug="draft")
    module = add_module(s.client, w, draft)["id"]
    hidden = add_lesson(s.client, w, module)["id"]
    problem(s.post(hidden, event="viewed"), 404)
    with s.app.extensions["kalpla"].db.session() as session:
        assert session.scalars(select(LessonProgress)).all() == []
    # An enrolled staff member records like any student.
    enroll(s.app, w.mentor, s.course_id)
    assert ok(s.post("text", user=w.mentor, event="viewed"))["lesson"]["completed"]


def test_a_completed_enrollment_keeps_recording_without_completing_again(make_app):
    s = setup(make_app)
    with s.app.extensions["kalpla"].db.session() as session:
        e = session.get(Enrollment, s.enrollment().id)
        assert e is not None
        e.status, e.completed_at = "completed", utcnow()
    body = ok(s.post("text", event="viewed"))
    assert body["summary"]["status"] == "completed" and body["lesson_completed"]
    assert not body["course_completed"]


def test_concurrent_events_lose_no_update(make_app):
    s = setup(make_app)
    errors: list[Any] = []
    percents = list(range(5, 100, 6))  # 16 reports of the same video, in parallel

    def send(percent: int) -> None:
        client = s.app.test_client()
        r = client.post(f"/api/v1/lessons/{s.lessons['video']}/progress",
                        json={"event": "video", "position_seconds": percent * 6,
                              "percent": percent}, headers=s.w.auth(s.w.enrolled))
        if r.status_code != 200:
            errors.append(r.get_data(as_text=True))

    threads = [threading.Thread(target=send, args=(p,)) for p in percents]
    threads += [threading.Thread(target=lambda: s.app.test_client().post(
        f"/api/v1/lessons/{s.lessons['text']}/progress", json={"event": "viewed"},
        headers=s.w.auth(s.w.enrolled)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with s.app.extensions["kalpla"].db.session() as session:
        row = session.scalars(select(LessonProgress).where(
            LessonProgress.lesson_id == s.lessons["video"])).one()
        assert (row.max_percent, row.position_seconds) == (max(percents), max(percents) * 6)
    assert ok(s.mine())["summary"]["lessons_completed"] == 2
    assert len(s.heard.names("kalpla_lesson_completed")) == 2


# --- reading ------------------------------------------------------------------------------

def test_my_progress_with_resume_point(make_app):
    s = setup(make_app)
    body = ok(s.mine())
    assert body["summary"]["percent"] == 0 and body["resume_lesson_id"] == s.lessons["text"]
    assert [line["lesson_id"] for line in body["lessons"]] == list(s.lessons.values())
    assert all(line["progress"] is None for line in body["lessons"])

    ok(s.post("video", event="video", position_seconds=125, percent=20))
    ok(s.post("text", event="viewed"))
    r = s.mine()
    body = ok(r)
    assert r.headers["Cache-Control"] == "private, no-store"
    # The text is done; the video is where the student stopped.
    assert body["resume_lesson_id"] == s.lessons["video"]
    assert body["summary"]["last_lesson_id"] == s.lessons["text"]
    video = next(line for line in body["lessons"] if line["kind"] == "video")
    assert video["progress"]["position_seconds"] == 125 and not video["progress"]["completed"]
    # With every required lesson done, the resume point is the lesson opened last.
    ok(s.post("video", event="video", position_seconds=600, percent=100))
    ok(s.post("file", event="viewed"))
    report(s)
    body = ok(s.mine())
    assert body["summary"]["percent"] == 100 and body["summary"]["completed_at"]
    assert body["resume_lesson_id"] == body["summary"]["last_lesson_id"] == s.lessons["quiz"]


def test_who_reads_progress(make_app):
    s = setup(make_app)
    w = s.w
    enrollment_id = s.enrollment().id
    ok(s.post("text", event="viewed"))
    url = f"/api/v1/enrollments/{enrollment_id}/progress"
    for user in (w.enrolled, w.instructor, w.admin, w.platform_admin):
        assert ok(s.client.get(url, headers=w.auth(user)))["summary"]["lessons_completed"] \
            == 1
    # Another student, even one enrolled in the same course, a mentor who does not teach
    # it and a student of another institution do not learn it exists.
    other = w.factories.user(roles={w.school: ["student"]})
    enroll(s.app, other, s.course_id)
    for user in (other, w.student, w.mentor, w.outsider):
        problem(s.client.get(url, headers=w.auth(user)), 404)
    problem(s.client.get(url, headers=w.auth(None)), 401)
    # "Mine" is the caller's own, and there is none without an enrollment.
    assert ok(s.mine(other))["summary"]["lessons_completed"] == 0
    for user in (w.student, w.outsider, w.instructor):
        assert problem(s.mine(user), 404)["type"] == "urn:kalpla:problem:not-enrolled"
    problem(s.client.get(f"/api/v1/courses/{s.course_id}/progress", headers=w.auth(None)),
            401)


def _big_course(s: Setup, slug: str, modules: int, lessons: int) -> tuple[str, list[str]]:
    course_id = create_course(s.client, s.w, publish=True, slug=slug)
    ids = []
    for m in range(modules):
        module = add_module(s.client, s.w, course_id, f"M{m}")["id"]
        ids += [add_lesson(s.client, s.w, module, f"L{m}.{n}")["id"] for n in range(lessons)]
    enroll(s.app, s.w.enrolled, course_id)
    return course_id, ids


def test_queries_do_not_grow_with_the_course(make_app):
    s = setup(make_app, enroll_student=False)
    small, small_lessons = _big_course(s, "small", 1, 3)
    big, big_lessons = _big_course(s, "big", 10, 20)
    for lesson in big_lessons[:150]:
        ok(s.post(lesson, event="viewed"))
    ok(s.post(small_lessons[0], event="viewed"))
    headers = s.w.auth(s.w.enrolled)

    def count(method: str, url: str, **kwargs: Any) -> int:
        with count_queries(s.app.extensions["kalpla"].db.engine) as q:
            r = getattr(s.client, method)(url, headers=headers, **kwargs)
        assert r.status_code == 200, r.get_data(as_text=True)
        return q.count

    reads = {count("get", f"/api/v1/courses/{c}/progress") for c in (small, big)}
    assert len(reads) == 1 and reads.pop() <= 6
    writes = {count("post", f"/api/v1/lessons/{lesson}/progress", json={"event": "viewed"})
              for lesson in (small_lessons[-1], big_lessons[-1])}
    assert len(writes) == 1 and writes.pop() <= 16
