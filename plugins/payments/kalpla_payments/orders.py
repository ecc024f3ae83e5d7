"""Orders: creating one (totals, coupon, checkout) and every move between statuses.

States: ``pending`` → ``paid`` → ``partially_refunded`` / ``refunded``; ``pending`` →
``failed`` or ``expired``. A failed or expired order that the gateway reports paid after all
is paid (the money arrived). An order is paid at most once: the order row is locked and a paid
order is answered as it is. Each change writes an :class:`OrderEvent` (who, when, why).

Paying assigns the institution's next invoice number from a counter row locked for update, so
numbers run 1, 2, 3 … without gaps or duplicates under concurrency; unpaid orders take none.
No Flask here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kalpla_core.toolkit import APIError, Course, User, new_id
from kalpla_payments import access, credentials, events
from kalpla_payments.models import (
    Coupon,
    CoursePrice,
    HeldRefund,
    InvoiceCounter,
    Order,
    OrderEvent,
    Plan,
    Subscription,
)
from kalpla_payments.pricing import BASIS_POINTS, current_amount, round_half_up, totals
from kalpla_payments.providers.base import Checkout, CheckoutRequest, ProviderError

PAID_STATES = ("paid", "partially_refunded", "refunded")
# How long an order whose checkout completed with a delayed payment method (a bank debit or
# transfer) waits for the gateway's answer before it can expire.
PROCESSING_DAYS = 14
OPEN_COUPON_STATES = ("pending", "paid", "partially_refunded", "refunded")
PORT = "payments"


@dataclass(frozen=True)
class Item:
    course_id: str | None
    plan_id: str | None
    description: str
    amount: int
    currency: str
    period_days: int | None = None


def _invalid(field: str, message: str) -> APIError:
    return APIError(422, "The request has invalid fields; see errors.", "validation",
                    errors={field: [message]})


def provider_of(kalpla: Any, name: str) -> Any:
    try:
        return kalpla.providers.get(PORT, name, kalpla.app)
    except LookupError:
        raise APIError(409, f"The payment provider {name!r} is not available here.",
                       "provider-unavailable") from None


def item_for(session: Session, institution_id: str, course_id: str | None,
             plan_id: str | None, now: datetime) -> Item:
    if (course_id is None) == (plan_id is None):
        raise _invalid("course_id", "Give either a course_id or a plan_id.")
    if course_id is not None:
        course = session.get(Course, course_id)
        if course is None or course.institution_id != institution_id \
                or course.status != "published":
            raise _invalid("course_id", "There is no such course on sale here.")
        price = session.get(CoursePrice, course_id)
        if price is None or current_amount(price, now) == 0:
            raise APIError(409, "This course is free; enroll in it directly.", "course-is-free")
        return Item(course.id, None, course.title[:300], current_amount(price, now),
                    price.currency)
    plan = session.get(Plan, plan_id)
    if plan is None or plan.institution_id != institution_id or not plan.active:
        raise _invalid("plan_id", "There is no such plan on sale here.")
    return Item(None, plan.id, plan.name[:300], plan.amount, plan.currency, plan.period_days)


def _take_coupon(session: Session, institution_id: str, code: str, item: Item,
                 user_id: str, now: datetime) -> Coupon:
    """The coupon, locked, checked and counted as used (released if the order fails)."""
    coupon = session.scalar(select(Coupon).where(
        Coupon.institution_id == institution_id, Coupon.code == code).with_for_update())
    if coupon is None:
        raise _invalid("coupon", "There is no such coupon.")
    if coupon.expires_at is not None and coupon.expires_at <= now:
        raise _invalid("coupon", "The coupon has expired.")
    if (coupon.course_id is not None and coupon.course_id != item.course_id) \
            or (coupon.plan_id is not None and coupon.plan_id != item.plan_id):
        raise _invalid("coupon", "The coupon does not apply to this purchase.")
    if coupon.kind == "fixed" and coupon.currency != item.currency:
        raise _invalid("coupon", "The coupon is in another currency.")
    if coupon.max_uses is not None and coupon.used_count >= coupon.max_uses:
        raise _invalid("coupon", "The coupon has been used up.")
    if coupon.once_per_user and session.scalar(select(func.count()).select_from(Order).where(
            Order.coupon_id == coupon.id, Order.user_id == user_id,
            Order.status.in_(OPEN_COUPON_STATES))):
        raise _invalid("coupon", "You have used this coupon already.")
    coupon.used_count += 1
    return coupon


def record(session: Session, order: Order, to_status: str, actor: str, reason: str,
           now: datetime, amount: int = 0, from_status: str | None = None) -> None:
    session.add(OrderEvent(order_id=order.id, from_status=from_status, to_status=to_status,
                           amount=amount, actor=actor[:200], reason=reason[:500],
                           created_at=now))


def create_order(session: Session, kalpla: Any, *, institution_id: str, user: User,
                 settings: dict[str, Any], course_id: str | None = None,
                 plan_id: str | None = None, coupon_code: str | None = None,
                 now: datetime) -> Order:
    """A pending order with its totals and a started checkout; an order with nothing to pay
    (a 100 % coupon) is paid at once."""
    item = item_for(session, institution_id, course_id, plan_id, now)
    if item.course_id and access.has_paid_order(session, user.id, item.course_id):
        raise APIError(409, "You have bought this course already.", "already-purchased")
    coupon = _take_coupon(session, institution_id, coupon_code, item, user.id, now) \
        if coupon_code else None
    rate = int(settings.get("tax_rate_bp", 0))
    inclusive = bool(settings.get("tax_inclusive", False))
    t = totals(item.amount, coupon, rate, inclusive)
    provider_name = str(settings.get("provider", "manual"))
    provider = provider_of(kalpla, provider_name)
    order = Order(id=new_id(), institution_id=institution_id, user_id=user.id,
                  course_id=item.course_id, plan_id=item.plan_id, description=item.description,
                  status="pending", currency=item.currency, subtotal=t.subtotal,
                  discount=t.discount, tax=t.tax, total=t.total, tax_rate_bp=rate,
                  tax_inclusive=inclusive, coupon_id=coupon.id if coupon else None,
                  provider=provider_name,
                  expires_at=now + timedelta(minutes=int(settings.get("order_ttl_minutes", 60))))
    if t.total > 0:
        # The gateway is asked before the order is written, so no write lock is held while
        # waiting on it; a failed transaction leaves only an unused checkout at the gateway.
        checkout = _start_checkout(session, kalpla, provider, order, user, settings,
                                   item.period_days)
        order.provider_ref = checkout.provider_ref
        order.checkout = {"provider": provider_name, "url": checkout.url,
                          **dict(checkout.client)}
    session.add(order)
    session.flush()
    record(session, order, "pending", f"user:{user.id}", "Order placed.", now, t.total)
    if t.total == 0:
        mark_paid(session, kalpla, order, amount=0, payment_id=None, actor="system",
                  reason="Nothing to pay.", reference=None, now=now)
    return order


def _start_checkout(session: Session, kalpla: Any, provider: Any, order: Order, user: User,
                    settings: dict[str, Any], period_days: int | None) -> Checkout:
    try:
        return provider.start_checkout(  # type: ignore[no-any-return]
            credentials.load(session, kalpla, order.institution_id, order.provider),
            CheckoutRequest(order_id=order.id, institution_id=order.institution_id,
                            description=order.description, amount=order.total,
                            currency=order.currency, customer_email=user.email,
                            success_url=str(settings.get("success_url") or ""),
                            cancel_url=str(settings.get("cancel_url") or ""),
                            period_days=period_days))
    except ProviderError as exc:
        raise APIError(502, f"The payment provider refused the checkout: {exc}",
                       "provider-error") from None


def lock(session: Session, order_id: str) -> Order:
    order = session.scalar(select(Order).where(Order.id == order_id).with_for_update()
                           .execution_options(populate_existing=True))
    if order is None:
        raise APIError(404, "There is no such order.", "not-found")
    return order


def lock_counter(session: Session, institution_id: str) -> InvoiceCounter:
    """The institution's invoice counter, locked until the transaction ends (created at the
    first use). Everything that gives an order a payment takes it, so it also serialises
    that with a refund event looking for the payment's order (see ``release_held_refunds``)."""
    counter = session.scalar(select(InvoiceCounter).where(
        InvoiceCounter.institution_id == institution_id).with_for_update()
        .execution_options(populate_existing=True))
    if counter is None:
        insert = access.insert_ignore(session, InvoiceCounter)
        session.execute(insert.values(institution_id=institution_id, last_number=0))
        counter = session.scalar(select(InvoiceCounter).where(
            InvoiceCounter.institution_id == institution_id).with_for_update()
            .execution_options(populate_existing=True))
        assert counter is not None
    return counter


