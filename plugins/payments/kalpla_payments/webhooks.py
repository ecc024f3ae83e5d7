"""Applying provider events exactly once, in whatever order they come.

Each event is first claimed by inserting ``(provider, event id)`` with ON CONFLICT DO NOTHING:
of ten deliveries racing, one inserts the row and applies the event, the others wait for its
commit (the unique index on PostgreSQL, the write lock on SQLite) and find it done. A
delivery that fails rolls back its claim with everything else, so the provider's retry works.

Order does not matter: refunds carry the total refunded so far (applied as "at least this
much"), a refund seen before its payment pays the order first, a refund of a payment no
order has yet (a renewal's, ahead of the renewal's event) is held until an order takes that
payment, a renewal seen before the subscription's first payment implies that payment, and a
paid order is never paid again. A subscription's renewal charge becomes an order of its own,
unique per gateway charge. No Flask here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, tuple_
from sqlalchemy.orm import Session

from kalpla_core.toolkit import APIError
from kalpla_payments import access, credentials, events, orders
from kalpla_payments.models import HeldRefund, Order, ProviderEvent, Subscription
from kalpla_payments.providers.base import PaymentEvent, ProviderError

log = logging.getLogger(__name__)
# ``reconcile`` also asks about subscriptions whose period ends this soon, this many a run.
AHEAD = timedelta(days=1)
AHEAD_BATCH = 100
# ``reconcile`` reads pending orders and lapsed subscriptions this many at a time.
RECONCILE_BATCH = 100
# A refund held for a payment no order has taken is dropped by ``reconcile`` after this long.
HELD_REFUND_DAYS = 30


@dataclass
class Outcome:
    received: int = 0
    applied: int = 0
    duplicates: int = 0


def claim(session: Session, provider: str, event: PaymentEvent, institution_id: str,
          now: datetime) -> bool:
    """Whether this delivery is the first of the event (the claim commits with the work)."""
    stmt = access.insert_ignore(session, ProviderEvent).values(
        provider=provider, event_id=event.event_id[:200], institution_id=institution_id,
        type=event.type[:100], received_at=now).returning(ProviderEvent.id)
    # Core-level, so the answer is the database's: a row id only when this insert made it.
    return session.connection().execute(stmt).scalar() is not None


def process(session: Session, kalpla: Any, institution_id: str, provider: str,
            received: list[PaymentEvent], now: datetime) -> Outcome:
    out = Outcome(received=len(received))
    for event in received:
        if not claim(session, provider, event, institution_id, now):
            out.duplicates += 1
            continue
        apply(session, kalpla, institution_id, provider, event, now)
        out.applied += 1
    return out


def find_order(session: Session, institution_id: str, provider: str,
               event: PaymentEvent) -> Order | None:
    """The order an event is about, by the most specific id it names, in this order: the
    payment (or the id an order recorded in its place, ``replaces``), then the checkout's
    reference, then the order id the gateway carried in metadata; always within the event's
    institution and provider.

    An event may name more than one order: Razorpay copies a subscription's notes (the plan's
    first order) onto every renewal payment, and a charge can carry the first order in its
    metadata. So an order found by its reference or id is this payment's only when it has no
    payment yet or this one: a renewal's refund then finds the renewal (or is held for it),
    never the plan's first order."""
    scope = (Order.institution_id == institution_id, Order.provider == provider)
    by_payment = (event.payment_id, event.replaces)
    for value in by_payment:
        if value:
            order = session.scalar(select(Order).where(
                *scope, Order.provider_payment_id == value)
                .order_by(Order.created_at, Order.id).limit(1))
            if order is not None:
                return order
    for column, value in ((Order.provider_ref, event.order_ref), (Order.id, event.order_id)):
        if not value:
            continue
        order = session.scalar(select(Order).where(*scope, column == value))
        if order is not None and (not event.payment_id
                                  or order.provider_payment_id in (None, *by_payment)):
            return order
    return None


