"""Prices, plans and coupons: what an institution sells. No Flask here."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from kalpla_core.toolkit import APIError, Course
from kalpla_payments.models import Coupon, CoursePrice, Plan, PlanCourse
from kalpla_payments.pricing import current_amount


def _invalid(field: str, message: str) -> APIError:
    return APIError(422, "The request has invalid fields; see errors.", "validation",
                    errors={field: [message]})


def course_of(session: Session, institution_id: str, course_id: str) -> Course:
    course = session.get(Course, course_id)
    if course is None or course.institution_id != institution_id:
        raise APIError(404, "There is no such course.", "not-found")
    return course


def price_view(price: CoursePrice, now: datetime) -> dict[str, Any]:
    return {"course_id": price.course_id, "amount": price.amount, "currency": price.currency,
            "sale_amount": price.sale_amount, "sale_starts_at": price.sale_starts_at,
            "sale_ends_at": price.sale_ends_at, "current_amount": current_amount(price, now)}


def set_price(session: Session, institution_id: str, course_id: str,
              data: dict[str, Any]) -> CoursePrice:
    course_of(session, institution_id, course_id)
    price = session.get(CoursePrice, course_id)
    if price is None:
        price = CoursePrice(course_id=course_id, institution_id=institution_id)
        session.add(price)
    for key in ("amount", "currency", "sale_amount", "sale_starts_at", "sale_ends_at"):
        setattr(price, key, data[key])
    session.flush()
    return price


def remove_price(session: Session, institution_id: str, course_id: str) -> None:
    course_of(session, institution_id, course_id)
    session.execute(delete(CoursePrice).where(CoursePrice.course_id == course_id))


def create_plan(session: Session, institution_id: str, data: dict[str, Any]) -> Plan:
    course_ids = list(dict.fromkeys(data.pop("course_ids", [])))
    if not data["all_courses"] and not course_ids:
        raise _invalid("course_ids", "Name the courses, or set all_courses.")
    found = set(session.scalars(select(Course.id).where(
        Course.id.in_(course_ids), Course.institution_id == institution_id)))
    if len(found) != len(course_ids):
        raise _invalid("course_ids", "Every course must be one of this institution's.")
    plan = Plan(institution_id=institution_id, **data)
    session.add(plan)
    session.flush()
    session.add_all(PlanCourse(plan_id=plan.id, course_id=cid) for cid in course_ids)
    session.flush()
    return plan


def plan_views(session: Session, plans: list[Plan]) -> list[dict[str, Any]]:
    """The plans with their course ids, in one query for all of them."""
    courses: dict[str, list[str]] = {p.id: [] for p in plans}
    if plans:
        for plan_id, course_id in session.execute(select(
                PlanCourse.plan_id, PlanCourse.course_id).where(
                PlanCourse.plan_id.in_(list(courses))).order_by(PlanCourse.course_id)):
            courses[plan_id].append(course_id)
    return [{"id": p.id, "name": p.name, "amount": p.amount, "currency": p.currency,
             "period_days": p.period_days, "all_courses": p.all_courses,
             "course_ids": courses[p.id], "active": p.active} for p in plans]


def create_coupon(session: Session, institution_id: str, data: dict[str, Any]) -> Coupon:
    if data.get("course_id"):
        course_of(session, institution_id, data["course_id"])
    if data.get("plan_id"):
        plan = session.get(Plan, data["plan_id"])
        if plan is None or plan.institution_id != institution_id:
            raise _invalid("plan_id", "There is no such plan here.")
    if session.scalar(select(Coupon.id).where(Coupon.institution_id == institution_id,
                                              Coupon.code == data["code"])):
        raise APIError(409, f"The coupon code {data['code']} exists already.", "coupon-exists")
    coupon = Coupon(institution_id=institution_id, **data)
    session.add(coupon)
    session.flush()
    return coupon
