"""The events the plugin announces after the commit (hooks of the core contract)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from kalpla_core.hookspecs import OrderPaid, OrderRefunded, SubscriptionChanged


def order_paid(session: Session, kalpla: Any, order: Any, now: datetime) -> None:
    kalpla.emit(session, "kalpla_order_paid", OrderPaid(
        institution_id=order.institution_id, occurred_at=now.isoformat(), order_id=order.id,
        user_id=order.user_id, course_id=order.course_id, plan_id=order.plan_id,
        amount=order.amount_paid, currency=order.currency, provider=order.provider,
        invoice_number=order.invoice_number))


def order_refunded(session: Session, kalpla: Any, order: Any, amount: int,
                   now: datetime) -> None:
    kalpla.emit(session, "kalpla_order_refunded", OrderRefunded(
        institution_id=order.institution_id, occurred_at=now.isoformat(), order_id=order.id,
        user_id=order.user_id, amount=amount, total_refunded=order.amount_refunded,
        currency=order.currency, status=order.status))


def subscription_changed(session: Session, kalpla: Any, sub: Any, now: datetime) -> None:
    kalpla.emit(session, "kalpla_subscription_changed", SubscriptionChanged(
        institution_id=sub.institution_id, occurred_at=now.isoformat(), subscription_id=sub.id,
        user_id=sub.user_id, plan_id=sub.plan_id, status=sub.status,
        current_period_end=sub.current_period_end.isoformat()))
