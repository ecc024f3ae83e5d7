"""Renewals of gateway subscriptions as orders of their own, over HTTP against local fake
gateways with webhooks signed as Stripe and Razorpay sign them: the receipt, the reports, the
subscriber's list, refunds of a renewal, concurrent and out-of-order deliveries, and renewals
whose webhook was lost, found by ``kalpla payments reconcile``."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from kalpla_payments.models import Order, OrderEvent, Subscription
from payments_support import (
    DAY,
    STRIPE_HOOK,
    STRIPE_KEYS,
    deliver_at_once,
    fake_server,
    ok,
    recorded_events,
    stripe_event,
    stripe_signature,
)
from payments_support import buy_plan as _buy_plan
from payments_support import complete_subscription as _complete_subscription
from payments_support import plan_orders as _orders
from payments_support import plan_school as _plan_school
from payments_support import post_razorpay as _razorpay
from payments_support import post_stripe as _stripe
from payments_support import razorpay_charged as _charged
from payments_support import stripe_invoice as _invoice
from sqlalchemy import func, select, update


def _paid_events(s: Any, order_id: str) -> list[tuple[str | None, str]]:
    with s.kalpla.db.session() as db:
        return [(a, b) for a, b in db.execute(select(
            OrderEvent.from_status, OrderEvent.to_status).where(
            OrderEvent.order_id == order_id).order_by(OrderEvent.id))]


def test_a_stripe_renewal_is_an_order_with_a_receipt_counted_in_the_reports(make_app,
                                                                           monkeypatch):
    with fake_server("stripe") as fake:
        s, course, plan_id = _plan_school(make_app, fake, "stripe", tax_rate_bp=1800)
        first = _buy_plan(s, plan_id)
        assert first["kind"] == "purchase" and first["total"] == 1180
        _complete_subscription(s, fake, first)
        end = int(time.time()) + 30 * DAY
        # The first invoice is the checkout's own payment: no second order for it.
        _stripe(s, _invoice("in_1", "subscription_create", 1180, first["id"], end))
        assert [o["id"] for o in _orders(s, s.student)] == [first["id"]]
        assert ok(s.enroll(s.student, course), 201)["status"] == "active"

        seen = recorded_events(s.kalpla, monkeypatch)
        renewed_to = end + 30 * DAY
        _stripe(s, _invoice("in_2", "subscription_cycle", 1180, first["id"], renewed_to,
                            payment_intent="pi_r2"))
        mine = _orders(s, s.student)
        assert [o["kind"] for o in mine] == ["renewal", "purchase"]
        renewal = mine[0]
        (sub,) = ok(s.client.get("/api/v1/payments/subscriptions",
                                 headers=s.auth(s.student)))["items"]
        assert (renewal["status"], renewal["plan_id"], renewal["subscription_id"],
                renewal["invoice_number"], renewal["currency"]) == (
            "paid", plan_id, sub["id"], 2, "INR")
        # Stripe computed no tax: the institution's 18 % is inside the amount charged.
        assert (renewal["total"], renewal["amount_paid"], renewal["tax"],
                renewal["subtotal"]) == (1180, 1180, 180, 1000)
        assert sub["current_period_end"].startswith(
            time.strftime("%Y-%m-%d", time.gmtime(renewed_to)))
        assert _paid_events(s, renewal["id"]) == [(None, "paid")]
        paid = [e for hook, e in seen if hook == "kalpla_order_paid"]
        assert [(e.order_id, e.plan_id, e.amount, e.invoice_number) for e in paid] == [
            (renewal["id"], plan_id, 1180, 2)]

        receipt = ok(s.client.get(f"/api/v1/payments/orders/{renewal['id']}/receipt",
                                  headers=s.auth(s.student)))
        assert (receipt["invoice_number"], receipt["kind"], receipt["total"]) == (
            "school-000002", "renewal", 1180)
        (day,) = ok(s.client.get("/api/v1/payments/reports/revenue-by-day",
                                 headers=s.auth(s.admin)))["items"]
        assert (day["orders"], day["paid"], day["net"]) == (2, 2360, 2360)
        assert ok(s.client.get("/api/v1/payments/orders",
                               headers=s.auth(s.student2)))["items"] == []

        # A later renewal in the newer API's shape, with a tax Stripe computed.
        _stripe(s, stripe_event("evt_in_3", "invoice.paid", {
            "id": "in_3", "object": "invoice", "billing_reason": "subscription_cycle",
            "parent": {"subscription_details": {"subscription": "sub_1",
                                                "metadata": {"order_id": first["id"]}}},
            "payments": {"data": [{"status": "paid",
                                   "payment": {"payment_intent": "pi_r3"}}]},
            "amount_paid": 1180, "currency": "inr", "total_taxes": [{"amount": 100}],
            "lines": {"data": [{"period": {"end": renewed_to + 30 * DAY}}]}}))
        third = _orders(s, s.student)[0]
        assert (third["invoice_number"], third["tax"], third["subtotal"]) == (3, 100, 1080)

        # Stripe refunds the second renewal's charge: that order is refunded, nothing else.
        _stripe(s, stripe_event("evt_refund", "charge.refunded", {
            "id": "ch_r2", "object": "charge", "payment_intent": "pi_r2", "amount": 1180,
            "amount_captured": 1180, "amount_refunded": 1180, "metadata": {}}))
        assert s.order(renewal["id"])["status"] == "refunded"
        assert s.order(first["id"])["status"] == "paid"
        assert s.order(third["id"])["status"] == "paid"
        assert s.status(course, s.student) == "active"
        (day,) = ok(s.client.get("/api/v1/payments/reports/revenue-by-day",
                                 headers=s.auth(s.admin)))["items"]
        assert (day["orders"], day["paid"], day["refunded"]) == (3, 3540, 1180)
        # An admin refunds the other renewal through Stripe.
        ok(s.client.post(f"/api/v1/payments/orders/{third['id']}/refund",
                         json={"reason": "goodwill", "amount": 500}, headers=s.auth(s.admin)))
        assert [c[2]["payment_intent"] for c in fake.calls if c[1] == "/v1/refunds"] == [
            "pi_r3"]


def test_one_renewal_delivered_ten_times_at_once_makes_one_order(make_app):
    with fake_server("stripe") as fake:
        s, _, plan_id = _plan_school(make_app, fake, "stripe")
        first = _buy_plan(s, plan_id)
        _complete_subscription(s, fake, first)
        body = _invoice("in_2", "subscription_cycle", 1000, first["id"],
                        int(time.time()) + 60 * DAY)
        # Ten deliveries of one event, racing ten other events of the same charge (a
        # resend: each is claimed and applied), make one order: the charge's ref is unique.
        others = [body.replace(b'"evt_in_2"', f'"evt_in_2_{n}"'.encode()) for n in range(10)]
        answers = deliver_at_once(s.app, STRIPE_HOOK, [(b, {
            "Stripe-Signature": stripe_signature(b, STRIPE_KEYS["webhook_secret"])})
            for b in [body] * 10 + others])
        assert sum(a["applied"] for a in answers) == 11
        assert sum(a["duplicates"] for a in answers) == 9
        with s.kalpla.db.session() as db:
            rows = db.execute(select(Order.kind, Order.invoice_number, Order.provider_ref)
                              .order_by(Order.invoice_number)).all()
            paid = db.scalar(select(func.count()).select_from(OrderEvent).where(
                OrderEvent.to_status == "paid"))
        assert [tuple(r) for r in rows] == [("purchase", 1, rows[0][2]),
                                            ("renewal", 2, "in_2")]
        assert paid == 2


def test_a_renewal_before_the_checkout_completes_pays_the_plan_first(make_app):
    with fake_server("stripe") as fake:
        s, course, plan_id = _plan_school(make_app, fake, "stripe")
        first = _buy_plan(s, plan_id)
        assert ok(s.enroll(s.student, course), 202)["status"] == "pending"
        end = int(time.time()) + 60 * DAY
        _stripe(s, _invoice("in_2", "subscription_cycle", 1000, first["id"], end,
                            payment_intent="pi_r2"))
        # The first period was paid, or there would be no renewal: both orders are paid, in
        # the order they were paid for, and the subscription runs to the renewal's end.
        got = s.order(first["id"])
        assert (got["status"], got["invoice_number"]) == ("paid", 1)
        assert [(o["kind"], o["invoice_number"]) for o in _orders(s, s.student)] == [
            ("renewal", 2), ("purchase", 1)]
        assert s.status(course, s.student) == "active"
        (sub,) = ok(s.client.get("/api/v1/payments/subscriptions",
                                 headers=s.auth(s.student)))["items"]
        assert sub["current_period_end"].startswith(time.strftime("%Y-%m-%d",
                                                                  time.gmtime(end)))
        # The checkout's own events follow late and change nothing but name the payment:
        # the payment intent that paid the first invoice (asked of Stripe), not the invoice.
        intent = _complete_subscription(s, fake, first)
        _stripe(s, _invoice("in_1", "subscription_create", 1000, first["id"], end - 30 * DAY))
        assert len(_orders(s, s.student)) == 2
        with s.kalpla.db.session() as db:
            assert db.scalar(select(Order.provider_payment_id).where(
                Order.id == first["id"])) == intent
        # Its subscription was linked to the gateway's: deleting it there ends it here.
        _stripe(s, stripe_event("evt_del", "customer.subscription.deleted", {
            "id": "sub_1", "status": "canceled", "metadata": {}}))
        assert s.status(course, s.student) == "dropped"
        # A renewal charged after that is money taken (an order) but revives nothing.
        _stripe(s, _invoice("in_3", "subscription_cycle", 1000, first["id"], end + 30 * DAY))
        assert [o["kind"] for o in _orders(s, s.student)] == [
            "renewal", "renewal", "purchase"]
        assert ok(s.client.get("/api/v1/payments/subscriptions",
                               headers=s.auth(s.student)))["items"][0]["status"] == "canceled"


def test_razorpay_charges_after_the_first_are_renewal_orders(make_app):
    with fake_server("razorpay") as fake:
        s, course, plan_id = _plan_school(make_app, fake, "razorpay", tax_rate_bp=1800)
        first = _buy_plan(s, plan_id)
        sub_ref = first["checkout"]["razorpay_subscription_id"]
        end = int(time.time()) + 30 * DAY
        _razorpay(s, _charged(sub_ref, first["id"], "pay_1", 1, end), "evt_c1")
        assert s.order(first["id"])["status"] == "paid"
        assert len(_orders(s, s.student)) == 1
        assert ok(s.enroll(s.student, course), 201)["status"] == "active"

        for _ in range(2):
            _razorpay(s, _charged(sub_ref, first["id"], "pay_2", 2, end + 30 * DAY), "evt_c2")
        renewal, purchase = _orders(s, s.student)
        assert purchase["id"] == first["id"]
        assert (renewal["kind"], renewal["status"], renewal["total"], renewal["tax"],
                renewal["invoice_number"], renewal["plan_id"]) == (
            "renewal", "paid", 1180, 180, 2, plan_id)
        (sub,) = ok(s.client.get("/api/v1/payments/subscriptions",
                                 headers=s.auth(s.student)))["items"]
        assert renewal["subscription_id"] == sub["id"]
        assert sub["current_period_end"].startswith(
            time.strftime("%Y-%m-%d", time.gmtime(end + 30 * DAY)))
        ok(s.client.get(f"/api/v1/payments/orders/{renewal['id']}/receipt",
                        headers=s.auth(s.student)))
        # Razorpay's refund of the renewal's payment refunds that order only.
        _razorpay(s, {"event": "refund.processed", "payload": {
            "refund": {"entity": {"id": "rfnd_1", "payment_id": "pay_2", "amount": 1180}},
            "payment": {"entity": {"id": "pay_2", "amount": 1180, "amount_refunded": 1180,
                                   "notes": {}}}}}, "evt_r")
        assert s.order(renewal["id"])["status"] == "refunded"
        assert s.order(first["id"])["status"] == "paid"
        assert s.status(course, s.student) == "active"


def test_a_razorpay_renewal_before_the_first_charge(make_app):
    with fake_server("razorpay") as fake:
        s, course, plan_id = _plan_school(make_app, fake, "razorpay")
        first = _buy_plan(s, plan_id)
        sub_ref = first["checkout"]["razorpay_subscription_id"]
        end = int(time.time()) + 60 * DAY
        _razorpay(s, _charged(sub_ref, first["id"], "pay_2", 2, end), "evt_c2")
        assert [(o["kind"], o["status"], o["invoice_number"]) for o in _orders(s, s.student)] \
            == [("renewal", "paid", 2), ("purchase", "paid", 1)]
        assert ok(s.enroll(s.student, course), 201)["status"] == "active"
        # The first charge's event comes late: it only names the first order's payment,
        # which an admin's refund then goes through.
        _razorpay(s, _charged(sub_ref, first["id"], "pay_1", 1, end - 30 * DAY), "evt_c1")
        assert len(_orders(s, s.student)) == 2
        ok(s.client.post(f"/api/v1/payments/orders/{first['id']}/refund",
                         json={"reason": "asked"}, headers=s.auth(s.admin)))
        assert [c[1] for c in fake.calls if c[1].endswith("/refund")] == [
            "/v1/payments/pay_1/refund"]


def _lapse(s: Any) -> None:
    """Every subscription's period ran out here (its renewal's webhook never came)."""
    with s.kalpla.db.session() as db:
        db.execute(update(Subscription).values(
            current_period_end=datetime.now(UTC) - timedelta(minutes=1)))
        db.commit()


def _period_end(s: Any) -> str:
    (sub,) = ok(s.client.get("/api/v1/payments/subscriptions",
                             headers=s.auth(s.student)))["items"]
    return str(sub["current_period_end"])


def test_reconcile_records_a_stripe_renewal_whose_webhook_was_lost(make_app):
    with fake_server("stripe") as fake:
        s, course, plan_id = _plan_school(make_app, fake, "stripe")
        first = _buy_plan(s, plan_id)
        _complete_subscription(s, fake, first)
        assert ok(s.enroll(s.student, course), 201)["status"] == "active"
        now = int(time.time())
        invoice = {"object": "invoice", "status": "paid", "subscription": "sub_1",
                   "currency": "inr", "amount_paid": 1000,
                   "subscription_details": {"metadata": {"order_id": first["id"]}}}
        fake.objects["in_1"] = {**invoice, "id": "in_1", "billing_reason": "subscription_create",
                                "created": now - 30 * DAY,
                                "lines": {"data": [{"period": {"end": now}}]}}
        fake.objects["in_2"] = {**invoice, "id": "in_2", "billing_reason": "subscription_cycle",
                                "created": now, "payment_intent": "pi_r2",
                                "lines": {"data": [{"period": {"end": now + 30 * DAY}}]}}
        fake.objects["sub_1"] = {"id": "sub_1", "object": "subscription", "status": "active",
                                 "current_period_end": now + 30 * DAY, "metadata": {}}
        _lapse(s)

        out = s.reconcile()
        assert "asked=1" in out and "expired_subscriptions=0" in out, out
        assert [(o["kind"], o["invoice_number"], o["total"]) for o in _orders(s, s.student)] \
            == [("renewal", 2, 1000), ("purchase", 1, 1000)]
        assert _period_end(s).startswith(time.strftime("%Y-%m-%d",
                                                       time.gmtime(now + 30 * DAY)))
        assert s.status(course, s.student) == "active"
        assert "asked=0" in s.reconcile()

        # Cancelled at Stripe, the deletion's webhook lost too: the next lapse ends it.
        fake.objects["sub_1"]["status"] = "canceled"
        _lapse(s)
        out = s.reconcile()
        assert "asked=1" in out, out
        assert s.status(course, s.student) == "dropped"
        assert len(_orders(s, s.student)) == 2


def test_reconcile_records_a_razorpay_renewal_whose_webhook_was_lost(make_app):
    with fake_server("razorpay") as fake:
        s, course, plan_id = _plan_school(make_app, fake, "razorpay")
        first = _buy_plan(s, plan_id)
        sub_ref = first["checkout"]["razorpay_subscription_id"]
        now = int(time.time())
        _razorpay(s, _charged(sub_ref, first["id"], "pay_1", 1, now), "evt_c1")
        invoice = {"entity": "invoice", "subscription_id": sub_ref, "status": "paid",
                   "amount": 1180, "amount_paid": 1180, "currency": "INR"}
        fake.objects["inv_1"] = {**invoice, "id": "inv_1", "payment_id": "pay_1",
                                 "billing_start": now - 30 * DAY, "billing_end": now}
        fake.objects["inv_2"] = {**invoice, "id": "inv_2", "payment_id": "pay_2",
                                 "billing_start": now, "billing_end": now + 30 * DAY}
        fake.objects["inv_3"] = {**invoice, "id": "inv_3", "payment_id": None,
                                 "status": "issued", "billing_start": now + 30 * DAY}
        fake.objects[sub_ref].update(status="active", paid_count=2,
                                     current_end=now + 30 * DAY)
        _lapse(s)

        out = s.reconcile()
        assert "asked=1" in out and "expired_subscriptions=0" in out, out
        assert [(o["kind"], o["invoice_number"], o["provider"]) for o in
                _orders(s, s.student)] == [("renewal", 2, "razorpay"),
                                           ("purchase", 1, "razorpay")]
        assert _period_end(s).startswith(time.strftime("%Y-%m-%d",
                                                       time.gmtime(now + 30 * DAY)))
        assert ok(s.enroll(s.student, course), 201)["status"] == "active"