def _next_invoice_number(session: Session, institution_id: str) -> int:
    counter = lock_counter(session, institution_id)
    counter.last_number += 1
    session.flush()
    return counter.last_number


def hold_refund(session: Session, institution_id: str, provider: str, payment_id: str,
                total_refunded: int, event_id: str, event_type: str, now: datetime) -> None:
    """Keep a gateway's refund of a payment no order has yet (a renewal's refund that
    overtook the renewal's own event). The caller holds the counter lock and has looked for
    the order under it: the order that takes the payment later finds this row."""
    if total_refunded <= 0:
        return
    session.add(HeldRefund(institution_id=institution_id, provider=provider,
                           payment_id=payment_id[:200], total_refunded=total_refunded,
                           event_id=event_id[:200], event_type=event_type[:100],
                           received_at=now))
    session.flush()


def release_held_refunds(session: Session, kalpla: Any, order: Order, now: datetime) -> int:
    """Apply the refunds held for the payment this paid order just took, smallest total first
    (each is the gateway's total at its time), and drop them; the amount newly refunded.

    Exactly once whatever the order of events: the refund's event looks for the order and
    holds the refund under the counter lock, and this runs under that lock after the order
    took the payment, so one of the two always sees the other's committed work."""
    if not order.provider_payment_id or order.status not in PAID_STATES:
        return 0
    lock_counter(session, order.institution_id)
    held = list(session.scalars(select(HeldRefund).where(
        HeldRefund.institution_id == order.institution_id,
        HeldRefund.provider == order.provider,
        HeldRefund.payment_id == order.provider_payment_id)
        .order_by(HeldRefund.total_refunded, HeldRefund.id)))
    refunded = 0
    for row in held:
        refunded += apply_refund(session, kalpla, order, total_refunded=row.total_refunded,
                                 actor=f"provider:{row.provider}:{row.event_id}",
                                 reason=f"{row.event_type} of {row.received_at:%Y-%m-%d %H:%M} "
                                        "UTC, held until its payment's order was known",
                                 reference=None, now=now)
        session.delete(row)
    session.flush()
    return refunded


