"""Who may enter a paid course, and the enrollment gate that enforces it.

A course with a price (above zero) is open to a user who holds a paid, not fully refunded
order for it, or a live subscription whose plan covers it. Everyone else is held pending with a
checkout. The gate is the only way an order leads to an enrollment: paying activates the
enrollment the gate held (``activate_pending``), and a user who paid before enrolling is let
through by the gate when they enroll. A full refund, or the end of a subscription, drops the
enrollments that no other order or subscription still pays for. No Flask here.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from kalpla_core.hookspecs import Decision, EnrollmentRequest
from kalpla_core.toolkit import (
    Course,
    Enrollment,
    User,
    activate_pending,
    current_enrollment,
    drop_enrollment,
)
from kalpla_payments import events
from kalpla_payments.models import CoursePrice, Order, Plan, PlanCourse, Subscription
from kalpla_payments.pricing import current_amount

PLUGIN = "payments"
LIVE_SUBSCRIPTION = ("active", "past_due")
HOLDING = ("pending", "active", "waitlisted")


def insert_ignore(session: Session, model: type[Any]) -> Any:
    """An INSERT that does nothing when the row's unique key exists (both backends)."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    return dialect.insert(model).on_conflict_do_nothing()


def has_paid_order(session: Session, user_id: str, course_id: str) -> bool:
    return session.scalar(select(exists().where(
        Order.user_id == user_id, Order.course_id == course_id,
        Order.status.in_(("paid", "partially_refunded"))))) or False


def _covers(course: Course) -> Any:
    """Subscriptions whose plan covers ``course``."""
    return or_(
        Subscription.plan_id.in_(select(PlanCourse.plan_id).where(
            PlanCourse.course_id == course.id)),
        Subscription.plan_id.in_(select(Plan.id).where(
            Plan.all_courses.is_(True), Plan.institution_id == course.institution_id)))


def covering_subscription(session: Session, user_id: str, course: Course,
                          now: datetime) -> Subscription | None:
    return session.scalar(select(Subscription).where(
        Subscription.user_id == user_id, Subscription.status.in_(LIVE_SUBSCRIPTION),
        Subscription.current_period_end > now, _covers(course)).limit(1))


def is_paid_course(session: Session, course_id: str) -> bool:
    price = session.get(CoursePrice, course_id)
    return price is not None and price.amount > 0


def entitled(session: Session, user_id: str, course: Course, now: datetime,
             ignore_subscription: str | None = None) -> bool:
    if has_paid_order(session, user_id, course.id):
        return True
    sub = covering_subscription(session, user_id, course, now)
    return sub is not None and sub.id != ignore_subscription


# --- the gate -------------------------------------------------------------------------------

def gate(session: Session, kalpla: Any, request: EnrollmentRequest,
         settings: dict[str, Any], now: datetime) -> Decision | None:
    """``kalpla_enrollment_requested``: abstain for free courses, allow the entitled, hold
    everyone else pending with a checkout (an open order of theirs is reused)."""
    from kalpla_payments import orders

    price = session.get(CoursePrice, request.course_id)
    if price is None or current_amount(price, now) == 0:
        return None
    course = session.get(Course, request.course_id)
    assert course is not None  # the core found it before asking
    if entitled(session, request.user_id, course, now):
        return Decision.allow()
    order = session.scalar(select(Order).where(
        Order.user_id == request.user_id, Order.course_id == course.id,
        Order.status == "pending", Order.expires_at > now)
        .order_by(Order.created_at.desc()).limit(1))
    if order is None:
        user = session.get(User, request.user_id)
        assert user is not None
        order = orders.create_order(session, kalpla, institution_id=course.institution_id,
                                    user=user, settings=settings, course_id=course.id,
                                    now=now)
        if order.status == "paid":
            return Decision.allow()
    checkout = dict(order.checkout or {})
    action = {"type": "checkout", "order_id": order.id, **checkout}
    if checkout.get("processing"):
        return Decision.pending(f"Your payment for {course.title} is being processed; the "
                                "enrollment starts when it clears.", action,
                                "payment-processing")
    return Decision.pending(f"{course.title} is a paid course: complete the checkout to "
                            "enroll.", action, "payment-required")


# --- what paying and refunding do -----------------------------------------------------------

def _held_enrollment(session: Session, course_id: str, user_id: str) -> Enrollment | None:
    enrollment = current_enrollment(session, course_id, user_id)
    if enrollment is not None and enrollment.status == "pending" \
            and enrollment.pending_plugin == PLUGIN:
        return enrollment
    return None


