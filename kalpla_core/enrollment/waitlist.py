"""Capacity and the waitlist. No Flask here.

A course with a ``capacity`` never seats more students than it has seats. A seat is taken by
an active or completed enrollment, and held for a waitlisted student with an open offer. When
the course is full, students wait in the order of ``waitlisted_at, id``; a freed seat is offered
to the next one, who has ``waitlist_offer_hours`` (an institution setting, default 48) to
accept it. An offer not accepted in time passes on: its holder is dropped, and the seat is
offered to the next student.

Functions here expect the caller to hold the course lock (:func:`state.lock_course`) unless
they say otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session, aliased

from kalpla_core.courses.models import Course
from kalpla_core.enrollment.models import Enrollment
from kalpla_core.enrollment.state import change_status, lock_course, lock_enrollment, seated_count
from kalpla_core.http.problems import APIError
from kalpla_core.identity.models import User
from kalpla_core.institutions.models import Institution
from kalpla_core.mail.service import send_mail

OFFER_HOURS_SETTING = "waitlist_offer_hours"
DEFAULT_OFFER_HOURS = 48
OFFER_EXPIRED = "The seat offer expired before it was accepted."
OFFER_ACCEPTED = "The seat offer was accepted."


def offer_hours(session: Session, institution_id: str) -> int:
    """How long an offered seat is held: the institution's ``waitlist_offer_hours`` setting
    (a positive whole number), else 48."""
    settings = session.scalar(select(Institution.settings)
                              .where(Institution.id == institution_id)) or {}
    value = settings.get(OFFER_HOURS_SETTING)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return DEFAULT_OFFER_HOURS


def open_offers(session: Session, course_id: str, now: datetime) -> int:
    """Seats held for waitlisted students whose offer still runs."""
    return session.scalar(select(func.count()).select_from(Enrollment).where(
        Enrollment.course_id == course_id, Enrollment.status == "waitlisted",
        Enrollment.offer_expires_at > now)) or 0


def free_seats(session: Session, course: Course, now: datetime) -> int | None:
    """Seats nobody takes or holds; None when the course has no capacity."""
    if course.capacity is None:
        return None
    taken = seated_count(session, course.id) + open_offers(session, course.id, now)
    return max(0, course.capacity - taken)


@dataclass
class Refill:
    """What :func:`fill_seats` did: offers passed on (their holders dropped), offers made."""

    passed_on: list[Enrollment] = field(default_factory=list)
    offered: list[Enrollment] = field(default_factory=list)


def _waiting_in_order(course_id: str) -> Any:
    return (select(Enrollment)
            .where(Enrollment.course_id == course_id, Enrollment.status == "waitlisted")
            .order_by(Enrollment.waitlisted_at, Enrollment.id))


def fill_seats(session: Session, kalpla: Any, course: Course, now: datetime) -> Refill:
    """Pass on the offers that expired, then offer each free seat to the next student who
    waits without an offer (every one of them when the course has no capacity)."""
    refill = Refill()
    expired = _waiting_in_order(course.id).where(Enrollment.offer_expires_at <= now)
    for enrollment in session.scalars(expired.with_for_update()):
        change_status(session, kalpla, course, enrollment, "dropped", now, OFFER_EXPIRED)
        refill.passed_on.append(enrollment)
    free = free_seats(session, course, now)
    if free == 0:
        return refill
    waiting = _waiting_in_order(course.id).where(Enrollment.offer_expires_at.is_(None))
    if free is not None:
        waiting = waiting.limit(free)
    refill.offered = list(session.scalars(waiting.with_for_update()))
    if refill.offered:
        until = now + timedelta(hours=offer_hours(session, course.institution_id))
        for enrollment in refill.offered:
            enrollment.offer_expires_at = until
        session.flush()
        _mail_offers(session, kalpla, course, refill.offered, until)
    return refill


def _mail_offers(session: Session, kalpla: Any, course: Course,
                 offered: Sequence[Enrollment], until: datetime) -> None:
    users = {u.id: u for u in session.scalars(
        select(User).where(User.id.in_([e.user_id for e in offered])))}
    for enrollment in offered:
        user = users.get(enrollment.user_id)
        if user is None or user.deleted_at is not None:
            continue
        send_mail(session, kalpla, user.email, "enrollment_offer", name=user.name,
                  course=course.title, enrollment_id=enrollment.id,
                  expires_at=until.strftime("%Y-%m-%d %H:%M UTC"),
                  link=f"{kalpla.settings.base_url}/courses/{course.id}")


def seat_available(session: Session, kalpla: Any, course: Course, now: datetime) -> bool:
    """Whether a newcomer gets a seat now. Students already waiting come first: free seats
    are offered to them before a newcomer may take one."""
    fill_seats(session, kalpla, course, now)
    free = free_seats(session, course, now)
    return free is None or free > 0


def accept_offer(session: Session, kalpla: Any, enrollment: Enrollment,
                 now: datetime) -> Enrollment:
    """Seat a waitlisted student who holds an open offer (accepting twice answers the active
    enrollment). Call it before ``session`` writes anything: an offer found expired is passed
    on in a unit of work of its own, committed although the answer is an error (409)."""
    if (enrollment.status == "waitlisted" and enrollment.offer_expires_at is not None
            and enrollment.offer_expires_at <= now):
        with kalpla.db.session() as own:
            expire_offers(own, kalpla, now, course_id=enrollment.course_id)
        raise APIError(409, OFFER_EXPIRED + " The seat went to the next student; enroll "
                       "again to rejoin the waitlist.", "offer-expired")
    course = lock_course(session, enrollment.course_id)
    enrollment = lock_enrollment(session, enrollment.id)
    if enrollment.status == "active":
        return enrollment
    if enrollment.status != "waitlisted" or enrollment.offer_expires_at is None:
        raise APIError(409, "This enrollment holds no seat offer.", "no-offer",
                       enrollment_status=enrollment.status)
    if enrollment.offer_expires_at <= now:  # it ran out while we waited for the lock
        raise APIError(409, OFFER_EXPIRED, "offer-expired")
    change_status(session, kalpla, course, enrollment, "active", now, OFFER_ACCEPTED)
    return enrollment


def expire_offers(session: Session, kalpla: Any, now: datetime,
                  course_id: str | None = None) -> int:
    """Pass on every offer that expired by ``now`` (of one course, or all); returns how many.
    Takes the course locks itself. Run periodically (``kalpla enrollments expire``)."""
    stmt = (select(Enrollment.course_id).distinct()
            .where(Enrollment.status == "waitlisted", Enrollment.offer_expires_at <= now))
    if course_id is not None:
        stmt = stmt.where(Enrollment.course_id == course_id)
    passed = 0
    for cid in sorted(session.scalars(stmt)):
        course = lock_course(session, cid)
        passed += len(fill_seats(session, kalpla, course, now).passed_on)
    return passed


def positions(session: Session, enrollments: Sequence[Enrollment]) -> dict[str, int]:
    """The place in its course's waitlist (1 = next) of each waitlisted enrollment given,
    in one query."""
    ids = [e.id for e in enrollments if e.status == "waitlisted"]
    if not ids:
        return {}
    ahead = aliased(Enrollment)
    place = (select(func.count()).select_from(ahead).where(
        ahead.course_id == Enrollment.course_id, ahead.status == "waitlisted",
        or_(ahead.waitlisted_at < Enrollment.waitlisted_at,
            and_(ahead.waitlisted_at == Enrollment.waitlisted_at, ahead.id <= Enrollment.id)))
        .correlate(Enrollment).scalar_subquery())
    return {eid: int(n) for eid, n in session.execute(
        select(Enrollment.id, place).where(Enrollment.id.in_(ids)))}
