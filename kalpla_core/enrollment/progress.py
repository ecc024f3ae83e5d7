"""Progress: learning events, per-kind completion rules and each enrollment's summary. No Flask.

Recording. A learning event (a view, a video position, a manual completion, or a completion a
plugin reports) is merged into the one ``lesson_progress`` row of its enrollment and lesson by
an upsert (``INSERT … ON CONFLICT DO UPDATE``) whose every field only grows: the furthest
position, the highest percent, the earliest first view, the latest event, the earliest
completion. A late, repeated or reordered event therefore never lowers anything, and the
result does not depend on the order events arrive in.

Completion rules, by lesson kind:
- ``text`` and ``file``: complete when viewed (a download counts), or when the student marks
  them completed;
- ``video``: complete once an event reports at least ``video_completion_percent`` watched (an
  institution setting, 90 by default); never marked complete by hand;
- kinds contributed by plugins: only when their plugin reports it through
  :func:`report_lesson_completed`.
A lesson's completion time is the earliest time of an event that completes it by itself.

The summary on ``enrollments`` (lessons completed, lessons required, percent, last lesson, last
activity) is a pure function of the course's current required lessons and the enrollment's
progress rows. It is recomputed in SQL by an event that completes a lesson, on read when the
course's ``structure_version`` moved past the enrollment's, and in bulk by
:func:`recompute_course` after lessons change. So adding a required lesson lowers the percent
without undoing any completion, and removing one may complete the course. When every required
lesson is done, an active enrollment is completed (once), and ``kalpla_course_completed`` fires
after the commit. Most events complete nothing (a video reports its position as it plays): when
the summary is current such an event leaves the counts as they are and only moves the last
lesson and last activity, with a plain UPDATE and only when its row became the latest; a tie
with another lesson's row, a stale summary, or a finished enrollment still active fall back to
the full recompute.

Who records: a user who may read the lesson (:func:`access.can_read_lesson`) and holds an
active enrollment in its course, or a completed one whose access has not run out (a student
who finished may still do lessons added later; the enrollment stays completed). The course's
staff previewing lessons without an enrollment record nothing.

Concurrency: every write locks the enrollment row first (``SELECT … FOR UPDATE``; on SQLite the
database write lock), then reads and writes its progress, so concurrent events of one student
are applied one after the other and the summary always counts every committed row. An event
takes the lock before the access decision, which then reads the student's seat from the locked
enrollment rather than querying it again.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Integer, and_, bindparam, case, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from kalpla_core.contract import CourseCompleted, LessonCompleted
from kalpla_core.courses import access, structure
from kalpla_core.courses.models import Course, Lesson, Module
from kalpla_core.courses.service import Caller, visible_course
from kalpla_core.db import UTCDateTime, utcnow
from kalpla_core.enrollment import service as enrollments
from kalpla_core.enrollment.models import SEATED, Enrollment, LessonProgress
from kalpla_core.enrollment.state import lock_enrollment, serialise_writes
from kalpla_core.http.problems import APIError
from kalpla_core.identity.models import User
from kalpla_core.institutions.models import Institution

LESSON_COMPLETED_HOOK = "kalpla_lesson_completed"
COURSE_COMPLETED_HOOK = "kalpla_course_completed"
RECOMPUTE_JOB = "progress.recompute_course"

VIDEO_SETTING = "video_completion_percent"
DEFAULT_VIDEO_PERCENT = 90
# Kinds a student may mark completed by hand; they are also completed by a view.
MANUAL_KINDS = ("text", "file")
MAX_POSITION = 7 * 24 * 3600  # seconds; the longest video a lesson may declare
# Enrollments recomputed per statement in bulk, and how many a lesson change recomputes inline
# (in the request that changed the lesson) before handing the rest to a background job.
BATCH = 500
INLINE_LIMIT = 1000

EventKind = Literal["viewed", "video", "completed"]

_E = Enrollment.__table__
_LP = LessonProgress.__table__
_L = Lesson.__table__
_C = Course.__table__


# --- results ----------------------------------------------------------------------------------

@dataclass
class Summary:
    """An enrollment's progress in its course, as stored on the enrollment."""

    enrollment_id: str
    course_id: str
    user_id: str
    status: str
    lessons_completed: int
    lessons_required: int
    percent: int
    structure_version: int
    last_lesson_id: str | None
    last_activity_at: datetime | None
    completed_at: datetime | None

    @classmethod
    def of(cls, enrollment: Enrollment) -> Summary:
        return cls(enrollment.id, enrollment.course_id, enrollment.user_id, enrollment.status,
                   enrollment.lessons_completed, enrollment.lessons_required,
                   enrollment.progress_percent, enrollment.structure_version,
                   enrollment.last_lesson_id, enrollment.last_activity_at,
                   enrollment.completed_at)


