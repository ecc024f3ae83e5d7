"""Which order a gateway event is about when it names more than one: the payment first, then
the checkout's reference, then the order id the gateway carried in its metadata. Razorpay
copies a subscription's notes (the plan's first order) onto every renewal payment, and a
Stripe charge may carry the first order in its metadata: a refund of a renewal must refund
that renewal (or wait for it), never the plan's first order, which would end the
subscription."""

from __future__ import annotations

import time
from typing import Any

from kalpla_payments.models import HeldRefund, Order, Refund
from payments_support import (
    DAY,
    buy_plan,
    complete_subscription,
    fake_server,
    ok,
    plan_orders,
    plan_school,
    post_razorpay,
    post_stripe,
    razorpay_charged,
    stripe_event,
    stripe_invoice,
)
from sqlalchemy import func, select


def _money(s: Any) -> list[tuple[Any, ...]]:
    """Each plan order's kind, status and refunded amount, and how many refunds are held."""
    with s.kalpla.db.session() as db:
        rows = [tuple(r) for r in db.execute(select(
            Order.invoice_number, Order.kind, Order.status, Order.amount_refunded)
            .where(Order.plan_id.is_not(None)).order_by(Order.invoice_number))]
        refunds = db.scalar(select(func.count()).select_from(Refund))
        held = db.scalar(select(func.count()).select_from(HeldRefund))
    return [*rows, ("refunds", refunds), ("held", held)]


def _stripe_refund(event_id: str, intent: str, first_id: str, refunded: int) -> bytes:
    """``charge.refunded`` of a renewal's charge that carries the plan's first order in its
    metadata (as a charge made with the subscription's metadata does)."""
    return stripe_event(event_id, "charge.refunded", {
        "id": f"ch_{intent}", "object": "charge", "payment_intent": intent, "amount": 1000,
        "amount_captured": 1000, "amount_refunded": refunded,
        "metadata": {"order_id": first_id}})


def test_a_stripe_refund_naming_the_first_order_in_metadata_refunds_the_renewal(make_app):
    with fake_server("stripe") as fake:
        s, course, plan_id = plan_school(make_app, fake, "stripe")
        first = buy_plan(s, plan_id)
        complete_subscription(s, fake, first)
        assert ok(s.enroll(s.student, course), 201)["status"] == "active"
        end = int(time.time()) + 30 * DAY
        post_stripe(s, stripe_invoice("in_2", "subscription_cycle", 1000, first["id"], end,
                                      payment_intent="pi_r2"))

        post_stripe(s, _stripe_refund("evt_r2", "pi_r2", first["id"], 1000))
        assert _money(s) == [(1, "purchase", "paid", 0), (2, "renewal", "refunded", 1000),
                             ("refunds", 1), ("held", 0)]
        assert s.status(course, s.student) == "active"

        # The next renewal's refund overtakes the renewal: held, not put on the first order.
        post_stripe(s, _stripe_refund("evt_r3", "pi_r3", first["id"], 400))
        assert _money(s)[0] == (1, "purchase", "paid", 0)
        assert _money(s)[-1] == ("held", 1)
        assert s.status(course, s.student) == "active"
        post_stripe(s, stripe_invoice("in_3", "subscription_cycle", 1000, first["id"],
                                      end + 30 * DAY, payment_intent="pi_r3"))
        assert _money(s) == [(1, "purchase", "paid", 0), (2, "renewal", "refunded", 1000),
                             (3, "renewal", "partially_refunded", 400),
                             ("refunds", 2), ("held", 0)]
        assert s.status(course, s.student) == "active"


def _razorpay_refund(payment_id: str, first_id: str, refunded: int) -> dict[str, Any]:
    """Razorpay's ``refund.processed`` of a subscription's payment: the payment carries the
    subscription's notes (the plan's first order) and an order Razorpay made for it."""
    return {"event": "refund.processed", "payload": {
        "refund": {"entity": {"id": f"rfnd_{payment_id}", "payment_id": payment_id,
                              "amount": refunded}},
        "payment": {"entity": {"id": payment_id, "order_id": f"order_auto_{payment_id}",
                               "amount": 1180, "amount_refunded": refunded,
                               "notes": {"order_id": first_id}}}}}


def test_a_razorpay_refund_with_the_subscription_notes_refunds_the_renewal(make_app):
    with fake_server("razorpay") as fake:
        s, course, plan_id = plan_school(make_app, fake, "razorpay")
        first = buy_plan(s, plan_id)
        sub_ref = first["checkout"]["razorpay_subscription_id"]
        end = int(time.time()) + 30 * DAY
        post_razorpay(s, razorpay_charged(sub_ref, first["id"], "pay_1", 1, end), "evt_c1")
        post_razorpay(s, razorpay_charged(sub_ref, first["id"], "pay_2", 2, end + 30 * DAY),
                      "evt_c2")
        assert ok(s.enroll(s.student, course), 201)["status"] == "active"

        post_razorpay(s, _razorpay_refund("pay_2", first["id"], 1180), "evt_r2")
        assert _money(s) == [(1, "purchase", "paid", 0), (2, "renewal", "refunded", 1180),
                             ("refunds", 1), ("held", 0)]
        assert s.status(course, s.student) == "active"

        # A later payment's refund ahead of its subscription.charged is held ...
        post_razorpay(s, _razorpay_refund("pay_3", first["id"], 500), "evt_r3")
        assert _money(s)[0] == (1, "purchase", "paid", 0)
        assert _money(s)[-1] == ("held", 1)
        # ... and applied to that charge's renewal.
        post_razorpay(s, razorpay_charged(sub_ref, first["id"], "pay_3", 3, end + 60 * DAY),
                      "evt_c3")
        assert _money(s) == [(1, "purchase", "paid", 0), (2, "renewal", "refunded", 1180),
                             (3, "renewal", "partially_refunded", 500),
                             ("refunds", 2), ("held", 0)]
        assert s.status(course, s.student) == "active"
        # The first payment's own refund still finds the first order by its payment.
        post_razorpay(s, _razorpay_refund("pay_1", first["id"], 1180), "evt_r1")
        assert _money(s)[0] == (1, "purchase", "refunded", 1180)
        assert s.status(course, s.student) == "dropped"
        assert [o["status"] for o in plan_orders(s, s.student)] == [
            "partially_refunded", "refunded", "refunded"]
