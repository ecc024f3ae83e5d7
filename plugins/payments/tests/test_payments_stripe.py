"""Stripe over HTTP against a local fake Stripe API: checkout, signed webhooks (the
``Stripe-Signature`` scheme), exactly-once processing under concurrent deliveries, out-of-order
events, refunds, subscriptions and reconciliation."""

from __future__ import annotations

import threading
import time
from typing import Any

from kalpla_payments.models import OrderEvent, ProviderEvent
from payments_support import (
    STRIPE_KEYS,
    fake_server,
    ok,
    problem,
    school,
    stripe_event,
    stripe_signature,
)
from sqlalchemy import func, select

HOOK = "/api/v1/payments/webhooks/stripe/school"


def _stripe_school(make_app: Any, fake: Any, **settings: Any) -> Any:
    s = school(make_app, {"provider": "stripe", **settings},
               PAYMENTS_STRIPE_API_BASE=fake.url)
    s.set_keys("stripe", STRIPE_KEYS)
    return s


def _post(s: Any, body: bytes, signature: str | None = None) -> Any:
    sig = signature or stripe_signature(body, STRIPE_KEYS["webhook_secret"])
    return s.client.post(HOOK, data=body, headers={"Stripe-Signature": sig,
                                                   "Content-Type": "application/json"})


def _completed(fake: Any, session_id: str, event_id: str = "evt_paid") -> bytes:
    cs = fake.objects[session_id]
    cs.update(status="complete", payment_status="paid")
    return stripe_event(event_id, "checkout.session.completed", cs)


def test_buy_with_a_coupon_pay_by_webhook_then_refund(make_app):
    with fake_server("stripe") as fake:
        s = _stripe_school(make_app, fake, tax_rate_bp=1800, tax_inclusive=True)
        cid = s.course("paid", price=11800)
        ok(s.client.post("/api/v1/payments/coupons", json={
            "code": "half", "kind": "percent", "value": 50, "course_id": cid},
            headers=s.auth(s.admin)), 201)
        order = ok(s.client.post("/api/v1/payments/orders",
                                 json={"course_id": cid, "coupon": "HALF"},
                                 headers=s.auth(s.student)), 201)
        # Inclusive 18 % tax on 5900: the tax part is 5900 - 5900/1.18 = 900.
        assert (order["subtotal"], order["discount"], order["total"], order["tax"]) == (
            11800, 5900, 5900, 900)
        session_id = order["checkout"]["url"].rsplit("/", 1)[1]
        assert order["checkout"]["url"].startswith(fake.url)
        (_, _, form), = [c for c in fake.calls if c[1] == "/v1/checkout/sessions"]
        assert form["line_items"]["0"]["price_data"]["unit_amount"] == "5900"
        assert form["payment_intent_data"]["metadata"]["order_id"] == order["id"]
        # The coupon is once per user.
        p = problem(s.client.post("/api/v1/payments/orders",
                                  json={"course_id": cid, "coupon": "half"},
                                  headers=s.auth(s.student)), 422)
        assert "coupon" in p["errors"]

        held = ok(s.enroll(s.student, cid), 202)
        # The gate hands back the open checkout instead of starting another.
        assert held["action"]["type"] == "checkout" and held["action"]["order_id"] == order["id"]
        assert held["action"]["url"] == order["checkout"]["url"]
        ok(_post(s, _completed(fake, session_id)))
        assert s.order(order["id"])["status"] == "paid"
        assert s.status(cid, s.student) == "active"
        receipt = ok(s.client.get(f"/api/v1/payments/orders/{order['id']}/receipt",
                                  headers=s.auth(s.student)))
        assert receipt["invoice_number"] == "school-000001" and receipt["discount"] == 5900

        refunded = ok(s.client.post(f"/api/v1/payments/orders/{order['id']}/refund",
                                    json={"reason": "asked"}, headers=s.auth(s.admin)))
        assert refunded["status"] == "refunded"
        assert [c[2]["amount"] for c in fake.calls if c[1] == "/v1/refunds"] == ["5900"]
        assert s.status(cid, s.student) == "dropped"
        # Stripe's own refund event then says the same total: nothing more happens.
        pi = fake.objects[session_id]["payment_intent"]
        ok(_post(s, stripe_event("evt_refund", "charge.refunded", {
            "id": "ch_1", "object": "charge", "payment_intent": pi, "amount": 5900,
            "amount_captured": 5900, "amount_refunded": 5900, "metadata": {}})))
        assert s.order(order["id"])["amount_refunded"] == 5900