@dataclass
class LessonState:
    """What one enrollment did with one lesson (a ``lesson_progress`` row)."""

    lesson_id: str
    first_viewed_at: datetime | None
    last_event_at: datetime | None
    position_seconds: int
    percent: int
    completed_at: datetime | None
    completed_by: str | None

    @property
    def completed(self) -> bool:
        return self.completed_at is not None


@dataclass
class EventResult:
    """The lesson's progress and the enrollment's summary after an event."""

    lesson: LessonState
    summary: Summary
    lesson_completed: bool  # this event completed the lesson for the first time
    course_completed: bool  # and with it the enrollment


@dataclass
class LessonLine:
    """One lesson of the course, in outline order, with the enrollment's progress on it."""

    lesson_id: str
    module_id: str
    title: str
    kind: str
    is_required: bool
    state: LessonState | None  # None: never opened


@dataclass
class CourseProgress:
    summary: Summary
    resume_lesson_id: str | None
    lessons: list[LessonLine] = field(default_factory=list)


@dataclass(frozen=True)
class Observation:
    """What one event says about one lesson. ``completes`` names what completes the lesson
    by this event alone (``viewed``, ``watched``, ``manual``, ``plugin:<name>``), or None."""

    occurred_at: datetime
    position_seconds: int = 0
    percent: int = 0
    completes: str | None = None


# --- errors -----------------------------------------------------------------------------------

def _invalid(field_name: str, message: str) -> APIError:
    return APIError(422, "The request has invalid fields; see errors.", "validation",
                    errors={field_name: [message]})


def _not_enrolled() -> APIError:
    return APIError(403, "Only students with an active enrollment in the course record "
                    "progress; previews by the course's staff are not recorded.", "not-enrolled")


# --- rules ------------------------------------------------------------------------------------

def video_completion_percent(session: Session, institution_id: str) -> int:
    """The share of a video to watch for it to count as completed: the institution's
    ``video_completion_percent`` setting (a whole number from 1 to 100), else 90."""
    institution = session.get(Institution, institution_id)
    value = (institution.settings or {}).get(VIDEO_SETTING) if institution else None
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 100:
        return value
    return DEFAULT_VIDEO_PERCENT


def _observe(session: Session, kalpla: Any, course: Course, lesson: Lesson, event: EventKind,
             occurred_at: datetime, position_seconds: int | None,
             percent: float | None) -> Observation:
    """Check the event against the lesson's kind and say what it records."""
    if event == "video":
        if lesson.kind != "video":
            raise _invalid("event", f"A {lesson.kind} lesson has no video; send 'viewed'.")
        if position_seconds is None or percent is None:
            raise _invalid("event", "A video event gives position_seconds and percent.")
        watched = int(percent)  # 89.9 % watched is not 90 %
        threshold = video_completion_percent(session, course.institution_id)
        return Observation(occurred_at, position_seconds, watched,
                           "watched" if watched >= threshold else None)
    if event == "completed":
        if lesson.kind not in MANUAL_KINDS:
            how = ("once enough of it is watched" if lesson.kind == "video" else
                   f"when the plugin {kalpla.lesson_kinds.owner(lesson.kind)!r} reports it")
            raise APIError(422, f"A {lesson.kind} lesson cannot be marked completed by hand; "
                           f"it is completed {how}.", "manual-completion-not-allowed")
        return Observation(occurred_at, completes="manual")
    # A view completes the kinds whose rule is "opened"; other kinds only record it.
    return Observation(occurred_at, completes="viewed" if lesson.kind in MANUAL_KINDS else None)