def name_payment(session: Session, kalpla: Any, order: Order, payment_id: str | None,
                 replaces: str | None, now: datetime) -> bool:
    """A paid order learns its payment late: it was paid on an earlier word (a renewal that
    implied it), or it recorded an id standing in for the payment (``replaces``: a Stripe
    subscription's first invoice, before its payment intent was known). Refunds held for
    that payment then apply. False when the order keeps the payment it has."""
    order = lock(session, order.id)
    if not payment_id or payment_id == order.provider_payment_id or (
            order.provider_payment_id and order.provider_payment_id != replaces):
        return False
    order.provider_payment_id = payment_id
    session.flush()
    release_held_refunds(session, kalpla, order, now)
    return True


def mark_paid(session: Session, kalpla: Any, order: Order, *, amount: int,
              payment_id: str | None, actor: str, reason: str, reference: str | None,
              now: datetime, replaces: str | None = None) -> bool:
    """pending (or failed, expired) → paid, then fulfil it: the held enrollment is activated
    or the plan's subscription starts. False when the order was paid already (it may still
    learn its payment, see ``name_payment``)."""
    order = lock(session, order.id)
    if order.status in PAID_STATES:
        name_payment(session, kalpla, order, payment_id, replaces, now)
        return False
    if amount < order.total:
        raise APIError(409, f"{amount} {order.currency} was paid of {order.total}.",
                       "amount-mismatch")
    previous = order.status
    if previous in ("failed", "expired") and order.coupon_id:
        coupon = session.get(Coupon, order.coupon_id)
        if coupon is not None:
            coupon.used_count += 1  # released when the order failed; taken again
    order.status = "paid"
    order.amount_paid = amount
    order.paid_at = now
    order.provider_payment_id = payment_id or order.provider_payment_id
    order.payment_reference = reference or order.payment_reference
    order.invoice_number = _next_invoice_number(session, order.institution_id)
    record(session, order, "paid", actor, reason, now, amount, previous)
    session.flush()
    access.fulfil(session, kalpla, order, now)
    events.order_paid(session, kalpla, order, now)
    release_held_refunds(session, kalpla, order, now)
    return True


