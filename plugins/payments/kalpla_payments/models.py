"""The payments tables. Money is always an integer count of the currency's minor unit (cents,
paise) next to its ISO 4217 code; no floats anywhere."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from kalpla_core.toolkit import Base, TimestampMixin, UTCDateTime, new_id, utcnow

ORDER_STATUSES = ("pending", "paid", "partially_refunded", "refunded", "failed", "expired")
# A purchase is bought through a checkout; a renewal is a subscription's later charge, made
# by the gateway on its own and recorded from its event.
ORDER_KINDS = ("purchase", "renewal")
SUBSCRIPTION_STATUSES = ("active", "past_due", "canceled", "expired")


class CoursePrice(TimestampMixin, Base):
    """What a course costs; a course without a row (or with ``amount`` 0) is free."""

    __tablename__ = "payments_course_prices"
    __table_args__ = (
        CheckConstraint("amount >= 0", name="amount"),
        CheckConstraint("sale_amount IS NULL OR sale_amount >= 0", name="sale_amount"),
    )

    course_id: Mapped[str] = mapped_column(
        ForeignKey("courses.id", ondelete="CASCADE"), primary_key=True)
    institution_id: Mapped[str] = mapped_column(
        ForeignKey("institutions.id", ondelete="CASCADE"), index=True)
    amount: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3))
    sale_amount: Mapped[int | None] = mapped_column(Integer)
    sale_starts_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    sale_ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Plan(TimestampMixin, Base):
    """A subscription plan: access to some (or all) of an institution's courses per period."""

    __tablename__ = "payments_plans"
    __table_args__ = (CheckConstraint("amount >= 0", name="amount"),
                      CheckConstraint("period_days > 0", name="period_days"))

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    institution_id: Mapped[str] = mapped_column(
        ForeignKey("institutions.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    amount: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3))
    period_days: Mapped[int] = mapped_column(Integer)
    all_courses: Mapped[bool] = mapped_column(Boolean, default=False)
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class PlanCourse(Base):
    __tablename__ = "payments_plan_courses"

    plan_id: Mapped[str] = mapped_column(
        ForeignKey("payments_plans.id", ondelete="CASCADE"), primary_key=True)
    course_id: Mapped[str] = mapped_column(
        ForeignKey("courses.id", ondelete="CASCADE"), primary_key=True, index=True)


class Coupon(TimestampMixin, Base):
    """A discount code: ``percent`` (value 1–100) or ``fixed`` (value in minor units of
    ``currency``), for one course, one plan, or anything (neither set)."""

    __tablename__ = "payments_coupons"
    __table_args__ = (
        UniqueConstraint("institution_id", "code"),
        CheckConstraint("kind IN ('percent', 'fixed')", name="kind"),
        CheckConstraint("value > 0", name="value"),
        CheckConstraint("used_count >= 0", name="used_count"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    institution_id: Mapped[str] = mapped_column(
        ForeignKey("institutions.id", ondelete="CASCADE"))
    code: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(8))
    value: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str | None] = mapped_column(String(3))
    course_id: Mapped[str | None] = mapped_column(ForeignKey("courses.id", ondelete="CASCADE"))
    plan_id: Mapped[str | None] = mapped_column(
        ForeignKey("payments_plans.id", ondelete="CASCADE"))
    max_uses: Mapped[int | None] = mapped_column(Integer)
    used_count: Mapped[int] = mapped_column(Integer, default=0)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    once_per_user: Mapped[bool] = mapped_column(Boolean, default=True)


class Order(TimestampMixin, Base):
    """A purchase of a course or plan, or a renewal charge of a subscription (``kind``).

    ``(provider, provider_ref)`` is unique: a purchase's ref is its checkout at the gateway, a
    renewal's is the gateway's invoice or payment of that charge, so one charge is one order
    however often its event is delivered."""

    __tablename__ = "payments_orders"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'paid', 'partially_refunded', 'refunded', "
                        "'failed', 'expired')", name="status"),
        CheckConstraint("amount_refunded <= amount_paid", name="refund_le_paid"),
        UniqueConstraint("institution_id", "invoice_number"),
        UniqueConstraint("provider", "provider_ref"),
        Index("ix_payments_orders_user", "user_id", "created_at", "id"),
        Index("ix_payments_orders_institution", "institution_id", "created_at", "id"),
        Index("ix_payments_orders_paid", "institution_id", "status", "paid_at"),
        Index("ix_payments_orders_course_user", "course_id", "user_id", "status"),
        Index("ix_payments_orders_status_provider", "status", "provider"),
        # ``reconcile`` reads pending orders in keyset batches on (created_at, id).
        Index("ix_payments_orders_status_created", "status", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    institution_id: Mapped[str] = mapped_column(
        ForeignKey("institutions.id", ondelete="CASCADE"))
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    course_id: Mapped[str | None] = mapped_column(ForeignKey("courses.id", ondelete="SET NULL"))
    plan_id: Mapped[str | None] = mapped_column(
        ForeignKey("payments_plans.id", ondelete="SET NULL"))
    description: Mapped[str] = mapped_column(String(300))
    status: Mapped[str] = mapped_column(String(24), default="pending")
    currency: Mapped[str] = mapped_column(String(3))
    subtotal: Mapped[int] = mapped_column(Integer)
    discount: Mapped[int] = mapped_column(Integer, default=0)
    tax: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer)
    tax_rate_bp: Mapped[int] = mapped_column(Integer, default=0)
    tax_inclusive: Mapped[bool] = mapped_column(Boolean, default=False)
    coupon_id: Mapped[str | None] = mapped_column(
        ForeignKey("payments_coupons.id", ondelete="SET NULL"))
    provider: Mapped[str] = mapped_column(String(32))
    provider_ref: Mapped[str | None] = mapped_column(String(200))
    provider_payment_id: Mapped[str | None] = mapped_column(String(200), index=True)
    checkout: Mapped[dict[str, Any] | None] = mapped_column()
    amount_paid: Mapped[int] = mapped_column(Integer, default=0)
    amount_refunded: Mapped[int] = mapped_column(Integer, default=0)
    invoice_number: Mapped[int | None] = mapped_column(Integer)
    payment_reference: Mapped[str | None] = mapped_column(String(200))
    paid_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    version: Mapped[int] = mapped_column(Integer, default=1)
    kind: Mapped[str] = mapped_column(
        String(16), CheckConstraint("kind IN ('purchase', 'renewal')", name="kind"),
        default="purchase", server_default="purchase")
    # The subscription a renewal renews (a plan's purchase is named by the subscription's
    # ``order_id`` instead). No foreign key: SQLite adds one to an existing table only by
    # rebuilding it, which would cascade-delete the order events; erasing a subscriber
    # clears it (see ``kalpla_user_erase``).
    subscription_id: Mapped[str | None] = mapped_column(String(32), index=True)

    __mapper_args__ = {"version_id_col": version}


class OrderEvent(Base):
    """Every change of an order: from which status to which, by whom, why, when."""

    __tablename__ = "payments_order_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    order_id: Mapped[str] = mapped_column(
        ForeignKey("payments_orders.id", ondelete="CASCADE"), index=True)
    from_status: Mapped[str | None] = mapped_column(String(24))
    to_status: Mapped[str] = mapped_column(String(24))
    amount: Mapped[int] = mapped_column(Integer, default=0)
    actor: Mapped[str] = mapped_column(String(200))  # user:<id>, provider:<name>:<event>, system
    reason: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Refund(Base):
    __tablename__ = "payments_refunds"
    __table_args__ = (CheckConstraint("amount > 0", name="amount"),
                      Index("ix_payments_refunds_institution", "institution_id", "created_at",
                            "id"))

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    institution_id: Mapped[str] = mapped_column(
        ForeignKey("institutions.id", ondelete="CASCADE"))
    order_id: Mapped[str] = mapped_column(
        ForeignKey("payments_orders.id", ondelete="CASCADE"), index=True)
    amount: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3))
    reason: Mapped[str] = mapped_column(String(500), default="")
    reference: Mapped[str | None] = mapped_column(String(200))
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class InvoiceCounter(Base):
    """The last invoice number of an institution, read and bumped under a row lock so that
    numbers are sequential without gaps or duplicates."""

    __tablename__ = "payments_invoice_counters"

    institution_id: Mapped[str] = mapped_column(
        ForeignKey("institutions.id", ondelete="CASCADE"), primary_key=True)
    last_number: Mapped[int] = mapped_column(Integer, default=0)


