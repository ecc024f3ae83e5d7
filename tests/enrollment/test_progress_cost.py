"""What one learning event costs: the statements it sends, and that the summary an event keeps
without recomputing it (one that completes no lesson only moves the last-lesson and
last-activity pointers) is always the one the full recompute gives."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from kalpla_core.db import utcnow
from kalpla_core.enrollment import progress
from kalpla_core.enrollment.models import Enrollment, LessonProgress
from kalpla_core.identity.models import User
from kalpla_core.testing import count_queries
from tests.courses.structure_support import ok
from tests.enrollment.test_progress import Setup, report, setup
from tests.enrollment.test_progress_recompute import _change_behind_the_events, _expected

# What an event reads before it writes: the lesson and its course, the locked enrollment
# (which is also the caller's seat), the caller's roles once (staff? asks two permissions, which
# share the transaction's read) and the institution's plugins (the rest of the access decision).
READS = ["select lessons", "select courses", "select enrollments", "select memberships",
         "select institution_plugins"]
VIDEO_READS = [*READS, "select institutions"]  # the video completion threshold
UPSERT = "insert lesson_progress"
FIRST_COMPLETION = "update lesson_progress.completed_at"
FULL_RECOMPUTE = "update enrollments.lessons_completed"
POINTERS = "update enrollments.last_lesson_id"


FROM = re.compile(r"\sFROM\s+(\w+)")


def _kind(statement: str) -> str:
    """``select <first table>``, ``insert <table>`` or ``update <table>.<first column set>``."""
    words = statement.split()
    if words[0] == "SELECT":
        table = FROM.search(statement)
        return "select " + (table[1] if table else "?")
    if words[0] == "INSERT":
        return "insert " + words[2]
    return "update " + words[1] + "." + words[3].split("=")[0]


def _record(s: Setup, lesson: str, event: progress.EventKind, **fields: Any
            ) -> tuple[progress.EventResult, list[str]]:
    """One event through the service in a unit of work of its own, as a request records it
    (the user loaded first, as authentication does): the result and the kinds of the
    statements it sent, transaction control left out."""
    kalpla = s.app.extensions["kalpla"]
    with s.app.app_context(), kalpla.db.session() as session:
        user = session.get(User, s.w.enrolled.id)
        with count_queries(kalpla.db.engine) as q:
            result = progress.record_event(session, kalpla, user, s.lessons[lesson], event,
                                           **fields)
    return result, [_kind(st) for st in q.statements if not st.startswith("BEGIN")]


def _video(percent: int, at: datetime) -> dict[str, Any]:
    return {"position_seconds": percent * 6, "percent": percent, "occurred_at": at}


def test_the_statements_of_an_event(make_app):
    s = setup(make_app)
    now = utcnow()
    # The enrollment's summary was never computed: the first event computes it in full.
    result, kinds = _record(s, "text", "viewed", occurred_at=now - timedelta(minutes=10))
    assert result.lesson_completed
    assert kinds == [*READS, UPSERT, FIRST_COMPLETION, FULL_RECOMPUTE]

    # A video report completing nothing moves the pointers with one plain UPDATE.
    result, kinds = _record(s, "video", "video", **_video(10, now - timedelta(minutes=9)))
    assert not result.lesson_completed
    assert kinds == [*VIDEO_READS, UPSERT, POINTERS]
    assert (result.summary.last_lesson_id, result.summary.last_activity_at) == (
        s.lessons["video"], now - timedelta(minutes=9))
    # A late one (older than the last activity) writes nothing but its progress row.
    result, kinds = _record(s, "video", "video", **_video(5, now - timedelta(minutes=9.5)))
    assert kinds == [*VIDEO_READS, UPSERT]
    assert result.lesson.percent == 10 and result.summary.lessons_completed == 1
    # A repeated view of a completed lesson, now the latest event.
    result, kinds = _record(s, "text", "viewed", occurred_at=now - timedelta(minutes=8.5))
    assert kinds == [*READS, UPSERT, POINTERS] and not result.lesson_completed

    # An event completing a lesson recomputes the counts.
    result, kinds = _record(s, "video", "video", **_video(100, now - timedelta(minutes=8)))
    assert result.lesson_completed and result.summary.lessons_completed == 2
    assert kinds == [*VIDEO_READS, UPSERT, FIRST_COMPLETION, FULL_RECOMPUTE]


def _oracle(s: Setup) -> tuple[Any, ...]:
    """The summary computed from the progress rows in Python, and the stored one."""
    with s.app.extensions["kalpla"].db.session() as session:
        e = session.scalars(select(Enrollment).where(
            Enrollment.course_id == s.course_id,
            Enrollment.user_id == s.w.enrolled.id)).one()
        rows = session.execute(select(LessonProgress.id, LessonProgress.lesson_id,
                                      LessonProgress.last_event_at)
                               .where(LessonProgress.enrollment_id == e.id)).all()
        latest = max(rows, key=lambda r: (r.last_event_at, r.id), default=None)
        expected = (*_expected(session, e.id, s.course_id),
                    latest.lesson_id if latest else None,
                    latest.last_event_at if latest else None)
        stored = (e.lessons_completed, e.lessons_required, e.progress_percent,
                  e.last_lesson_id, e.last_activity_at)
    return expected, stored


def test_the_summary_an_event_keeps_is_the_full_recompute(make_app):
    s = setup(make_app)
    t = utcnow() - timedelta(hours=1)
    at = {n: t + timedelta(minutes=n) for n in range(20)}
    events: list[tuple[str, progress.EventKind, dict[str, Any]]] = [
        ("file", "viewed", {"occurred_at": at[6]}),
        ("video", "video", _video(20, at[2])),          # late: nothing moves
        ("video", "video", _video(30, at[6])),          # a tie, from a later row: it wins
        ("text", "viewed", {"occurred_at": at[6]}),     # a tie again, completing
        ("video", "video", _video(40, at[6])),          # a tie from an earlier row: it loses
        ("optional", "viewed", {"occurred_at": at[5]}),  # completes, but is old
        ("video", "video", _video(50, at[7])),
        ("file", "viewed", {"occurred_at": at[3]}),     # completed already, and old
        ("video", "video", _video(60, at[7])),          # its own time again: nothing moves
        ("text", "completed", {"occurred_at": at[8]}),  # completed already: a plain event
        ("video", "video", _video(95, at[2])),          # completes, with an early time
        ("video", "video", _video(70, at[9])),
    ]
    for lesson, event, fields in events:
        _record(s, lesson, event, **fields)
        expected, stored = _oracle(s)
        assert stored == expected, (lesson, event, fields)
    assert stored[:4] == (3, 4, 75, s.lessons["video"])


def test_an_event_on_a_stale_summary_recomputes_it(make_app):
    s = setup(make_app)
    ok(s.post("text", event="viewed"))
    _change_behind_the_events(s)
    result, kinds = _record(s, "video", "video", **_video(10, utcnow()))
    assert not result.lesson_completed and kinds[-1] == FULL_RECOMPUTE
    assert (result.summary.lessons_completed, result.summary.lessons_required) == (1, 5)


def test_any_event_completes_a_finished_enrollment_still_active(make_app):
    s = setup(make_app)
    ok(s.post("text", event="viewed"))
    ok(s.post("video", event="video", position_seconds=600, percent=100))
    ok(s.post("file", event="viewed"))
    assert report(s).course_completed
    with s.app.extensions["kalpla"].db.session() as session:  # reactivated, say by hand
        session.execute(update(Enrollment).where(Enrollment.course_id == s.course_id)
                        .values(status="active", completed_at=None))
    result, kinds = _record(s, "video", "video", **_video(50, utcnow()))
    assert not result.lesson_completed and result.course_completed
    assert result.summary.status == "completed" and FULL_RECOMPUTE in kinds
    assert len(s.heard.names("kalpla_course_completed")) == 2