def apply(session: Session, kalpla: Any, institution_id: str, provider: str,
          event: PaymentEvent, now: datetime) -> None:
    actor = f"provider:{provider}:{event.event_id}"[:200]
    if event.kind == "subscription":
        _apply_subscription(session, kalpla, institution_id, provider, event, now)
        return
    if event.kind == "ignored":
        return
    if event.kind == "renewal":
        _apply_renewal(session, kalpla, institution_id, provider, event, actor, now)
        return
    order = find_order(session, institution_id, provider, event)
    if order is None and event.kind == "refunded" and event.payment_id:
        # A renewal's refund may overtake the renewal's own event: looked for again under
        # the lock an order takes to get a payment, and held if still unknown.
        orders.lock_counter(session, institution_id)
        order = find_order(session, institution_id, provider, event)
        if order is None:
            orders.hold_refund(session, institution_id, provider, event.payment_id,
                               event.amount, event.event_id, event.type, now)
            log.info("refund held for a payment no order has yet", extra={
                "provider": provider, "event_id": event.event_id})
            return
    if order is None:
        log.warning("payment event for no known order", extra={
            "provider": provider, "event_id": event.event_id, "type": event.type})
        return
    if event.kind == "paid":
        _pay(session, kalpla, order, event.amount, event.payment_id, actor, event.type, now,
             event.replaces)
        if event.subscription_ref:  # the gateway's subscription the plan's order started
            sub = session.scalar(select(Subscription).where(Subscription.order_id == order.id))
            if sub is not None and not sub.provider_ref:
                sub.provider_ref = event.subscription_ref
                session.flush()
    elif event.kind == "processing":
        orders.mark_processing(session, order, actor=actor, reason=event.type, now=now)
    elif event.kind in ("failed", "expired"):
        orders.fail(session, order, status=event.kind, actor=actor, reason=event.type, now=now)
    elif event.kind == "refunded":
        # A refund that overtook its payment: the money was taken, so pay first.
        if order.status not in orders.PAID_STATES and not _pay(
                session, kalpla, order, event.paid_amount, event.payment_id, actor,
                f"{event.type} (payment implied)", now, event.replaces):
            return
        # Found by the invoice it recorded, or paid on an earlier word: now its payment is
        # known (refunds held for that payment apply first; totals make that safe).
        orders.name_payment(session, kalpla, order, event.payment_id, event.replaces, now)
        orders.apply_refund(session, kalpla, order, total_refunded=event.amount, actor=actor,
                            reason=event.type, reference=None, now=now)


def _pay(session: Session, kalpla: Any, order: Order, amount: int, payment_id: str | None,
         actor: str, reason: str, now: datetime, replaces: str | None = None) -> bool:
    try:
        orders.mark_paid(session, kalpla, order, amount=amount, payment_id=payment_id,
                         actor=actor, reason=reason, reference=payment_id, now=now,
                         replaces=replaces)
    except APIError as exc:  # paid less than the total: recorded, not fulfilled
        log.warning("payment event not applied: %s", exc.detail, extra={"order": order.id})
        orders.record(session, order, order.status, actor, f"Not applied: {exc.detail}", now)
        return False
    return True


def find_subscription(session: Session, institution_id: str, provider: str,
                      event: PaymentEvent) -> Subscription | None:
    """The subscription an event names: by the gateway's subscription, else through the
    plan's order that started it."""
    sub = None
    if event.subscription_ref:
        sub = session.scalar(select(Subscription).where(
            Subscription.provider == provider,
            Subscription.provider_ref == event.subscription_ref))
    if sub is None and (event.order_id or event.order_ref):
        # Not by payment: a renewal's payment is its own order's, not the plan's.
        order = find_order(session, institution_id, provider, replace(event, payment_id=None))
        if order is not None:
            sub = session.scalar(select(Subscription).where(Subscription.order_id == order.id))
    if sub is None or sub.institution_id != institution_id:
        return None
    if event.subscription_ref and not sub.provider_ref:
        sub.provider_ref = event.subscription_ref
    return sub


def _apply_subscription(session: Session, kalpla: Any, institution_id: str, provider: str,
                        event: PaymentEvent, now: datetime) -> None:
    sub = find_subscription(session, institution_id, provider, event)
    if sub is None:
        log.warning("subscription event for no known subscription",
                    extra={"provider": provider, "event_id": event.event_id})
        return
    if event.status == "canceled":
        access.end_subscription(session, kalpla, sub, "canceled",
                                f"{event.type} from {provider}", now)
        return
    _extend(session, kalpla, sub, event, now)