class ProviderEvent(Base):
    """A provider event seen once: the unique (provider, event id) makes processing
    exactly-once even for concurrent deliveries."""

    __tablename__ = "payments_provider_events"
    __table_args__ = (UniqueConstraint("provider", "event_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    provider: Mapped[str] = mapped_column(String(32))
    event_id: Mapped[str] = mapped_column(String(200))
    institution_id: Mapped[str | None] = mapped_column(
        ForeignKey("institutions.id", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(String(100))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class HeldRefund(Base):
    """A gateway's refund of a payment no order has yet: a renewal's refund can overtake the
    renewal's own event, and the refund alone does not say what was renewed. It is applied
    (and deleted) when an order takes that payment, whichever event comes first."""

    __tablename__ = "payments_held_refunds"
    __table_args__ = (CheckConstraint("total_refunded > 0", name="total_refunded"),
                      Index("ix_payments_held_refunds_payment", "institution_id", "provider",
                            "payment_id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    institution_id: Mapped[str] = mapped_column(
        ForeignKey("institutions.id", ondelete="CASCADE"))
    provider: Mapped[str] = mapped_column(String(32))
    payment_id: Mapped[str] = mapped_column(String(200))
    total_refunded: Mapped[int] = mapped_column(Integer)  # the event's total for the payment
    event_id: Mapped[str] = mapped_column(String(200))
    event_type: Mapped[str] = mapped_column(String(100))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Subscription(TimestampMixin, Base):
    __tablename__ = "payments_subscriptions"
    __table_args__ = (
        CheckConstraint("status IN ('active', 'past_due', 'canceled', 'expired')",
                        name="status"),
        Index("ix_payments_subscriptions_user", "user_id", "status"),
        Index("ix_payments_subscriptions_institution", "institution_id", "status", "id"),
        UniqueConstraint("provider", "provider_ref"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    institution_id: Mapped[str] = mapped_column(
        ForeignKey("institutions.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    plan_id: Mapped[str] = mapped_column(ForeignKey("payments_plans.id", ondelete="CASCADE"))
    order_id: Mapped[str | None] = mapped_column(
        ForeignKey("payments_orders.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(String(16), default="active")
    provider: Mapped[str] = mapped_column(String(32))
    provider_ref: Mapped[str | None] = mapped_column(String(200))
    current_period_end: Mapped[datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Credentials(TimestampMixin, Base):
    """A provider's keys for an institution, encrypted at rest (SecretBox); write-only through
    the API, which tells only which fields are set."""

    __tablename__ = "payments_credentials"

    institution_id: Mapped[str] = mapped_column(
        ForeignKey("institutions.id", ondelete="CASCADE"), primary_key=True)
    provider: Mapped[str] = mapped_column(String(32), primary_key=True)
    sealed: Mapped[bytes] = mapped_column(LargeBinary)


MODELS: list[type[Any]] = [CoursePrice, Plan, PlanCourse, Coupon, Order, OrderEvent, Refund,
                           InvoiceCounter, ProviderEvent, HeldRefund, Subscription, Credentials]