def fulfil(session: Session, kalpla: Any, order: Order, now: datetime) -> None:
    """After an order is paid: activate the enrollment the gate held, or start the plan's
    subscription (activating the held enrollments it covers)."""
    if order.course_id is not None and order.user_id is not None:
        held = _held_enrollment(session, order.course_id, order.user_id)
        if held is not None:
            activate_pending(session, kalpla, held.id, plugin=PLUGIN, now=now)
    elif order.plan_id is not None and order.user_id is not None:
        plan = session.get(Plan, order.plan_id)
        assert plan is not None
        sub = session.scalar(select(Subscription).where(Subscription.order_id == order.id))
        if sub is None:
            sub = Subscription(institution_id=order.institution_id, user_id=order.user_id,
                               plan_id=plan.id, order_id=order.id, status="active",
                               provider=order.provider,
                               current_period_end=now + timedelta(days=plan.period_days))
            session.add(sub)
            session.flush()
        elif sub.status not in LIVE_SUBSCRIPTION:
            sub.status = "active"
        session.flush()
        activate_covered(session, kalpla, sub, now)
        events.subscription_changed(session, kalpla, sub, now)


def activate_covered(session: Session, kalpla: Any, sub: Subscription, now: datetime) -> None:
    """The subscriber's enrollments held for payment in courses the plan covers go active."""
    held = session.scalars(select(Enrollment).join(Course, Course.id == Enrollment.course_id)
                           .where(Enrollment.user_id == sub.user_id,
                                  Enrollment.status == "pending",
                                  Enrollment.pending_plugin == PLUGIN))
    for enrollment in list(held):
        course = session.get(Course, enrollment.course_id)
        if course is not None and covering_subscription(session, sub.user_id, course, now):
            activate_pending(session, kalpla, enrollment.id, plugin=PLUGIN, now=now)


def revoke(session: Session, kalpla: Any, order: Order, now: datetime) -> None:
    """After a full refund: drop the course's enrollment (unless a subscription still pays
    for it), or end the plan's subscription. A renewal's refund gives money back and leaves
    the subscription to the gateway (cancelling it there ends it here by its event)."""
    if order.kind == "renewal":
        return
    if order.course_id is not None and order.user_id is not None:
        course = session.get(Course, order.course_id)
        enrollment = current_enrollment(session, order.course_id, order.user_id)
        if course is not None and enrollment is not None and enrollment.status in HOLDING \
                and not entitled(session, order.user_id, course, now):
            drop_enrollment(session, kalpla, enrollment.id, "The payment was refunded.",
                            now=now)
    elif order.plan_id is not None:
        sub = session.scalar(select(Subscription).where(Subscription.order_id == order.id))
        if sub is not None:
            end_subscription(session, kalpla, sub, "canceled", "The payment was refunded.",
                             now)


def end_subscription(session: Session, kalpla: Any, sub: Subscription, status: str,
                     reason: str, now: datetime) -> bool:
    """A live subscription → ``canceled`` or ``expired``: the subscriber's enrollments in the
    paid courses it covered are dropped unless another order or subscription pays for them.
    False when it had ended already."""
    if sub.status not in LIVE_SUBSCRIPTION:
        return False
    sub.status = status
    sub.ended_at = now
    session.flush()
    plan = session.get(Plan, sub.plan_id)
    covered = select(CoursePrice.course_id).where(CoursePrice.amount > 0)
    if plan is not None and plan.all_courses:
        covered = covered.where(CoursePrice.institution_id == plan.institution_id)
    else:
        covered = covered.where(CoursePrice.course_id.in_(select(PlanCourse.course_id).where(
            PlanCourse.plan_id == sub.plan_id)))
    # The subscriber's standing enrollments in those courses (not every covered course).
    held = list(session.scalars(select(Enrollment).where(
        Enrollment.user_id == sub.user_id, Enrollment.status.in_(HOLDING),
        Enrollment.course_id.in_(covered)).order_by(Enrollment.course_id)))
    for enrollment in held:
        course = session.get(Course, enrollment.course_id)
        if course is None or entitled(session, sub.user_id, course, now,
                                      ignore_subscription=sub.id):
            continue
        drop_enrollment(session, kalpla, enrollment.id, f"Subscription ended: {reason}",
                        now=now)
    events.subscription_changed(session, kalpla, sub, now)
    return True


def expire_subscriptions(session: Session, kalpla: Any, now: datetime) -> int:
    """Live subscriptions whose period ended without renewal (grace: none) expire."""
    due = list(session.scalars(select(Subscription).where(
        Subscription.status.in_(LIVE_SUBSCRIPTION), Subscription.current_period_end <= now)
        .order_by(Subscription.id)))
    for sub in due:
        end_subscription(session, kalpla, sub, "expired", "The period ended.", now)
    return len(due)