def test_tampered_stale_unknown_and_unsigned_webhooks_change_nothing(make_app):
    with fake_server("stripe") as fake:
        s = _stripe_school(make_app, fake)
        cid = s.course("paid", price=1000)
        order = ok(s.client.post("/api/v1/payments/orders", json={"course_id": cid},
                                 headers=s.auth(s.student)), 201)
        sid = order["checkout"]["url"].rsplit("/", 1)[1]
        body = _completed(fake, sid)
        tampered = body.replace(b'"amount_total": 1000', b'"amount_total": 1')
        assert tampered != body
        stale = stripe_signature(body, STRIPE_KEYS["webhook_secret"],
                                 timestamp=int(time.time()) - 3600)
        wrong_secret = stripe_signature(body, "whsec_other")
        for response in (
                _post(s, tampered, stripe_signature(body, STRIPE_KEYS["webhook_secret"])),
                _post(s, body, stale), _post(s, body, wrong_secret),
                s.client.post(HOOK, data=body), _post(s, b"not json")):
            problem(response, 400)
        problem(s.client.post("/api/v1/payments/webhooks/stripe/nowhere", data=body), 404)
        problem(s.client.post("/api/v1/payments/webhooks/nope/school", data=body), 400)
        problem(s.client.post("/api/v1/payments/webhooks/manual/school", data=body), 400)
        assert s.order(order["id"])["status"] == "pending"
        with s.kalpla.db.session() as db:
            assert db.scalar(select(func.count()).select_from(ProviderEvent)) == 0
        ok(_post(s, body))
        assert s.order(order["id"])["status"] == "paid"