def _extend(session: Session, kalpla: Any, sub: Subscription, event: PaymentEvent,
            now: datetime) -> None:
    """The subscription's period and status as the gateway tells them."""
    if sub.status in ("canceled", "expired"):
        return  # an ended subscription is not revived by a late update
    changed = False
    if event.period_end is not None and event.period_end > sub.current_period_end:
        sub.current_period_end = event.period_end
        changed = True
    if event.status in access.LIVE_SUBSCRIPTION and event.status != sub.status:
        sub.status = event.status
        changed = True
    session.flush()
    if changed:
        access.activate_covered(session, kalpla, sub, now)
        events.subscription_changed(session, kalpla, sub, now)


def _apply_renewal(session: Session, kalpla: Any, institution_id: str, provider: str,
                   event: PaymentEvent, actor: str, now: datetime) -> None:
    """A later charge of a gateway subscription: an order of its own, then the period moves
    on. A renewal that overtook the checkout's own payment implies it (the first period was
    paid, or there would be no second): the plan's order is paid first, which starts the
    subscription. A charge of a subscription that has ended here is still recorded (the
    money was taken) but does not revive it."""
    sub = find_subscription(session, institution_id, provider, event)
    if sub is None:
        first = find_order(session, institution_id, provider, replace(event, payment_id=None))
        if first is None or first.plan_id is None or first.kind != "purchase":
            log.warning("renewal for no known subscription",
                        extra={"provider": provider, "event_id": event.event_id})
            return
        if first.status not in orders.PAID_STATES and not _pay(
                session, kalpla, first, first.total, None, actor,
                f"{event.type} (first payment implied by a renewal)", now):
            return
        sub = find_subscription(session, institution_id, provider, event)
        if sub is None:
            return
    if event.renewal_ref:
        orders.record_renewal(session, kalpla, sub, provider=provider, ref=event.renewal_ref,
                              payment_id=event.payment_id, amount=event.amount,
                              currency=event.currency, tax=event.tax, actor=actor,
                              reason=f"{event.type}: renewal of subscription {sub.id}",
                              now=now, paid_at=event.paid_at)
    _extend(session, kalpla, sub, event, now)


@dataclass(frozen=True)
class _Ask:
    """One thing ``reconcile`` asks a gateway about, read before the call so that no row (nor
    SQLite's write lock) is held while the gateway answers."""

    kind: str  # "order" (a pending checkout) or "subscription"
    id: str
    institution_id: str
    provider: str
    ref: str


@dataclass
class _Tally:
    asked: int = 0
    applied: int = 0
    failed: int = 0


def _pending_orders(session: Session, now: datetime) -> Iterator[list[_Ask]]:
    """Pending gateway orders made before ``now``, ``RECONCILE_BATCH`` at a time, oldest first
    (keyset on ``created_at, id``: an order paid meanwhile moves nothing). Each read ends
    before its batch is handed out."""
    after: tuple[datetime, str] | None = None
    while True:
        query = select(Order.id, Order.created_at, Order.institution_id, Order.provider,
                       Order.provider_ref).where(
            Order.status == "pending", Order.provider_ref.is_not(None),
            Order.created_at <= now)
        if after is not None:
            query = query.where(tuple_(Order.created_at, Order.id) > tuple_(*after))
        rows = session.execute(query.order_by(Order.created_at, Order.id)
                               .limit(RECONCILE_BATCH)).all()
        session.commit()
        if rows:
            yield [_Ask("order", r.id, r.institution_id, r.provider, str(r.provider_ref))
                   for r in rows]
        if len(rows) < RECONCILE_BATCH:
            return
        after = (rows[-1].created_at, rows[-1].id)


def _subscriptions_to_ask(session: Session, now: datetime) -> Iterator[list[_Ask]]:
    """Live gateway subscriptions whose period ran out here (all of them: they would lapse
    unasked; ``RECONCILE_BATCH`` at a time by id, as their period moves when asked), then up
    to ``AHEAD_BATCH`` of those whose period ends within ``AHEAD``, soonest first: the
    gateway charges a renewal around the period's end, so a lost webhook is found within a
    run or two of the charge, not only once the period ran out here."""
    gateway = (Subscription.status.in_(access.LIVE_SUBSCRIPTION),
               Subscription.provider_ref.is_not(None))
    columns = (Subscription.id, Subscription.institution_id, Subscription.provider,
               Subscription.provider_ref)
    # Read first: a lapsed subscription asked below may move into this window, and is not
    # asked twice; periods only move on, so none of these can lapse meanwhile.
    soon = [_Ask("subscription", *r) for r in session.execute(select(*columns).where(
        *gateway, Subscription.current_period_end > now,
        Subscription.current_period_end <= now + AHEAD)
        .order_by(Subscription.current_period_end, Subscription.id).limit(AHEAD_BATCH))]
    session.commit()
    after = ""
    while True:
        rows = session.execute(select(*columns).where(
            *gateway, Subscription.current_period_end <= now, Subscription.id > after)
            .order_by(Subscription.id).limit(RECONCILE_BATCH)).all()
        session.commit()
        if rows:
            yield [_Ask("subscription", *r) for r in rows]
        if len(rows) < RECONCILE_BATCH:
            break
        after = rows[-1].id
    if soon:
        yield soon


