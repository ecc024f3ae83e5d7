"""Stripe Checkout paid by a delayed method (bank debit, transfer), over HTTP against a local
fake Stripe API: a session completed ``unpaid`` pays nothing and the order waits unexpired;
``checkout.session.async_payment_succeeded`` pays it once, ``…_failed`` fails it, and
``kalpla payments reconcile`` learns the same from the payment behind the session."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from kalpla_payments.models import Order, OrderEvent
from payments_support import (
    STRIPE_KEYS,
    deliver_at_once,
    fake_server,
    ok,
    school,
    stripe_event,
    stripe_signature,
)
from sqlalchemy import func, select, update

HOOK = "/api/v1/payments/webhooks/stripe/school"


def _school(make_app: Any, fake: Any) -> Any:
    s = school(make_app, {"provider": "stripe"}, PAYMENTS_STRIPE_API_BASE=fake.url)
    s.set_keys("stripe", STRIPE_KEYS)
    return s


def _post(s: Any, body: bytes) -> Any:
    return ok(s.client.post(HOOK, data=body, headers={
        "Stripe-Signature": stripe_signature(body, STRIPE_KEYS["webhook_secret"])}))


def _session(fake: Any, order: dict[str, Any]) -> dict[str, Any]:
    return fake.objects[order["checkout"]["url"].rsplit("/", 1)[1]]  # type: ignore[no-any-return]


def _completed_unpaid(fake: Any, order: dict[str, Any], event_id: str = "evt_done") -> bytes:
    cs = _session(fake, order)
    cs.update(status="complete", payment_status="unpaid")
    return stripe_event(event_id, "checkout.session.completed", cs)


def _paid_events(s: Any, order_id: str) -> int:
    with s.kalpla.db.session() as db:
        return int(db.scalar(select(func.count()).select_from(OrderEvent).where(
            OrderEvent.order_id == order_id, OrderEvent.to_status == "paid")) or 0)


def test_a_delayed_payment_waits_then_succeeds_exactly_once(make_app):
    with fake_server("stripe") as fake:
        s = _school(make_app, fake)
        cid = s.course("paid", price=2000)
        order = ok(s.client.post("/api/v1/payments/orders", json={"course_id": cid},
                                 headers=s.auth(s.student)), 201)
        order_id = order["id"]
        _post(s, _completed_unpaid(fake, order))
        got = s.order(order_id)
        assert (got["status"], got["invoice_number"], got["checkout"]["processing"]) == (
            "pending", None, True)
        # Enrolling meanwhile: held, told the payment is on its way, with the same order.
        held = ok(s.enroll(s.student, cid), 202)
        assert held["action"]["order_id"] == order_id and held["action"]["processing"]
        assert "processed" in held["pending_reason"]
        assert datetime.fromisoformat(got["expires_at"]) > datetime.now(UTC) + timedelta(
            days=13)

        cs = {**_session(fake, order), "payment_status": "paid"}
        body = stripe_event("evt_async_ok", "checkout.session.async_payment_succeeded", cs)
        answers = deliver_at_once(s.app, HOOK, [(body, {
            "Stripe-Signature": stripe_signature(body, STRIPE_KEYS["webhook_secret"])})] * 10)
        assert sum(a["applied"] for a in answers) == 1
        got = s.order(order_id)
        assert (got["status"], got["amount_paid"], got["invoice_number"]) == ("paid", 2000, 1)
        assert s.status(cid, s.student) == "active"
        assert _paid_events(s, order_id) == 1
        # The completion delivered again afterwards does not unpay or re-mark it.
        _post(s, _completed_unpaid(fake, order, "evt_done_again"))
        assert s.order(order_id)["status"] == "paid"


def test_a_delayed_payment_that_fails_fails_the_order(make_app):
    with fake_server("stripe") as fake:
        s = _school(make_app, fake)
        cid = s.course("paid", price=2000)
        ok(s.client.post("/api/v1/payments/coupons", json={
            "code": "ONCE", "kind": "percent", "value": 10, "max_uses": 1},
            headers=s.auth(s.admin)), 201)
        order = ok(s.client.post("/api/v1/payments/orders",
                                 json={"course_id": cid, "coupon": "ONCE"},
                                 headers=s.auth(s.student)), 201)
        assert ok(s.enroll(s.student, cid), 202)["action"]["order_id"] == order["id"]
        _post(s, _completed_unpaid(fake, order))
        cs = _session(fake, order)
        _post(s, stripe_event("evt_async_ko", "checkout.session.async_payment_failed", cs))
        assert s.order(order["id"])["status"] == "failed"
        assert s.status(cid, s.student) == "pending"
        coupons = ok(s.client.get("/api/v1/payments/coupons", headers=s.auth(s.admin)))
        assert coupons["items"][0]["used_count"] == 0
        # The student may buy again, with the coupon the failed order gave back; paying
        # that order lets in the enrollment held all along.
        again = ok(s.client.post("/api/v1/payments/orders",
                                 json={"course_id": cid, "coupon": "ONCE"},
                                 headers=s.auth(s.student)), 201)
        cs = _session(fake, again)
        cs.update(status="complete", payment_status="paid")
        _post(s, stripe_event("evt_paid", "checkout.session.completed", cs))
        assert s.order(again["id"])["status"] == "paid"
        assert s.status(cid, s.student) == "active"
        with s.kalpla.db.session() as db:
            reasons = list(db.scalars(select(OrderEvent.reason).where(
                OrderEvent.order_id == order["id"]).order_by(OrderEvent.id)))
        assert reasons[1:] == ["checkout.session.completed: the payment is processing.",
                               "checkout.session.async_payment_failed"]


def _overdue(s: Any, order_id: str) -> None:
    """The order's checkout time ran out (as it would after an hour)."""
    with s.kalpla.db.session() as db:
        db.execute(update(Order).where(Order.id == order_id).values(
            expires_at=datetime.now(UTC) - timedelta(minutes=1)))
        db.commit()