def test_the_same_event_delivered_ten_times_at_once_applies_once(make_app):
    with fake_server("stripe") as fake:
        s = _stripe_school(make_app, fake)
        cid = s.course("paid", price=1000)
        ok(s.enroll(s.student, cid), 202)
        with s.kalpla.db.session() as db:
            from kalpla_payments.models import Order
            order_id = db.scalar(select(Order.id))
        sid = s.order(order_id)["checkout"]["url"].rsplit("/", 1)[1]
        body = _completed(fake, sid)
        sig = stripe_signature(body, STRIPE_KEYS["webhook_secret"])
        results: list[Any] = []
        start = threading.Barrier(10)

        def deliver() -> None:
            client = s.app.test_client()
            start.wait()
            r = client.post(HOOK, data=body, headers={"Stripe-Signature": sig})
            results.append((r.status_code, r.json))

        threads = [threading.Thread(target=deliver) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [code for code, _ in results] == [200] * 10
        assert sum(body["applied"] for _, body in results) == 1
        assert sum(body["duplicates"] for _, body in results) == 9
        order = s.order(order_id)
        assert order["status"] == "paid" and order["invoice_number"] == 1
        assert s.status(cid, s.student) == "active"
        with s.kalpla.db.session() as db:
            paid_events = db.scalar(select(func.count()).select_from(OrderEvent).where(
                OrderEvent.order_id == order_id, OrderEvent.to_status == "paid"))
        assert paid_events == 1


def test_a_refund_event_before_the_payment_event(make_app):
    with fake_server("stripe") as fake:
        s = _stripe_school(make_app, fake)
        cid = s.course("paid", price=2000)
        ok(s.enroll(s.student, cid), 202)
        order = ok(s.client.get("/api/v1/payments/orders", headers=s.auth(s.student)))[
            "items"][0]
        sid = order["checkout"]["url"].rsplit("/", 1)[1]
        pi = fake.objects[sid]["payment_intent"]
        # A partial refund arrives first: the charge has no order id, the intent does.
        ok(_post(s, stripe_event("evt_r1", "charge.refunded", {
            "id": "ch_1", "payment_intent": pi, "amount": 2000, "amount_captured": 2000,
            "amount_refunded": 500, "metadata": {}})))
        got = s.order(order["id"])
        assert (got["status"], got["amount_paid"], got["amount_refunded"]) == (
            "partially_refunded", 2000, 500)
        assert s.status(cid, s.student) == "active"
        # Then the (late) completion: already paid, nothing changes.
        ok(_post(s, _completed(fake, sid)))
        got = s.order(order["id"])
        assert (got["status"], got["amount_refunded"], got["invoice_number"]) == (
            "partially_refunded", 500, 1)
        # A failure reported after payment does not unpay it.
        ok(_post(s, stripe_event("evt_f", "payment_intent.payment_failed", {
            "id": pi, "metadata": {"order_id": order["id"]}})))
        assert s.order(order["id"])["status"] == "partially_refunded"


def test_a_lost_webhook_is_made_good_by_reconcile(make_app):
    with fake_server("stripe") as fake:
        s = _stripe_school(make_app, fake)
        cid = s.course("paid", price=700)
        ok(s.enroll(s.student, cid), 202)
        order = ok(s.client.get("/api/v1/payments/orders", headers=s.auth(s.student)))[
            "items"][0]
        sid = order["checkout"]["url"].rsplit("/", 1)[1]
        fake.objects[sid].update(status="complete", payment_status="paid")

        out = s.reconcile()
        assert "applied=1" in out
        assert s.order(order["id"])["status"] == "paid"
        assert s.status(cid, s.student) == "active"
        out = s.reconcile()
        assert "asked=0" in out


def test_a_stripe_subscription_grants_its_courses_until_deleted(make_app):
    with fake_server("stripe") as fake:
        s = _stripe_school(make_app, fake)
        a = s.course("alpha", price=1000)
        b = s.course("beta", price=1000)
        plan = ok(s.client.post("/api/v1/payments/plans", json={
            "name": "All access", "amount": 300, "currency": "INR", "period_days": 30,
            "all_courses": True}, headers=s.auth(s.admin)), 201)
        order = ok(s.client.post("/api/v1/payments/orders", json={"plan_id": plan["id"]},
                                 headers=s.auth(s.student)), 201)
        sid = order["checkout"]["url"].rsplit("/", 1)[1]
        (_, _, form), = [c for c in fake.calls if c[1] == "/v1/checkout/sessions"]
        assert form["mode"] == "subscription"
        assert form["line_items"]["0"]["price_data"]["recurring"]["interval_count"] == "30"
        cs = fake.objects[sid]
        cs.update(status="complete", payment_status="paid", subscription="sub_1",
                  invoice="in_1")
        ok(_post(s, stripe_event("evt_cs", "checkout.session.completed", cs)))
        assert ok(s.enroll(s.student, a), 201)["status"] == "active"
        assert ok(s.enroll(s.student, b), 201)["status"] == "active"
        subs = ok(s.client.get("/api/v1/payments/subscriptions", headers=s.auth(s.student)))
        assert [x["status"] for x in subs["items"]] == ["active"]
        renewal = int(time.time()) + 60 * 86400
        ok(_post(s, stripe_event("evt_inv", "invoice.paid", {
            "id": "in_2", "subscription": "sub_1",
            "lines": {"data": [{"period": {"end": renewal}}]}})))
        subs = ok(s.client.get("/api/v1/payments/subscriptions", headers=s.auth(s.student)))
        assert subs["items"][0]["current_period_end"].startswith(
            time.strftime("%Y-%m-%d", time.gmtime(renewal)))
        ok(_post(s, stripe_event("evt_del", "customer.subscription.deleted", {
            "id": "sub_1", "status": "canceled", "metadata": {}})))
        assert s.status(a, s.student) == "dropped" and s.status(b, s.student) == "dropped"
        assert ok(s.enroll(s.student, a), 202)["status"] == "pending"


def test_an_expired_checkout_expires_the_order_and_a_late_payment_still_counts(make_app):
    with fake_server("stripe") as fake:
        s = _stripe_school(make_app, fake)
        cid = s.course("paid", price=1000)
        ok(s.client.post("/api/v1/payments/coupons", json={
            "code": "TEN", "kind": "percent", "value": 10, "max_uses": 1},
            headers=s.auth(s.admin)), 201)
        order = ok(s.client.post("/api/v1/payments/orders",
                                 json={"course_id": cid, "coupon": "TEN"},
                                 headers=s.auth(s.student)), 201)
        sid = order["checkout"]["url"].rsplit("/", 1)[1]
        cs = fake.objects[sid]
        ok(_post(s, stripe_event("evt_exp", "checkout.session.expired",
                                 {**cs, "status": "expired"})))
        assert s.order(order["id"])["status"] == "expired"
        coupons = ok(s.client.get("/api/v1/payments/coupons", headers=s.auth(s.admin)))
        assert coupons["items"][0]["used_count"] == 0  # released with the expired order
        ok(_post(s, _completed(fake, sid)))
        got = s.order(order["id"])
        assert got["status"] == "paid" and got["amount_paid"] == 900
        coupons = ok(s.client.get("/api/v1/payments/coupons", headers=s.auth(s.admin)))
        assert coupons["items"][0]["used_count"] == 1