def _when(enrollment: Enrollment, occurred_at: datetime | None) -> datetime:
    """The event's time: the client's, kept between the enrollment's start and now (a clock
    ahead of ours or a replayed old event must not move progress out of that range)."""
    now = utcnow()
    if occurred_at is None:
        return now
    start = enrollment.activated_at or enrollment.created_at
    return max(min(occurred_at, now), start) if start else min(occurred_at, now)


# --- the progress row -------------------------------------------------------------------------

def _greater(old: Any, new: Any) -> Any:
    return case((new > old, new), else_=old)


def _earlier(old: Any, new: Any) -> Any:
    """The earlier of two nullable timestamps (NULL only when both are)."""
    return case((old.is_(None), new), (new.is_(None), old), (new < old, new), else_=old)


def _later(old: Any, new: Any) -> Any:
    return case((old.is_(None), new), (new.is_(None), old), (new > old, new), else_=old)


@functools.cache
def _upsert_statement(dialect: str) -> Any:
    """``INSERT … ON CONFLICT DO UPDATE`` of a progress row, built once per dialect (statements
    here are built once and take their values as parameters: most of an event's cost would
    otherwise go to building SQL)."""
    if dialect == "postgresql":
        stmt: Any = postgresql.insert(_LP)
    elif dialect == "sqlite":
        stmt = sqlite.insert(_LP)
    else:
        raise RuntimeError(f"progress upserts support PostgreSQL and SQLite, not {dialect}")
    stmt = stmt.values(enrollment_id=bindparam("enrollment_id"),
                       lesson_id=bindparam("lesson_id"), first_viewed_at=bindparam("at"),
                       last_event_at=bindparam("at"),
                       position_seconds=bindparam("position_seconds"),
                       max_percent=bindparam("percent"))
    new = stmt.excluded
    return stmt.on_conflict_do_update(
        index_elements=[_LP.c.enrollment_id, _LP.c.lesson_id],
        set_={"first_viewed_at": _earlier(_LP.c.first_viewed_at, new.first_viewed_at),
              "last_event_at": _later(_LP.c.last_event_at, new.last_event_at),
              "position_seconds": _greater(_LP.c.position_seconds, new.position_seconds),
              "max_percent": _greater(_LP.c.max_percent, new.max_percent)},
    ).returning(_LP.c.id, _LP.c.first_viewed_at, _LP.c.last_event_at, _LP.c.position_seconds,
                _LP.c.max_percent, _LP.c.completed_at, _LP.c.completed_by)


_COMPLETION = {"completed_at": bindparam("at", type_=UTCDateTime()),
               "completed_by": bindparam("by")}
# The first completion; the guard makes a second, concurrent one a no-op, lock or not.
_FIRST_COMPLETION = update(_LP).where(_LP.c.id == bindparam("row_id"),
                                      _LP.c.completed_at.is_(None)).values(_COMPLETION)
# A late event that completed the lesson earlier than recorded: the earliest counts.
_EARLIER_COMPLETION = update(_LP).where(_LP.c.id == bindparam("row_id"),
                                        _LP.c.completed_at > bindparam("at")).values(_COMPLETION)