def _ask(session: Session, kalpla: Any, ask: _Ask, keys: dict[tuple[str, str], Any],
         tally: _Tally, now: datetime) -> None:
    """Ask the gateway about one order or subscription with no transaction open, then apply
    its answer in a short transaction of its own. A failure is logged and counted, its
    writes (and its events' claims) rolled back, so the next run tries again."""
    where = {ask.kind: ask.id, "provider": ask.provider}
    try:
        provider = orders.provider_of(kalpla, ask.provider)
        if ask.kind == "subscription" and not hasattr(provider, "poll_subscription"):
            return
        key = (ask.institution_id, ask.provider)
        if key not in keys:
            keys[key] = credentials.load(session, kalpla, *key)
            session.commit()  # the read ends before the gateway is asked
        found = provider.poll(keys[key], ask.ref) if ask.kind == "order" \
            else provider.poll_subscription(keys[key], ask.ref)
    except (ProviderError, APIError) as exc:
        session.rollback()
        tally.failed += 1
        log.warning("reconcile: %s", getattr(exc, "detail", None) or exc, extra=where)
        return
    except Exception:
        session.rollback()
        tally.failed += 1
        log.exception("reconcile: asking the gateway failed", extra=where)
        return
    tally.asked += 1
    try:
        applied = process(session, kalpla, ask.institution_id, ask.provider, found,
                          now).applied
        session.commit()
    except Exception:
        session.rollback()
        tally.failed += 1
        log.exception("reconcile: applying the gateway's answer failed", extra=where)
        return
    tally.applied += applied


def reconcile(session: Session, kalpla: Any, now: datetime) -> dict[str, int]:
    """Ask each gateway about pending orders, and about its subscriptions whose period ran
    out or ends soon, and apply what it says (as lost webhooks would have; a renewal found
    this way is an order paid when the gateway charged it and moves the period on); then
    expire pending orders past their time and subscriptions still past their period.

    Work is read in bounded batches and committed an order (or subscription) at a time, each
    gateway call made with no transaction open; one that fails is counted in ``failed`` and
    the rest go on."""
    tally = _Tally()
    keys: dict[tuple[str, str], Any] = {}
    for batch in _pending_orders(session, now):
        for ask in batch:
            _ask(session, kalpla, ask, keys, tally, now)
    for batch in _subscriptions_to_ask(session, now):
        for ask in batch:
            _ask(session, kalpla, ask, keys, tally, now)
    expired = 0
    while True:
        done, more = orders.expire_due(session, now, limit=RECONCILE_BATCH)
        session.commit()
        expired += done
        if not more:
            break
    lapsed = access.expire_subscriptions(session, kalpla, now)
    stale = _drop_stale_held_refunds(session, now)
    # Refunds of payments no order has taken yet (a renewal's event still to come).
    held = session.scalar(select(func.count()).select_from(HeldRefund)) or 0
    return {"asked": tally.asked, "applied": tally.applied, "failed": tally.failed,
            "expired_orders": expired, "expired_subscriptions": lapsed, "held_refunds": held,
            "dropped_refunds": stale}


def _drop_stale_held_refunds(session: Session, now: datetime) -> int:
    """Held refunds older than ``HELD_REFUND_DAYS`` are of payments Kalpla will not see (the
    gateway account's other sales): a renewal's own event, or reconcile, comes within days of
    its charge, and its refund after that. Dropped with a warning, so they do not pile up."""
    stale = list(session.scalars(select(HeldRefund).where(
        HeldRefund.received_at <= now - timedelta(days=HELD_REFUND_DAYS))
        .order_by(HeldRefund.id)))
    for row in stale:
        log.warning("dropping a refund held for a payment no order took", extra={
            "provider": row.provider, "payment_id": row.payment_id, "event_id": row.event_id})
        session.delete(row)
    session.flush()
    return len(stale)
