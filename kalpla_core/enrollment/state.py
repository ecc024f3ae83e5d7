"""Enrollment status changes and the course lock they happen under. No Flask here.

Every change of an enrollment's status goes through :func:`change_status`, which stamps the
moment, keeps ``courses.enrollment_count`` exact and queues
``kalpla_enrollment_status_changed`` for after the commit. A change that seats or unseats
someone happens while the course row is locked (:func:`lock_course`), so two transactions
never both take the last seat.

Lock order, to stay free of deadlocks: the course row first, then enrollment rows.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from kalpla_core.contract import EnrollmentCreated, EnrollmentStatusChanged
from kalpla_core.courses import catalog
from kalpla_core.courses.models import Course
from kalpla_core.enrollment.models import SEATED, Enrollment
from kalpla_core.http.problems import APIError

CREATED_HOOK = "kalpla_enrollment_created"
STATUS_HOOK = "kalpla_enrollment_status_changed"


def _begin_immediate(session: Session) -> None:
    """On SQLite, make the session's transaction a write transaction now (waiting for the
    busy timeout), unless it already is one. SQLite runs one writer at a time, so from here to
    the commit nobody else changes what this transaction reads: BEGIN IMMEDIATE semantics.
    (The driver opens a transaction only at the first write; reads before it are not part of
    one, which is why nothing read earlier can be trusted.)"""
    connection = session.connection()
    raw = connection.connection.driver_connection
    if raw is not None and not raw.in_transaction:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def serialise_writes(session: Session) -> None:
    """Make what this transaction reads next safe to act on: a no-op on databases with row
    locks, BEGIN IMMEDIATE on SQLite."""
    if session.get_bind().dialect.name == "sqlite":
        _begin_immediate(session)


def lock_course(session: Session, course_id: str) -> Course:
    """The course, fresh from the database and locked against other enrollment writers until
    the transaction ends (``SELECT … FOR UPDATE``; on SQLite, the database write lock)."""
    serialise_writes(session)
    course = session.scalars(select(Course).where(Course.id == course_id).with_for_update()
                             .execution_options(populate_existing=True)).one_or_none()
    if course is None:
        raise APIError(404, f"There is no course {course_id!r}.", "not-found")
    return course


def lock_enrollment(session: Session, enrollment_id: str) -> Enrollment:
    """The enrollment, fresh and locked (take the course lock first when seats may change)."""
    serialise_writes(session)
    enrollment = session.scalars(
        select(Enrollment).where(Enrollment.id == enrollment_id).with_for_update()
        .execution_options(populate_existing=True)).one_or_none()
    if enrollment is None:
        raise APIError(404, "There is no such enrollment.", "not-found")
    return enrollment


def seated_count(session: Session, course_id: str) -> int:
    return session.scalar(select(func.count()).select_from(Enrollment).where(
        Enrollment.course_id == course_id, Enrollment.status.in_(SEATED))) or 0


def sync_enrollment_count(session: Session, course: Course) -> None:
    """Set ``courses.enrollment_count`` to the number of seated enrollments (the course is
    locked by the caller). The course's ``version`` is left alone: the count is not an edit,
    and bumping it would turn every enrollment into a 412 for the course's editors."""
    count = seated_count(session, course.id)
    session.execute(update(Course).where(Course.id == course.id)
                    .values(enrollment_count=count, updated_at=Course.updated_at)
                    .execution_options(synchronize_session=False))
    catalog.sync_enrollment_count(session, course.id, count)  # the catalog's copies
    # Keep the loaded object in step without marking it changed.
    set_committed_value(course, "enrollment_count", count)


def _stamp(enrollment: Enrollment, course: Course, status: str, now: datetime) -> None:
    if enrollment.status == "pending" and status != "pending":
        enrollment.pending_plugin = enrollment.pending_reason = None
        enrollment.pending_action = None
    if enrollment.status == "waitlisted" and status != "waitlisted":
        enrollment.offer_expires_at = None
    if status == "active":
        enrollment.activated_at = now
        enrollment.expires_at = (now + timedelta(days=course.access_days)
                                 if course.access_days else None)
    elif status == "completed":
        enrollment.completed_at = now
    elif status == "dropped":
        enrollment.dropped_at = now
    elif status == "waitlisted":
        enrollment.waitlisted_at = now
        enrollment.offer_expires_at = None


def change_status(session: Session, kalpla: Any, course: Course, enrollment: Enrollment,
                  status: str, now: datetime, reason: str = "") -> None:
    """Move ``enrollment`` (possibly new, without a status yet) to ``status``.

    An existing enrollment announces the change after the commit; a new one is announced by
    :func:`announce_created` once it is added. When the move seats or unseats someone the
    caller must hold the course lock."""
    old = enrollment.status
    if old == status:
        return
    _stamp(enrollment, course, status, now)
    enrollment.status = status
    if (old in SEATED) != (status in SEATED) and enrollment in session:
        session.flush()
        sync_enrollment_count(session, course)
    if old is not None:
        kalpla.emit(session, STATUS_HOOK, EnrollmentStatusChanged(
            institution_id=enrollment.institution_id, occurred_at=now.isoformat(),
            enrollment_id=enrollment.id, course_id=enrollment.course_id,
            user_id=enrollment.user_id, old_status=old, new_status=status, reason=reason))


def announce_created(session: Session, kalpla: Any, course: Course, enrollment: Enrollment,
                     now: datetime) -> None:
    """Flush a new enrollment, count its seat, and queue ``kalpla_enrollment_created``."""
    session.flush()
    if enrollment.status in SEATED:
        sync_enrollment_count(session, course)
    kalpla.emit(session, CREATED_HOOK, EnrollmentCreated(
        institution_id=enrollment.institution_id, occurred_at=now.isoformat(),
        enrollment_id=enrollment.id, course_id=enrollment.course_id,
        user_id=enrollment.user_id, status=enrollment.status))