def _upsert(session: Session, enrollment_id: str, lesson_id: str,
            seen: Observation) -> tuple[LessonState, bool]:
    """Merge the observation into the row (creating it): the merged row, and whether this
    completed the lesson for the first time. One upsert statement on PostgreSQL and SQLite
    alike, so concurrent writers never lose an update; the caller holds the enrollment lock,
    so the completion read back is the one before this event."""
    at = seen.occurred_at
    row = session.execute(_upsert_statement(session.get_bind().dialect.name), {
        "enrollment_id": enrollment_id, "lesson_id": lesson_id, "at": at,
        "position_seconds": seen.position_seconds, "percent": seen.percent}).one()
    state = LessonState(lesson_id, row.first_viewed_at, row.last_event_at,
                        row.position_seconds, row.max_percent, row.completed_at,
                        row.completed_by)
    if seen.completes is None:
        return state, False
    params = {"row_id": row.id, "at": at, "by": seen.completes}
    if state.completed_at is None:
        done = session.execute(_FIRST_COMPLETION, params).rowcount
        if done:
            state.completed_at, state.completed_by = at, seen.completes
        return state, bool(done)
    if at < state.completed_at:
        session.execute(_EARLIER_COMPLETION, params)
        state.completed_at, state.completed_by = at, seen.completes
    return state, False


# --- the summary ------------------------------------------------------------------------------