def test_reconcile_waits_for_a_processing_payment_and_applies_its_outcome(make_app):
    with fake_server("stripe") as fake:
        s = _school(make_app, fake)
        a, b = s.course("alpha", price=1000), s.course("beta", price=1500)
        first = s.order(ok(s.enroll(s.student, a), 202)["action"]["order_id"])
        second = s.order(ok(s.enroll(s.student, b), 202)["action"]["order_id"])
        for order in (first, second):
            # Completed with a bank debit; the webhook saying so was lost.
            _session(fake, order).update(status="complete", payment_status="unpaid")
            fake.objects[_session(fake, order)["payment_intent"]]["status"] = "processing"
            _overdue(s, order["id"])

        out = s.reconcile()
        assert "asked=2" in out and "applied=2" in out and "expired_orders=0" in out, out
        for order in (first, second):
            got = s.order(order["id"])
            assert got["status"] == "pending" and got["checkout"]["processing"]
        out = s.reconcile()
        assert "applied=0" in out and "expired_orders=0" in out, out

        # The bank answers: one debit went through (the session has not caught up yet), the
        # other bounced.
        fake.objects[_session(fake, first)["payment_intent"]]["status"] = "succeeded"
        fake.objects[_session(fake, second)["payment_intent"]]["status"] = \
            "requires_payment_method"
        s.reconcile()
        assert s.order(first["id"])["status"] == "paid"
        assert s.status(a, s.student) == "active"
        assert s.order(second["id"])["status"] == "failed"
        assert s.status(b, s.student) == "pending"
        assert "asked=0" in s.reconcile()


def test_a_subscription_paid_by_a_delayed_method(make_app):
    with fake_server("stripe") as fake:
        s = _school(make_app, fake)
        cid = s.course("alpha", price=1000)
        plan = ok(s.client.post("/api/v1/payments/plans", json={
            "name": "All", "amount": 300, "currency": "INR", "period_days": 30,
            "all_courses": True}, headers=s.auth(s.admin)), 201)
        order = ok(s.client.post("/api/v1/payments/orders", json={"plan_id": plan["id"]},
                                 headers=s.auth(s.student)), 201)
        cs = _session(fake, order)
        cs.update(status="complete", payment_status="unpaid", subscription="sub_9",
                  invoice="in_9")
        fake.objects["in_9"] = {"id": "in_9", "object": "invoice", "status": "open"}
        _post(s, stripe_event("evt_sub_done", "checkout.session.completed", cs))
        assert s.order(order["id"])["status"] == "pending"
        assert ok(s.client.get("/api/v1/payments/subscriptions",
                               headers=s.auth(s.student)))["items"] == []
        _overdue(s, order["id"])
        assert "expired_orders=0" in s.reconcile()
        assert s.order(order["id"])["status"] == "pending"

        fake.objects["in_9"]["status"] = "paid"
        s.reconcile()
        assert s.order(order["id"])["status"] == "paid"
        assert ok(s.enroll(s.student, cid), 201)["status"] == "active"
        # The subscription was linked to Stripe's, whose deletion ends it.
        _post(s, stripe_event("evt_del", "customer.subscription.deleted", {
            "id": "sub_9", "status": "canceled", "metadata": {}}))
        assert s.status(cid, s.student) == "dropped"
        with s.kalpla.db.session() as db:
            assert db.scalar(select(func.count()).select_from(Order)) == 1
