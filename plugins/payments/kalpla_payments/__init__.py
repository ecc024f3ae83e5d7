"""Payments for Kalpla: course prices, subscription plans, coupons, tax, orders with invoice
numbers, refunds, and gateways (manual, Stripe, Razorpay) on the ``payments`` port.

Built only on the public contract (``kalpla_core.hookspecs`` and ``kalpla_core.toolkit``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from kalpla_core.hookspecs import (
    Decision,
    EnrollmentRequest,
    Permission,
    PluginMeta,
    Provider,
    hookimpl,
)

KALPLA_PLUGIN = PluginMeta(
    name="payments",
    version="0.1.0",
    core_requires=">=0.1,<0.2",
    label="Payments",
    description="Prices, coupons, orders, subscriptions and refunds with manual, Stripe and "
                "Razorpay payments; paid courses are entered through checkout.",
)


@hookimpl
def kalpla_models() -> list[type[Any]]:
    from kalpla_payments.models import MODELS

    return MODELS


@hookimpl
def kalpla_migrations() -> Path:
    return Path(__file__).parent / "migrations" / "versions"


@hookimpl
def kalpla_permissions() -> list[Permission]:
    return [
        Permission("payments.manage", "Set prices, plans, coupons and provider keys; see and "
                   "mark paid every order of the institution; read its reports", ("admin",)),
        Permission("payments.refund", "Refund paid orders", ("admin",)),
    ]


@hookimpl
def kalpla_settings_schema() -> Any:
    from kalpla_payments.schemas import PaymentsSettings

    return PaymentsSettings


@hookimpl
def kalpla_providers() -> list[Provider]:
    from kalpla_payments.providers import manual, razorpay_provider, stripe_provider

    return [
        Provider("payments", "manual", manual.factory,
                 "Payments recorded by an administrator (bank transfer, cash, invoice)."),
        Provider("payments", "stripe", stripe_provider.factory,
                 "Stripe Checkout Sessions, refunds and signed webhooks."),
        Provider("payments", "razorpay", razorpay_provider.factory,
                 "Razorpay orders, signed payments and webhooks, refunds."),
    ]


@hookimpl
def kalpla_blueprints() -> list[Any]:
    from kalpla_payments.routes import blp

    return [blp]


@hookimpl
def kalpla_cli_commands() -> list[Any]:
    from kalpla_payments.cli import payments

    return [payments]


@hookimpl
def kalpla_enrollment_requested(session: Session,
                                request: EnrollmentRequest) -> Decision | None:
    from kalpla_core.toolkit import kalpla, plugin_settings, utcnow
    from kalpla_payments.access import gate

    settings = plugin_settings("payments", request.institution_id, session=session) or {}
    return gate(session, kalpla(), request, settings, utcnow())


@hookimpl
def kalpla_user_export(session: Session, user_id: str) -> dict[str, Any]:
    from kalpla_payments.models import Order, Subscription

    orders = session.scalars(select(Order).where(Order.user_id == user_id).order_by(Order.id))
    subs = session.scalars(select(Subscription).where(Subscription.user_id == user_id)
                           .order_by(Subscription.id))
    return {
        "orders": [{"id": o.id, "kind": o.kind, "description": o.description,
                    "status": o.status, "subscription_id": o.subscription_id,
                    "currency": o.currency, "total": o.total, "amount_paid": o.amount_paid,
                    "amount_refunded": o.amount_refunded, "invoice_number": o.invoice_number,
                    "created_at": o.created_at.isoformat()} for o in orders],
        "subscriptions": [{"id": s.id, "plan_id": s.plan_id, "status": s.status,
                           "current_period_end": s.current_period_end.isoformat()}
                          for s in subs],
    }


@hookimpl
def kalpla_user_erase(session: Session, user_id: str) -> None:
    # Orders are accounting records the institution must keep: they stay, without the buyer.
    from kalpla_payments.models import Order, Subscription

    session.execute(update(Order).where(Order.user_id == user_id).values(
        user_id=None, subscription_id=None))
    session.execute(delete(Subscription).where(Subscription.user_id == user_id))
