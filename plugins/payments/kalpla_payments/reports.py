"""Receipts and the admins' reports (revenue by course and by day, refunds). No Flask here.

Report rows are groups, so their cursor is the last group's key (base64 JSON); a page is one
grouped query over the ``(institution_id, status, paid_at)`` index, whatever the position.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from marshmallow import Schema, fields
from sqlalchemy import String, and_, cast, func, or_, select
from sqlalchemy.orm import Session

from kalpla_core.toolkit import APIError, Course, Institution, Page, User, paginate
from kalpla_payments.models import Order, Refund

PAID_STATES = ("paid", "partially_refunded", "refunded")


class RevenueRowSchema(Schema):
    key = fields.String(metadata={"description": "The course id, or the day (YYYY-MM-DD)."})
    title = fields.String(allow_none=True)
    currency = fields.String()
    orders = fields.Integer()
    paid = fields.Integer()
    refunded = fields.Integer()
    net = fields.Integer()


class RefundRowSchema(Schema):
    id = fields.String()
    order_id = fields.String()
    amount = fields.Integer()
    currency = fields.String()
    reason = fields.String()
    reference = fields.String(allow_none=True)
    created_by = fields.String()
    created_at = fields.DateTime()


def receipt(session: Session, order: Order, institution: Institution) -> dict[str, Any]:
    buyer = session.get(User, order.user_id) if order.user_id else None
    return {
        "order_id": order.id, "kind": order.kind, "subscription_id": order.subscription_id,
        "invoice_number": f"{institution.slug}-{order.invoice_number:06d}",
        "institution": institution.name,
        "buyer": {"id": buyer.id, "name": buyer.name, "email": buyer.email} if buyer else {},
        "lines": [{"description": order.description, "course_id": order.course_id,
                   "plan_id": order.plan_id, "amount": order.subtotal}],
        "currency": order.currency, "subtotal": order.subtotal, "discount": order.discount,
        "tax": order.tax, "tax_rate_bp": order.tax_rate_bp,
        "tax_inclusive": order.tax_inclusive, "total": order.total,
        "amount_paid": order.amount_paid, "amount_refunded": order.amount_refunded,
        "status": order.status, "provider": order.provider,
        "payment_reference": order.payment_reference, "paid_at": order.paid_at,
    }


def _decode(cursor: str | None) -> list[str] | None:
    if not cursor:
        return None
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except ValueError:
        values = None
    if not (isinstance(values, list) and len(values) == 2
            and all(isinstance(v, str) for v in values)):
        raise APIError(400, "The cursor is invalid or belongs to another listing.",
                       "invalid-cursor")
    return values


def _encode(values: list[str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


def _day(session: Session) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return cast(func.date(func.timezone("UTC", Order.paid_at)), String)
    return func.date(Order.paid_at)


def revenue(session: Session, institution_id: str, by: str, limit: int,
            cursor: str | None) -> Page:
    """Per course (ascending id) or per UTC day (newest first), and currency."""
    key = Order.course_id if by == "course" else _day(session)
    stmt = select(key.label("key"), Order.currency, func.count(Order.id),
                  func.sum(Order.amount_paid), func.sum(Order.amount_refunded)).where(
        Order.institution_id == institution_id, Order.status.in_(PAID_STATES))
    if by == "course":
        stmt = stmt.where(Order.course_id.is_not(None))
    after = _decode(cursor)
    grouped = stmt.group_by(key, Order.currency)
    if after is not None:
        beyond = key > after[0] if by == "course" else key < after[0]
        grouped = grouped.having(or_(beyond, and_(key == after[0], Order.currency > after[1])))
    order = key.asc() if by == "course" else key.desc()
    rows = session.execute(grouped.order_by(order, Order.currency).limit(limit + 1)).all()
    more, rows = len(rows) > limit, rows[:limit]
    titles: dict[str, str] = {}
    if by == "course" and rows:
        titles = dict(session.execute(select(Course.id, Course.title).where(
            Course.id.in_([r[0] for r in rows]))).all())
    items = [{"key": str(r[0]), "title": titles.get(r[0]), "currency": r[1], "orders": r[2],
              "paid": int(r[3] or 0), "refunded": int(r[4] or 0),
              "net": int(r[3] or 0) - int(r[4] or 0)} for r in rows]
    next_cursor = _encode([str(rows[-1][0]), rows[-1][1]]) if more else None
    return Page(items, next_cursor)


def refunds(session: Session, institution_id: str, limit: int, cursor: str | None) -> Page:
    stmt = select(Refund).where(Refund.institution_id == institution_id)
    return paginate(session, stmt, [(Refund.created_at, "desc"), (Refund.id, "desc")],
                    limit, cursor)