def mark_processing(session: Session, order: Order, *, actor: str, reason: str,
                    now: datetime) -> bool:
    """The buyer completed the checkout with a delayed payment method: the order stays
    pending (not paid, not yet failed) and does not expire for ``PROCESSING_DAYS`` from each
    time the gateway says the payment is still processing. The first time is recorded. False
    when the order is not pending."""
    order = lock(session, order.id)
    if order.status != "pending":
        return False
    until = now + timedelta(days=PROCESSING_DAYS)
    order.expires_at = max(order.expires_at, until) if order.expires_at else until
    if not (order.checkout or {}).get("processing"):
        order.checkout = {**(order.checkout or {}), "processing": True}
        record(session, order, "pending", actor, f"{reason}: the payment is processing.",
               now, 0, "pending")
    session.flush()
    return True


def record_renewal(session: Session, kalpla: Any, sub: Subscription, *, provider: str,
                   ref: str, payment_id: str | None, amount: int, currency: str | None,
                   tax: int | None, actor: str, reason: str, now: datetime,
                   paid_at: datetime | None = None) -> Order | None:
    """A paid order of kind ``renewal`` for a subscription's later charge, with the next
    invoice number, announced as paid. The charge's ``ref`` is unique per provider (as a
    checkout's is): a second event for it inserts nothing and None is returned. ``paid_at``
    is when the gateway charged (a renewal found late by ``reconcile`` counts on its own
    day), never later than ``now``. Refunds of its payment that came first are applied.

    The gateway charges what the plan's checkout asked for, tax included, so the tax is the
    gateway's when it computed one, else the part of the amount at the first order's rate."""
    if session.scalar(select(Order.id).where(Order.provider == provider,
                                             Order.provider_ref == ref)) is not None:
        return None
    first = session.get(Order, sub.order_id) if sub.order_id else None
    plan = session.get(Plan, sub.plan_id)
    rate = first.tax_rate_bp if first else 0
    inclusive = first.tax_inclusive if first else False
    if tax is None:
        tax = amount - round_half_up(amount * BASIS_POINTS, BASIS_POINTS + rate)
    tax = min(max(tax, 0), amount)
    session.flush()
    # Inserted with ON CONFLICT DO NOTHING: of two events racing for one charge, one row.
    order_id = session.connection().execute(access.insert_ignore(session, Order).values(
        id=new_id(), institution_id=sub.institution_id, user_id=sub.user_id,
        plan_id=sub.plan_id, subscription_id=sub.id, kind="renewal",
        description=f"{plan.name if plan else 'Subscription'} (renewal)"[:300],
        status="paid", currency=(currency or (first.currency if first else None)
                                 or (plan.currency if plan else "")).upper()[:3],
        subtotal=amount if inclusive else amount - tax, discount=0, tax=tax, total=amount,
        tax_rate_bp=rate, tax_inclusive=inclusive, provider=provider, provider_ref=ref,
        provider_payment_id=payment_id, amount_paid=amount, amount_refunded=0,
        payment_reference=payment_id or ref, paid_at=min(paid_at or now, now),
        created_at=now, updated_at=now,
        version=1).returning(Order.id)).scalar()
    if order_id is None:
        return None
    order = lock(session, order_id)
    order.invoice_number = _next_invoice_number(session, order.institution_id)
    record(session, order, "paid", actor, reason, now, amount)
    session.flush()
    events.order_paid(session, kalpla, order, order.paid_at or now)
    release_held_refunds(session, kalpla, order, now)
    return order


