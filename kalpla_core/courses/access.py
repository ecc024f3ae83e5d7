"""May this user read this lesson's body and file? The one answer every content route and
plugin asks for. No Flask here.

The core's rules, in order:
1. the course's staff (its instructors, the institution's admins, platform admins) read
   every lesson, whatever the course's state;
2. nobody else reads a lesson of a draft (``course-not-published``);
3. anyone reads a free preview of a published course;
4. a user with an active or completed enrollment that has not expired reads every lesson of
   the course, published or archived;
5. everyone else is refused (``not-enrolled``).
What the core allows (but for staff) is then put to the ``kalpla_lesson_access`` gate of the
plugins enabled for the course's institution, which may only narrow it. Staff skip the gate:
they author the lesson, and a plugin that gates learners must not lock them out of it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from kalpla_core.contract import Decision, LessonAccessRequest
from kalpla_core.courses import service
from kalpla_core.courses.models import Course, Lesson
from kalpla_core.db import utcnow
from kalpla_core.enrollment.models import SEATED, Enrollment
from kalpla_core.identity.models import User

GATE = "kalpla_lesson_access"


def has_seat(session: Session, user_id: str, course_id: str) -> bool:
    """Whether the user holds an active or completed enrollment in the course that has not
    expired (an expiry not yet applied by the enrollment service counts as expired)."""
    return session.scalar(select(Enrollment.id).where(
        Enrollment.course_id == course_id, Enrollment.user_id == user_id,
        Enrollment.status.in_(SEATED),
        or_(Enrollment.expires_at.is_(None), Enrollment.expires_at > utcnow()))) is not None


def can_read_lesson(session: Session, kalpla: Any, user: User | None, lesson: Lesson, *,
                    can: Callable[[str, str | None], bool] | None = None,
                    seated: bool | None = None) -> Decision:
    """The decision for ``user`` (None: anonymous) reading ``lesson``'s body and file.

    ``can(permission, institution_id)`` is the caller's permission check; a request passes
    its own, which also honours the scopes of the credential used. By default the user's
    roles decide. ``seated`` is :func:`has_seat` for the user and the lesson's course when the
    caller has just read it (progress holds the enrollment locked), sparing a second read;
    by default it is read here."""
    if user is not None and not user.is_active:
        user = None
    course = session.get(Course, lesson.course_id)
    assert course is not None  # lessons.course_id is a non-null foreign key

    def _roles(permission: str, institution_id: str | None) -> bool:
        return kalpla.has_permission(session, user, permission, institution_id)

    caller = service.Caller(user, can or _roles)
    if service.is_staff(session, caller, course):
        return Decision.allow()
    if course.status == "draft":
        return Decision.deny("The course is not published.", "course-not-published")
    preview = course.status == "published" and lesson.is_preview
    if not preview and (user is None or not (
            has_seat(session, user.id, course.id) if seated is None else seated)):
        if course.status == "archived":
            reason = "The course is archived; only its enrolled students read its lessons."
        elif user is None:
            reason = "Sign in and enroll in the course to read this lesson."
        else:
            reason = "Enroll in the course to read this lesson."
        return Decision.deny(reason, "not-enrolled")
    enabled = kalpla.enabled_plugins(session, course.institution_id)
    return kalpla.plugins.gate(GATE, enabled, session=session, request=LessonAccessRequest(
        institution_id=course.institution_id, course_id=course.id, lesson_id=lesson.id,
        user_id=user.id if user else None))
