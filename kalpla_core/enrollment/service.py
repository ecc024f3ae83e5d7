"""Enrollment: joining a course, the enrollment gate, the moves between statuses, expiry and
the rosters. No Flask here.

Statuses: ``pending`` (held by a plugin's gate, e.g. until paid), ``active``, ``completed``,
``dropped``, ``expired`` and ``waitlisted``. A user has at most one enrollment per course: one
who dropped out, or whose access expired, enrolls again on the same row.

Enrolling checks, in order: the course is published (a draft the caller may not see is a 404),
the enrollment window and the prerequisites (both for self-enrollment; staff who enroll someone
decide for themselves), and that the user is not enrolled already. Then the
``kalpla_enrollment_requested`` gate of the plugins enabled for the course's institution
answers: deny (403, nothing written), pending (the enrollment waits with the plugin's action
for the client) or allow, after which capacity decides between a seat and the waitlist.

Plugins move a pending enrollment on with :func:`activate_pending` and :func:`reject_pending`;
progress completes one with :func:`complete_enrollment`. Every change announces itself after
the commit (``kalpla_enrollment_created``, ``kalpla_enrollment_status_changed``).

Access runs out at ``expires_at`` (``activated_at`` + the course's ``access_days``): an active
enrollment past it is ``expired``, applied when it is read and by :func:`expire_enrollments`
(``kalpla enrollments expire``). A completed enrollment keeps its status, the record of the
completion, though its access ends all the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kalpla_core.contract import Decision, EnrollmentRequest
from kalpla_core.courses.models import Course, CoursePrerequisite
from kalpla_core.courses.service import Caller, is_staff, visible_course
from kalpla_core.db import utcnow
from kalpla_core.enrollment import waitlist
from kalpla_core.enrollment.models import ENROLLMENT_STATUSES, Enrollment
from kalpla_core.enrollment.state import (
    announce_created,
    change_status,
    lock_course,
    lock_enrollment,
)
from kalpla_core.http.problems import APIError
from kalpla_core.identity.models import User
from kalpla_core.identity.permissions import roles_of

MANAGE = "enrollment.manage"
GATE = "kalpla_enrollment_requested"
SOURCES = ("self", "staff", "bulk", "subscription")
# An enrollment in one of these statuses stands: enrolling again is refused.
STANDING = ("pending", "active", "completed", "waitlisted")
# From these a student may leave (drop out, or be dropped).
DROPPABLE = ("pending", "active", "waitlisted")

REENROLLED = "Enrolled again."
EXPIRED = "Access to the course ran out."


def _unauthenticated() -> APIError:
    return APIError(401, "Authentication is required.", "unauthorized",
                    headers={"WWW-Authenticate": 'Bearer realm="kalpla"'})


def _not_found() -> APIError:
    return APIError(404, "There is no such enrollment.", "not-found")


def _invalid_state(enrollment: Enrollment, doing: str) -> APIError:
    return APIError(409, f"A {enrollment.status} enrollment cannot be {doing}.",
                    "invalid-state", enrollment_status=enrollment.status)


# --- rights -------------------------------------------------------------------------------

def can_manage(session: Session, caller: Caller, course: Course) -> bool:
    """Whether the caller enrolls others in the course, reads its roster and drops its
    students: its staff (instructors, the institution's admins) holding ``enrollment.manage``."""
    return (caller.user is not None and caller.can(MANAGE, course.institution_id)
            and is_staff(session, caller, course))


def managed_course(session: Session, caller: Caller, course_id: str) -> Course:
    """The course if the caller manages its enrollments: 404 when they may not see it,
    401 when anonymous, 403 otherwise."""
    course = visible_course(session, caller, course_id)
    if caller.user is None:
        raise _unauthenticated()
    if not can_manage(session, caller, course):
        raise APIError(403, "Only the course's instructors and the institution's admins "
                       "manage its enrollments.", "forbidden")
    return course


def readable_enrollment(session: Session, kalpla: Any, caller: Caller, enrollment_id: str,
                        now: datetime | None = None) -> Enrollment:
    """The enrollment, for its student or the course's staff (404 for anyone else, so that
    enrollments of others stay unknown); a due expiry is applied first."""
    if caller.user is None:
        raise _unauthenticated()
    enrollment = session.get(Enrollment, enrollment_id)
    if enrollment is None:
        raise _not_found()
    if enrollment.user_id != caller.user.id:
        course = session.get(Course, enrollment.course_id)
        if course is None or not can_manage(session, caller, course):
            raise _not_found()
    refresh(session, kalpla, [enrollment], now or utcnow())
    return enrollment


# --- enrolling ----------------------------------------------------------------------------

def current_enrollment(session: Session, course_id: str, user_id: str) -> Enrollment | None:
    return session.scalar(select(Enrollment).where(Enrollment.course_id == course_id,
                                                   Enrollment.user_id == user_id))


def _is_due(enrollment: Enrollment, now: datetime) -> bool:
    """Whether an expiry (of access, or of a seat offer) has come and not been applied."""
    if enrollment.status == "active":
        return enrollment.expires_at is not None and enrollment.expires_at <= now
    if enrollment.status == "waitlisted":
        return (enrollment.offer_expires_at is not None
                and enrollment.offer_expires_at <= now)
    return False


def _already_enrolled(enrollment: Enrollment) -> APIError:
    return APIError(409, f"The user is already enrolled in this course ({enrollment.status}).",
                    "already-enrolled", enrollment_id=enrollment.id,
                    enrollment_status=enrollment.status)


def check_published(course: Course) -> None:
    if course.status == "draft":
        raise APIError(409, "The course is not published yet.", "course-not-published")
    if course.status == "archived":
        raise APIError(409, "The course is archived; it takes no new enrollments.",
                       "course-archived")


def _check_window(course: Course, now: datetime) -> None:
    if course.enrollment_opens_at is not None and now < course.enrollment_opens_at:
        raise APIError(409, "Enrollment opens at "
                       f"{course.enrollment_opens_at.isoformat()}.", "enrollment-not-open",
                       opens_at=course.enrollment_opens_at.isoformat())
    if course.enrollment_closes_at is not None and now >= course.enrollment_closes_at:
        raise APIError(409, "Enrollment closed at "
                       f"{course.enrollment_closes_at.isoformat()}.", "enrollment-closed",
                       closed_at=course.enrollment_closes_at.isoformat())


def missing_prerequisites(session: Session, course: Course, user_id: str) -> list[Course]:
    """The courses ``course`` requires that the user has not completed, by title."""
    required = select(CoursePrerequisite.required_course_id).where(
        CoursePrerequisite.course_id == course.id)
    done = select(Enrollment.course_id).where(Enrollment.user_id == user_id,
                                              Enrollment.status == "completed")
    return list(session.scalars(select(Course).where(
        Course.id.in_(required), Course.id.not_in(done)).order_by(Course.title, Course.id)))


def _check_prerequisites(session: Session, course: Course, user_id: str) -> None:
    missing = missing_prerequisites(session, course, user_id)
    if missing:
        raise APIError(403, "Complete these courses first: "
                       + ", ".join(c.title for c in missing) + ".", "prerequisites-missing",
                       missing=[{"id": c.id, "title": c.title} for c in missing])


def _target(session: Session, course: Course, user_id: str, by_staff: bool) -> User:
    """The user to enroll: an active member of the course's institution (platform admins
    need no membership)."""
    user = session.get(User, user_id)
    if user is None or user.deleted_at is not None or not user.is_active:
        if by_staff:
            raise APIError(422, "The request has invalid fields; see errors.", "validation",
                           errors={"user_id": ["There is no such active user."]})
        raise _unauthenticated()
    if not user.is_platform_admin and not roles_of(session, user.id, course.institution_id):
        if by_staff:
            raise APIError(422, "The request has invalid fields; see errors.", "validation",
                           errors={"user_id": ["The user is not a member of the course's "
                                               "institution; add them first."]})
        raise APIError(403, "Only members of the course's institution enroll in it.",
                       "not-a-member")
    return user


def ask_gate(session: Session, kalpla: Any, request: EnrollmentRequest) -> Decision:
    """The answer of the ``kalpla_enrollment_requested`` gate of the plugins enabled for the
    request's institution."""
    enabled = kalpla.enabled_plugins(session, request.institution_id)
    return kalpla.plugins.gate(GATE, enabled, session=session, request=request)


def enroll(session: Session, kalpla: Any, caller: Caller, course_id: str,
           user_id: str | None = None, *, source: str | None = None,
           now: datetime | None = None) -> Enrollment:
    """Enroll the caller (``user_id`` None or their own id) or, for the course's staff,
    another member. Answers the enrollment: ``pending``, ``active`` or ``waitlisted``."""
    clock = now
    now = clock or utcnow()
    if caller.user is None:
        raise _unauthenticated()
    course = visible_course(session, caller, course_id)
    target_id = user_id or caller.user.id
    by_staff = target_id != caller.user.id or source not in (None, "self")
    source = source or ("staff" if by_staff else "self")
    if source not in SOURCES:
        raise ValueError(f"unknown enrollment source {source!r}")
    if by_staff and not can_manage(session, caller, course):
        raise APIError(403, "Only the course's instructors and the institution's admins "
                       "enroll others.", "forbidden")
    check_published(course)
    _target(session, course, target_id, by_staff)
    if not by_staff:
        _check_window(course, now)
        _check_prerequisites(session, course, target_id)
    existing = current_enrollment(session, course.id, target_id)
    if existing is not None and existing.status in STANDING and not _is_due(existing, now):
        raise _already_enrolled(existing)

    decision = ask_gate(session, kalpla, EnrollmentRequest(
        institution_id=course.institution_id, course_id=course.id, user_id=target_id,
        requested_by=caller.user.id, source=source))
    if decision.outcome == "deny":
        raise APIError(403, decision.reason or "The enrollment was refused.",
                       decision.code or "enrollment-denied", plugin=decision.plugin)

    # Everything above may have raced with another request for the same user or seat; from
    # here on the course is locked, so what is read again below holds until the commit.
    course = lock_course(session, course.id)
    # Stamps are taken once the lock is held, so the waitlist's order is the order in which
    # requests were served and a position once answered stays right.
    now = clock or utcnow()
    existing = current_enrollment(session, course.id, target_id)
    if existing is not None:
        existing = lock_enrollment(session, existing.id)
        if existing.status == "active" and _is_due(existing, now):
            change_status(session, kalpla, course, existing, "expired", now, EXPIRED)
            waitlist.fill_seats(session, kalpla, course, now)
        elif existing.status == "waitlisted" and _is_due(existing, now):
            waitlist.fill_seats(session, kalpla, course, now)  # drops it: its offer ran out
        if existing.status in STANDING:
            raise _already_enrolled(existing)

    if decision.outcome == "pending":
        status = "pending"
    else:
        status = "active" if waitlist.seat_available(session, kalpla, course, now) \
            else "waitlisted"
    enrollment = existing or Enrollment(institution_id=course.institution_id,
                                        course_id=course.id, user_id=target_id)
    enrollment.source = source
    enrollment.enrolled_by = caller.user.id if by_staff else None
    # A row enrolled again starts over; its progress rows stay, for the progress engine.
    enrollment.activated_at = enrollment.expires_at = None
    enrollment.completed_at = enrollment.dropped_at = None
    change_status(session, kalpla, course, enrollment, status, now, REENROLLED)
    if status == "pending":
        enrollment.pending_plugin = decision.plugin or None
        enrollment.pending_reason = (decision.reason or "")[:500] or None
        enrollment.pending_action = dict(decision.action) if decision.action else None
    if existing is None:
        session.add(enrollment)
        try:
            announce_created(session, kalpla, course, enrollment, now)
        except IntegrityError:  # cannot happen under the course lock; kept as a safety net
            raise APIError(409, "The user is already enrolled in this course.",
                           "already-enrolled") from None
    else:
        session.flush()
    return enrollment


# --- moving an enrollment on ----------------------------------------------------------------

def _locked(session: Session, enrollment_id: str) -> tuple[Course, Enrollment]:
    """The enrollment's course and the enrollment, both locked, in that order."""
    found = session.get(Enrollment, enrollment_id)
    if found is None:
        raise _not_found()
    course = lock_course(session, found.course_id)
    return course, lock_enrollment(session, enrollment_id)


def activate_pending(session: Session, kalpla: Any, enrollment_id: str, *,
                     plugin: str | None = None, now: datetime | None = None) -> Enrollment:
    """pending → active, or waitlisted when the course is full (a plugin calls this once the
    student did what it asked, e.g. paid). Idempotent: an enrollment already active,
    waitlisted or completed is answered as it is. A plugin naming itself may only move the
    enrollments it holds."""
    course, enrollment = _locked(session, enrollment_id)
    now = now or utcnow()
    if enrollment.status in ("active", "waitlisted", "completed"):
        return enrollment
    if enrollment.status != "pending":
        raise _invalid_state(enrollment, "activated")
    _check_holder(enrollment, plugin)
    status = "active" if waitlist.seat_available(session, kalpla, course, now) else "waitlisted"
    change_status(session, kalpla, course, enrollment, status, now,
                  f"Approved by {plugin}." if plugin else "Approved.")
    session.flush()
    return enrollment


def reject_pending(session: Session, kalpla: Any, enrollment_id: str, reason: str, *,
                   plugin: str | None = None, now: datetime | None = None) -> Enrollment:
    """pending → dropped, with the reason (a payment failed, say). Idempotent on a dropped
    enrollment."""
    course, enrollment = _locked(session, enrollment_id)
    now = now or utcnow()
    if enrollment.status == "dropped":
        return enrollment
    if enrollment.status != "pending":
        raise _invalid_state(enrollment, "rejected")
    _check_holder(enrollment, plugin)
    change_status(session, kalpla, course, enrollment, "dropped", now, reason)
    session.flush()
    return enrollment


def _check_holder(enrollment: Enrollment, plugin: str | None) -> None:
    if plugin and enrollment.pending_plugin and plugin != enrollment.pending_plugin:
        raise APIError(409, f"The enrollment waits on plugin {enrollment.pending_plugin!r}, "
                       f"not {plugin!r}.", "pending-elsewhere")


def drop_enrollment(session: Session, kalpla: Any, enrollment_id: str, reason: str = "", *,
                    now: datetime | None = None) -> Enrollment:
    """pending, active or waitlisted → dropped; a freed seat (or a held offer) goes to the
    next waitlisted student. Dropping a dropped or expired enrollment changes nothing; a
    completed one is kept (409)."""
    course, enrollment = _locked(session, enrollment_id)
    now = now or utcnow()
    if enrollment.status in ("dropped", "expired"):
        return enrollment
    if enrollment.status not in DROPPABLE:
        raise _invalid_state(enrollment, "dropped")
    change_status(session, kalpla, course, enrollment, "dropped", now, reason or "Dropped.")
    waitlist.fill_seats(session, kalpla, course, now)
    session.flush()
    return enrollment


def complete_enrollment(session: Session, kalpla: Any, enrollment_id: str, *,
                        now: datetime | None = None) -> bool:
    """active → completed, for the progress engine once every required lesson is done.
    True when this call completed it, False when it was completed already: the caller fires
    ``kalpla_course_completed`` on True only, so it fires once. This emits
    ``kalpla_enrollment_status_changed``. Other statuses are a 409.

    The course is not locked (completing keeps the seat), so progress may hold locks on the
    enrollment's rows when it calls this."""
    enrollment = lock_enrollment(session, enrollment_id)
    now = now or utcnow()
    if enrollment.status == "completed":
        return False
    if enrollment.status != "active" or _is_due(enrollment, now):
        raise _invalid_state(enrollment, "completed")
    course = session.get(Course, enrollment.course_id)
    assert course is not None  # enrollments.course_id is a non-null foreign key
    change_status(session, kalpla, course, enrollment, "completed", now,
                  "Every required lesson is done.")
    session.flush()
    return True


# --- expiry ---------------------------------------------------------------------------------

def refresh(session: Session, kalpla: Any, enrollments: Sequence[Enrollment],
            now: datetime) -> None:
    """Apply the expiries that came due among ``enrollments`` (access ran out, seat offer
    ran out), so a reader never sees a stale status. The objects are updated in place."""
    for course_id in sorted({e.course_id for e in enrollments if _is_due(e, now)}):
        _expire_course(session, kalpla, course_id, now)


def _expire_course(session: Session, kalpla: Any, course_id: str, now: datetime) -> int:
    course = lock_course(session, course_id)
    due = session.scalars(select(Enrollment).where(
        Enrollment.course_id == course_id, Enrollment.status == "active",
        Enrollment.expires_at <= now).order_by(Enrollment.id).with_for_update()
        .execution_options(populate_existing=True))
    expired = 0
    for enrollment in due:
        change_status(session, kalpla, course, enrollment, "expired", now, EXPIRED)
        expired += 1
    waitlist.fill_seats(session, kalpla, course, now)  # also passes on offers that ran out
    session.flush()
    return expired


def expire_enrollments(session: Session, kalpla: Any, now: datetime | None = None) -> int:
    """Expire every active enrollment whose access ran out by ``now``, offering the freed
    seats to waitlisted students; returns how many expired. Run periodically
    (``kalpla enrollments expire``)."""
    now = now or utcnow()
    courses = session.scalars(select(Enrollment.course_id).distinct().where(
        Enrollment.status == "active", Enrollment.expires_at <= now))
    return sum(_expire_course(session, kalpla, cid, now) for cid in sorted(courses))


def refresh_due(session: Session, kalpla: Any, now: datetime, *, course_id: str | None = None,
                user_id: str | None = None) -> None:
    """Apply the expiries due in a course or for a user, before listing them."""
    stmt = select(Enrollment).where(or_(
        and_(Enrollment.status == "active", Enrollment.expires_at <= now),
        and_(Enrollment.status == "waitlisted", Enrollment.offer_expires_at <= now)))
    if course_id is not None:
        stmt = stmt.where(Enrollment.course_id == course_id)
    if user_id is not None:
        stmt = stmt.where(Enrollment.user_id == user_id)
    refresh(session, kalpla, list(session.scalars(stmt)), now)


# --- listings -------------------------------------------------------------------------------

def _check_status(status: str | None) -> None:
    if status is not None and status not in ENROLLMENT_STATUSES:
        raise ValueError(f"unknown enrollment status {status!r}")


def roster(course_id: str, status: str | None = None) -> tuple[Select[Any], list[Any]]:
    """The course's enrollments and their keyset order, read from one index: by status then
    id; the waitlist in its order; other statuses by id."""
    _check_status(status)
    stmt = select(Enrollment).where(Enrollment.course_id == course_id)
    if status is None:
        return stmt, [(Enrollment.status, "asc"), (Enrollment.id, "asc")]
    stmt = stmt.where(Enrollment.status == status)
    if status == "waitlisted":
        return stmt, [(Enrollment.waitlisted_at, "asc"), (Enrollment.id, "asc")]
    return stmt, [(Enrollment.id, "asc")]


def my_enrollments(user_id: str, status: str | None = None) -> tuple[Select[Any], list[Any]]:
    """A user's enrollments, newest first."""
    _check_status(status)
    stmt = select(Enrollment).where(Enrollment.user_id == user_id)
    if status is not None:
        stmt = stmt.where(Enrollment.status == status)
    return stmt, [(Enrollment.created_at, "desc"), (Enrollment.id, "desc")]


def users_of(session: Session, enrollments: Sequence[Enrollment]) -> dict[str, User]:
    ids = {e.user_id for e in enrollments}
    if not ids:
        return {}
    return {u.id: u for u in session.scalars(select(User).where(User.id.in_(ids)))}