def fail(session: Session, order: Order, *, status: str, actor: str, reason: str,
         now: datetime) -> bool:
    """pending → failed or expired; the coupon use is released. False when not pending."""
    order = lock(session, order.id)
    if order.status != "pending":
        return False
    order.status = status
    if order.coupon_id:
        coupon = session.get(Coupon, order.coupon_id)
        if coupon is not None and coupon.used_count > 0:
            coupon.used_count -= 1
    record(session, order, status, actor, reason, now, 0, "pending")
    session.flush()
    return True


def apply_refund(session: Session, kalpla: Any, order: Order, *, total_refunded: int,
                 actor: str, reason: str, reference: str | None, now: datetime) -> int:
    """Bring the order's refunded total up to ``total_refunded`` (never down: refund events
    carry totals, so a late or repeated one changes nothing). A full refund takes the access
    the order gave away. Returns the amount newly refunded."""
    from kalpla_payments.models import Refund

    order = lock(session, order.id)
    if order.status not in PAID_STATES:
        raise APIError(409, f"A {order.status} order cannot be refunded.", "invalid-state")
    target = min(total_refunded, order.amount_paid)
    delta = target - order.amount_refunded
    if delta <= 0:
        return 0
    previous = order.status
    order.amount_refunded = target
    order.status = "refunded" if target == order.amount_paid else "partially_refunded"
    session.add(Refund(institution_id=order.institution_id, order_id=order.id, amount=delta,
                       currency=order.currency, reason=reason[:500], reference=reference,
                       created_by=actor[:200], created_at=now))
    record(session, order, order.status, actor, reason or "Refunded.", now, delta, previous)
    session.flush()
    if order.status == "refunded":
        access.revoke(session, kalpla, order, now)
    events.order_refunded(session, kalpla, order, delta, now)
    return delta


def refund(session: Session, kalpla: Any, order: Order, *, amount: int | None, reason: str,
           reference: str | None, actor: str, now: datetime) -> int:
    """An admin's refund: through the order's gateway, then recorded. Never more than what
    was paid and not yet refunded (422)."""
    order = lock(session, order.id)
    if order.status not in PAID_STATES:
        raise APIError(409, f"A {order.status} order cannot be refunded.", "invalid-state")
    left = order.amount_paid - order.amount_refunded
    amount = left if amount is None else amount
    if amount <= 0 or amount > left:
        raise _invalid("amount", f"At most {left} {order.currency} can be refunded.")
    provider = provider_of(kalpla, order.provider)
    gateway_ref = ""
    if order.provider_payment_id or order.provider != "manual":
        try:
            gateway_ref = provider.refund(
                credentials.load(session, kalpla, order.institution_id, order.provider),
                order.provider_payment_id or "", amount, reason)
        except ProviderError as exc:
            raise APIError(502, f"The payment provider refused the refund: {exc}",
                           "provider-error") from None
    return apply_refund(session, kalpla, order, total_refunded=order.amount_refunded + amount,
                        actor=actor, reason=reason, reference=reference or gateway_ref or None,
                        now=now)


def expire_due(session: Session, now: datetime, limit: int | None = None) -> tuple[int, bool]:
    """Pending orders past their expiry become expired, at most ``limit`` of them (oldest
    first); how many did, and whether there may be more."""
    query = select(Order.id).where(Order.status == "pending", Order.expires_at <= now) \
        .order_by(Order.expires_at, Order.id)
    due = list(session.scalars(query if limit is None else query.limit(limit)))
    expired = sum(fail(session, lock(session, order_id), status="expired", actor="system",
                       reason="The checkout was not completed in time.", now=now)
                  for order_id in due)
    return expired, limit is not None and len(due) == limit