def _summary_values() -> dict[str, Any]:
    """The summary columns as SQL over the enrollment's row: what they must be now."""
    required = (select(func.count()).select_from(_L)
                .where(_L.c.course_id == _E.c.course_id, _L.c.is_required.is_(True))
                .scalar_subquery())
    done = (select(func.count()).select_from(_LP.join(_L, _L.c.id == _LP.c.lesson_id))
            .where(_LP.c.enrollment_id == _E.c.id, _LP.c.completed_at.is_not(None),
                   _L.c.course_id == _E.c.course_id, _L.c.is_required.is_(True))
            .scalar_subquery())
    last_lesson = (select(_LP.c.lesson_id)
                   .where(_LP.c.enrollment_id == _E.c.id, _LP.c.last_event_at.is_not(None))
                   .order_by(_LP.c.last_event_at.desc(), _LP.c.id.desc()).limit(1)
                   .scalar_subquery())
    last_activity = (select(func.max(_LP.c.last_event_at))
                     .where(_LP.c.enrollment_id == _E.c.id).scalar_subquery())
    version = (select(_C.c.structure_version).where(_C.c.id == _E.c.course_id)
               .scalar_subquery())
    percent = func.coalesce((done * 100) // func.nullif(required, 0, type_=Integer), 0)
    return {"lessons_required": required, "lessons_completed": done,
            "progress_percent": percent, "structure_version": version,
            "last_lesson_id": last_lesson, "last_activity_at": last_activity,
            # Progress is not an edit of the enrollment: its version (ETag) and updated_at
            # stay as they are.
            "updated_at": _E.c.updated_at}


_SUMMARY_COLUMNS = ("lessons_required", "lessons_completed", "progress_percent",
                    "structure_version", "last_lesson_id", "last_activity_at")
_RECOMPUTE = (update(_E).where(_E.c.id.in_(bindparam("ids", expanding=True)))
              .values(**_summary_values())
              .returning(_E.c.id, _E.c.institution_id, _E.c.course_id, _E.c.user_id,
                         _E.c.status, _E.c.expires_at,
                         *[_E.c[name] for name in _SUMMARY_COLUMNS]))


def _recompute(session: Session, enrollment_ids: Sequence[str]) -> list[Any]:
    """Rewrite the summaries of the (locked) enrollments; their new rows."""
    if not enrollment_ids:
        return []
    rows = session.execute(_RECOMPUTE, {"ids": list(enrollment_ids)}).all()
    for row in rows:
        loaded = session.identity_map.get(session.identity_key(Enrollment, row.id))
        if isinstance(loaded, Enrollment):
            # Keep a loaded object in step without marking it changed.
            for name in _SUMMARY_COLUMNS:
                set_committed_value(loaded, name, getattr(row, name))
    return rows


def _finished(row: Any, now: datetime) -> bool:
    """Whether the enrollment is active, within its access, and has done every required
    lesson (a course without required lessons is never finished by progress)."""
    return (row.status == "active" and (row.expires_at is None or row.expires_at > now)
            and 0 < row.lessons_required <= row.lessons_completed)


def _complete_course(session: Session, kalpla: Any, row: Any) -> bool:
    """Complete the (locked, finished) enrollment and announce it, once."""
    if not enrollments.complete_enrollment(session, kalpla, row.id):
        return False
    kalpla.emit(session, COURSE_COMPLETED_HOOK, CourseCompleted(
        institution_id=row.institution_id, occurred_at=utcnow().isoformat(),
        enrollment_id=row.id, course_id=row.course_id, user_id=row.user_id))
    return True


def refresh_summary(session: Session, kalpla: Any, enrollment: Enrollment) -> bool:
    """Recompute the (locked) enrollment's summary and complete it when every required lesson
    is done; whether it was completed now."""
    (row,) = _recompute(session, [enrollment.id])
    return _finished(row, utcnow()) and _complete_course(session, kalpla, row)


def _only_pointers_move(enrollment: Enrollment, course: Course, newly: bool) -> bool:
    """Whether an event leaves the counts of the (locked) enrollment's summary as they are, so
    that only its last-lesson and last-activity pointers may move: it completed no lesson,
    the summary was computed against the course's lessons as this call knows them, and the
    enrollment is not a finished one still waiting to be completed."""
    return (not newly and enrollment.structure_version == course.structure_version
            and not _finished(enrollment, utcnow()))


# Progress is not an edit of the enrollment: its version (ETag) and updated_at stay.
_MOVE_POINTERS = (update(_E).where(_E.c.id == bindparam("enrollment"))
                  .values(last_lesson_id=bindparam("lesson"),
                          last_activity_at=bindparam("moment", type_=UTCDateTime()),
                          updated_at=_E.c.updated_at))


def _move_pointers(session: Session, enrollment: Enrollment, lesson_id: str,
                   state: LessonState) -> bool:
    """Set the last lesson and last activity after an event on ``lesson_id`` as the full
    recompute would (the row with the latest event, ties to the higher row id); False when
    only the full recompute can tell. Rows only grow, so the last lesson becomes this one
    when its latest event passed the stored last activity and stays when it is still
    before it; a tie with another lesson's row needs the row ids."""
    moment, last = state.last_event_at, enrollment.last_activity_at
    assert moment is not None  # every upsert sets last_event_at
    if last is not None and moment <= last:
        return moment < last or lesson_id == enrollment.last_lesson_id
    session.execute(_MOVE_POINTERS, {"enrollment": enrollment.id, "lesson": lesson_id,
                                     "moment": moment})
    set_committed_value(enrollment, "last_lesson_id", lesson_id)
    set_committed_value(enrollment, "last_activity_at", moment)
    return True


# --- recording --------------------------------------------------------------------------------

_LOCK_ENROLLMENT = (select(Enrollment)
                    .where(Enrollment.course_id == bindparam("course_id"),
                           Enrollment.user_id == bindparam("user_id"))
                    .with_for_update().execution_options(populate_existing=True))


def _locked_enrollment(session: Session, course_id: str, user_id: str) -> Enrollment | None:
    """The user's enrollment in the course, fresh and locked, if it lets them record progress
    (:func:`access.has_seat` holds for it); else None."""
    serialise_writes(session)
    enrollment = session.scalars(_LOCK_ENROLLMENT, {"course_id": course_id,
                                                    "user_id": user_id}).one_or_none()
    if enrollment is None or enrollment.status not in SEATED or (
            enrollment.expires_at is not None and enrollment.expires_at <= utcnow()):
        return None
    return enrollment


def _apply(session: Session, kalpla: Any, enrollment: Enrollment, course: Course,
           lesson: Lesson, seen: Observation) -> EventResult:
    """Merge the observation, announce a first completion, bring the summary up to date."""
    state, newly = _upsert(session, enrollment.id, lesson.id, seen)
    if newly:
        kalpla.emit(session, LESSON_COMPLETED_HOOK, LessonCompleted(
            institution_id=enrollment.institution_id, occurred_at=utcnow().isoformat(),
            lesson_id=lesson.id, course_id=lesson.course_id, user_id=enrollment.user_id,
            enrollment_id=enrollment.id))
    if (_only_pointers_move(enrollment, course, newly)
            and _move_pointers(session, enrollment, lesson.id, state)):
        return EventResult(state, Summary.of(enrollment), newly, False)
    course_completed = refresh_summary(session, kalpla, enrollment)
    return EventResult(state, Summary.of(enrollment), newly, course_completed)


def record_event(session: Session, kalpla: Any, user: User | None, lesson_id: str,
                 event: EventKind, *, position_seconds: int | None = None,
                 percent: float | None = None, occurred_at: datetime | None = None,
                 can: Callable[[str, str | None], bool] | None = None) -> EventResult:
    """Record one learning event of ``user`` on a lesson.

    Refused unless the user may read the lesson (:func:`access.can_read_lesson`) and holds an
    active (or completed) enrollment in its course: 404 when the lesson is unknown or its
    course hidden, 401 for anonymous callers, 403 with the reason otherwise, 422 when the
    event does not fit the lesson's kind. ``can`` is the caller's permission check (a
    request's honours its credential's scopes); by default the user's roles decide."""
    def _roles(permission: str, institution_id: str | None) -> bool:
        return kalpla.has_permission(session, user, permission, institution_id)

    check = can or _roles
    lesson, course = structure.visible_lesson(session, Caller(user, check), lesson_id)
    if user is None:
        raise APIError(401, "Sign in and enroll in the course to record progress.",
                       "unauthorized", headers={"WWW-Authenticate": 'Bearer realm="kalpla"'})
    # Locked first: the access decision then takes the seat from it instead of reading it.
    enrollment = _locked_enrollment(session, course.id, user.id)
    decision = access.can_read_lesson(session, kalpla, user, lesson, can=check,
                                      seated=enrollment is not None)
    if decision.outcome != "allow":
        raise APIError(403, decision.reason, decision.code or "forbidden",
                       plugin=decision.plugin or None,
                       action=dict(decision.action) if decision.action else None)
    if enrollment is None:
        raise _not_enrolled()
    seen = _observe(session, kalpla, course, lesson, event, _when(enrollment, occurred_at),
                    position_seconds, percent)
    return _apply(session, kalpla, enrollment, course, lesson, seen)


def report_lesson_completed(session: Session, kalpla: Any, *, lesson_id: str, plugin: str,
                            enrollment_id: str | None = None, user_id: str | None = None,
                            occurred_at: datetime | None = None) -> EventResult:
    """A plugin reports that a student completed one of the plugin's lessons (a quiz passed,
    a live session attended): the only way a lesson of a plugin's kind is completed.

    Name the student by ``enrollment_id`` or by ``user_id`` (their enrollment in the lesson's
    course). The lesson's kind must be one ``plugin`` contributes, the plugin must be enabled
    for the course's institution, and the enrollment active (or completed) and not expired.
    Call it inside the plugin's unit of work: ``kalpla_lesson_completed`` (first completion)
    and ``kalpla_course_completed`` fire after that commit. Idempotent: reporting again
    changes nothing but an earlier ``occurred_at``. Raises :class:`APIError` (404 unknown
    lesson or enrollment, 409 not enrolled or plugin not enabled, 422 not the plugin's kind)."""
    if (enrollment_id is None) == (user_id is None):
        raise TypeError("give either enrollment_id or user_id")
    lesson = session.get(Lesson, lesson_id)
    if lesson is None:
        raise APIError(404, f"There is no lesson {lesson_id!r}.", "not-found")
    owner = kalpla.lesson_kinds.owner(lesson.kind)
    if owner != plugin:
        raise APIError(422, f"The lesson is of kind {lesson.kind!r}, which the plugin "
                       f"{plugin!r} does not contribute.", "not-plugin-kind")
    course = session.get(Course, lesson.course_id)
    assert course is not None  # lessons.course_id is a non-null foreign key
    if plugin not in kalpla.enabled_plugins(session, course.institution_id):
        raise APIError(409, f"The plugin {plugin!r} is not enabled for the course's "
                       "institution.", "plugin-not-enabled")
    if user_id is not None:
        found = session.scalar(select(Enrollment.id).where(
            Enrollment.course_id == course.id, Enrollment.user_id == user_id))
        if found is None:
            raise APIError(404, "The user has no enrollment in the lesson's course.",
                           "not-found")
        enrollment_id = found
    assert enrollment_id is not None
    enrollment = lock_enrollment(session, enrollment_id)
    if enrollment.course_id != course.id:
        raise APIError(404, "The enrollment is not in the lesson's course.", "not-found")
    if enrollment.status not in SEATED or (
            enrollment.expires_at is not None and enrollment.expires_at <= utcnow()):
        raise APIError(409, "The enrollment is not active.", "not-enrolled")
    seen = Observation(_when(enrollment, occurred_at), completes=f"plugin:{plugin}")
    return _apply(session, kalpla, enrollment, course, lesson, seen)


# --- reading ----------------------------------------------------------------------------------

def ensure_current(session: Session, kalpla: Any, enrollment: Enrollment,
                   course: Course) -> None:
    """Recompute the summary when the course's lessons changed since it was computed."""
    if enrollment.structure_version == course.structure_version:
        return
    locked = lock_enrollment(session, enrollment.id)
    if locked.structure_version != course.structure_version:
        refresh_summary(session, kalpla, locked)


def _lines(session: Session, enrollment_id: str, course_id: str) -> list[LessonLine]:
    """Every lesson of the course in outline order with the enrollment's progress: one
    query, whatever the size of the course."""
    rows = session.execute(
        select(Lesson.id, Lesson.module_id, Lesson.title, Lesson.kind, Lesson.is_required,
               LessonProgress.id.label("progress_id"), LessonProgress.first_viewed_at,
               LessonProgress.last_event_at, LessonProgress.position_seconds,
               LessonProgress.max_percent, LessonProgress.completed_at,
               LessonProgress.completed_by)
        .join(Module, Module.id == Lesson.module_id)
        .outerjoin(LessonProgress, and_(LessonProgress.lesson_id == Lesson.id,
                                        LessonProgress.enrollment_id == enrollment_id))
        .where(Lesson.course_id == course_id)
        .order_by(Module.position, Module.id, Lesson.position, Lesson.id))
    return [LessonLine(
        row.id, row.module_id, row.title, row.kind, row.is_required,
        None if row.progress_id is None else LessonState(
            row.id, row.first_viewed_at, row.last_event_at, row.position_seconds,
            row.max_percent, row.completed_at, row.completed_by))
        for row in rows]


def resume_point(lines: Sequence[LessonLine], last_lesson_id: str | None) -> str | None:
    """Where the student goes on: the first required lesson not completed, in outline order;
    once all are done, the lesson they opened last (else the first lesson)."""
    for line in lines:
        if line.is_required and (line.state is None or not line.state.completed):
            return line.lesson_id
    if last_lesson_id is not None:
        return last_lesson_id
    return lines[0].lesson_id if lines else None


def course_progress(session: Session, kalpla: Any, enrollment: Enrollment,
                    course: Course) -> CourseProgress:
    """The enrollment's summary (recomputed first if the course changed), its progress on
    each lesson and its resume point; a bounded number of queries."""
    ensure_current(session, kalpla, enrollment, course)
    lines = _lines(session, enrollment.id, course.id)
    return CourseProgress(Summary.of(enrollment),
                          resume_point(lines, enrollment.last_lesson_id), lines)


def my_progress(session: Session, kalpla: Any, caller: Caller,
                course_id: str) -> CourseProgress:
    """The caller's own progress in a course they see; 401 anonymous, 404 when they have no
    enrollment in it."""
    if caller.user is None:
        raise APIError(401, "Authentication is required.", "unauthorized",
                       headers={"WWW-Authenticate": 'Bearer realm="kalpla"'})
    course = visible_course(session, caller, course_id)
    enrollment = enrollments.current_enrollment(session, course.id, caller.user.id)
    if enrollment is None:
        raise APIError(404, "You have no enrollment in this course.", "not-enrolled")
    enrollments.refresh(session, kalpla, [enrollment], utcnow())  # a due expiry first
    return course_progress(session, kalpla, enrollment, course)


def enrollment_progress(session: Session, kalpla: Any, caller: Caller,
                        enrollment_id: str) -> CourseProgress:
    """An enrollment's progress, for its student and the course's staff (404 to anyone else,
    as for the enrollment itself)."""
    enrollment = enrollments.readable_enrollment(session, kalpla, caller, enrollment_id)
    course = session.get(Course, enrollment.course_id)
    assert course is not None  # enrollments.course_id is a non-null foreign key
    return course_progress(session, kalpla, enrollment, course)


# --- after lessons change ---------------------------------------------------------------------

def _stale(course_id: str, version: int) -> Any:
    return select(_E.c.id).where(_E.c.course_id == course_id,
                                 _E.c.structure_version != version)


def recompute_course(session: Session, kalpla: Any, course_id: str, *,
                     limit: int | None = None) -> int:
    """Recompute the summary of every enrollment of the course computed against an older
    structure (at most ``limit`` of them, to keep a transaction short), completing those now
    finished; how many were recomputed. Idempotent: call again until it returns less than
    ``limit``."""
    version = session.scalar(select(Course.structure_version).where(Course.id == course_id))
    if version is None:
        return 0
    serialise_writes(session)
    # Locked before they are read, so an event of one of them committing meanwhile is counted.
    ids = list(session.scalars(_stale(course_id, version).order_by(_E.c.id).limit(limit)
                               .with_for_update()))
    now = utcnow()
    for row in _recompute(session, ids):
        if _finished(row, now):
            _complete_course(session, kalpla, row)
    return len(ids)


def recompute_course_in_batches(kalpla: Any, course_id: str) -> int:
    """:func:`recompute_course` in transactions of :data:`BATCH` enrollments; the total."""
    total = 0
    while True:
        with kalpla.db.session() as session:
            done = recompute_course(session, kalpla, course_id, limit=BATCH)
        total += done
        if done < BATCH:
            return total


def recompute_job(ctx: Any, course_id: str) -> dict[str, int]:
    """Background job :data:`RECOMPUTE_JOB`: recompute a big course's summaries."""
    return {"recomputed": recompute_course_in_batches(ctx.app.extensions["kalpla"], course_id)}


def register_progress_jobs(kalpla: Any) -> None:
    kalpla.jobs.register("core", RECOMPUTE_JOB, recompute_job)


def on_lesson_changed(kalpla: Any, course_id: str) -> None:
    """After a lesson of the course changed: recompute the summaries it made stale, here when
    there are few, else in a background job (reads recompute lazily meanwhile). Called by
    the core's ``kalpla_lesson_changed`` implementation, once per lesson changed; all but the
    first find nothing stale."""
    with kalpla.db.session() as session:
        course = session.get(Course, course_id)
        if course is None:
            return  # deleted since
        stale = session.scalar(select(func.count()).select_from(
            _stale(course_id, course.structure_version).limit(INLINE_LIMIT + 1).subquery()))
        if stale and stale > INLINE_LIMIT:
            _enqueue_recompute(session, kalpla, course)
            return
    if stale:
        recompute_course_in_batches(kalpla, course_id)


def _enqueue_recompute(session: Session, kalpla: Any, course: Course) -> None:
    from kalpla_core.jobs.models import Job

    queued = session.scalars(select(Job.params).where(
        Job.name == RECOMPUTE_JOB, Job.status == "queued",
        Job.institution_id == course.institution_id))
    if any(params.get("course_id") == course.id for params in queued):
        return
    kalpla.jobs.enqueue(session, RECOMPUTE_JOB, {"course_id": course.id},
                        institution_id=course.institution_id)
