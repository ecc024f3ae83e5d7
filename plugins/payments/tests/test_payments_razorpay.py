"""Razorpay over HTTP against a local fake Razorpay API: a gateway order for the widget, the
payment signature checked with the key secret, signed webhooks, refunds, reconciliation."""

from __future__ import annotations

import json
import time
from typing import Any

from payments_support import (
    RAZORPAY_KEYS,
    fake_server,
    ok,
    problem,
    razorpay_hmac,
    school,
)

HOOK = "/api/v1/payments/webhooks/razorpay/school"


def _rzp_school(make_app: Any, fake: Any) -> Any:
    s = school(make_app, {"provider": "razorpay"}, PAYMENTS_RAZORPAY_API_BASE=fake.url)
    s.set_keys("razorpay", RAZORPAY_KEYS)
    return s


def _webhook(s: Any, event: dict[str, Any], event_id: str,
             secret: str = RAZORPAY_KEYS["webhook_secret"]) -> Any:
    body = json.dumps(event).encode()
    return s.client.post(HOOK, data=body, headers={
        "X-Razorpay-Signature": razorpay_hmac(secret, body), "X-Razorpay-Event-Id": event_id,
        "Content-Type": "application/json"})


def _payment(order_ref: str, amount: int, payment_id: str = "pay_1",
             **extra: Any) -> dict[str, Any]:
    return {"id": payment_id, "entity": "payment", "order_id": order_ref, "amount": amount,
            "status": "captured", "notes": {}, **extra}


def test_buy_with_the_widget_signature_then_refund(make_app):
    with fake_server("razorpay") as fake:
        s = _rzp_school(make_app, fake)
        cid = s.course("paid", price=49900)
        held = ok(s.enroll(s.student, cid), 202)
        action = held["action"]
        assert action["key_id"] == RAZORPAY_KEYS["key_id"] and action["url"] is None
        order_ref = action["razorpay_order_id"]
        assert fake.objects[order_ref]["amount"] == 49900
        # The widget's answer with a forged signature is refused; the right one pays.
        url = f"/api/v1/payments/orders/{action['order_id']}/confirm"
        problem(s.client.post(url, json={"payment_id": "pay_1", "signature": "0" * 64},
                              headers=s.auth(s.student)), 400)
        assert s.status(cid, s.student) == "pending"
        good = razorpay_hmac(RAZORPAY_KEYS["key_secret"], f"{order_ref}|pay_1".encode())
        paid = ok(s.client.post(url, json={"payment_id": "pay_1", "signature": good},
                                headers=s.auth(s.student)))
        assert paid["status"] == "paid" and paid["invoice_number"] == 1
        assert s.status(cid, s.student) == "active"
        # The webhook that follows finds it paid.
        ok(_webhook(s, {"event": "payment.captured", "payload": {
            "payment": {"entity": _payment(order_ref, 49900)}}}, "evt_cap"))
        assert s.order(action["order_id"])["invoice_number"] == 1

        refunded = ok(s.client.post(f"/api/v1/payments/orders/{action['order_id']}/refund",
                                    json={"reason": "changed mind"}, headers=s.auth(s.admin)))
        assert refunded["status"] == "refunded"
        (call,) = [c for c in fake.calls if c[1] == "/v1/payments/pay_1/refund"]
        assert call[2]["amount"] == 49900
        assert s.status(cid, s.student) == "dropped"


def test_a_signed_webhook_pays_and_a_badly_signed_one_changes_nothing(make_app):
    with fake_server("razorpay") as fake:
        s = _rzp_school(make_app, fake)
        cid = s.course("paid", price=1000)
        action = ok(s.enroll(s.student, cid), 202)["action"]
        event = {"event": "payment.captured", "payload": {
            "payment": {"entity": _payment(action["razorpay_order_id"], 1000)}}}
        problem(_webhook(s, event, "evt_1", secret="wrong"), 400)
        body = json.dumps(event).encode()
        sig = razorpay_hmac(RAZORPAY_KEYS["webhook_secret"], body)
        problem(s.client.post(HOOK, data=body.replace(b"1000", b"1001"),
                              headers={"X-Razorpay-Signature": sig}), 400)
        assert s.status(cid, s.student) == "pending"
        for _ in range(2):
            ok(_webhook(s, event, "evt_1"))
        assert s.status(cid, s.student) == "active"
        # A refund event (a total) from the dashboard: partial, then the rest.
        refund = {"event": "refund.processed", "payload": {
            "refund": {"entity": {"id": "rfnd_1", "payment_id": "pay_1", "amount": 400}},
            "payment": {"entity": _payment(action["razorpay_order_id"], 1000,
                                           amount_refunded=400)}}}
        ok(_webhook(s, refund, "evt_r1"))
        assert s.order(action["order_id"])["status"] == "partially_refunded"
        refund["payload"]["payment"]["entity"]["amount_refunded"] = 1000
        ok(_webhook(s, refund, "evt_r2"))
        assert s.order(action["order_id"])["status"] == "refunded"
        assert s.status(cid, s.student) == "dropped"


def test_reconcile_asks_razorpay_about_pending_orders(make_app):
    with fake_server("razorpay") as fake:
        s = _rzp_school(make_app, fake)
        cid = s.course("paid", price=1500)
        action = ok(s.enroll(s.student, cid), 202)["action"]
        fake.objects[action["razorpay_order_id"]]["payments"].append(
            _payment(action["razorpay_order_id"], 1500, "pay_9"))

        out = s.reconcile()
        assert "applied=1" in out, out
        assert s.order(action["order_id"])["status"] == "paid"
        assert s.status(cid, s.student) == "active"


def test_a_razorpay_subscription_grants_its_courses_until_cancelled(make_app):
    with fake_server("razorpay") as fake:
        s = _rzp_school(make_app, fake)
        a = s.course("alpha", price=1000)
        plan = ok(s.client.post("/api/v1/payments/plans", json={
            "name": "Alpha monthly", "amount": 300, "currency": "INR", "period_days": 30,
            "course_ids": [a]}, headers=s.auth(s.admin)), 201)
        order = ok(s.client.post("/api/v1/payments/orders", json={"plan_id": plan["id"]},
                                 headers=s.auth(s.student)), 201)
        sub_ref = order["checkout"]["razorpay_subscription_id"]
        rzp_plan = fake.objects[fake.objects[sub_ref]["plan_id"]]
        assert (rzp_plan["period"], rzp_plan["interval"]) == ("daily", 30)
        assert rzp_plan["item"]["amount"] == 300
        # The widget's answer for a subscription is signed over payment_id|subscription_id.
        url = f"/api/v1/payments/orders/{order['id']}/confirm"
        wrong = razorpay_hmac(RAZORPAY_KEYS["key_secret"], f"{sub_ref}|pay_s1".encode())
        problem(s.client.post(url, json={"payment_id": "pay_s1", "signature": wrong},
                              headers=s.auth(s.student)), 400)
        assert ok(s.enroll(s.student, a), 202)["status"] == "pending"

        end = int(time.time()) + 30 * 86400
        charged = {"event": "subscription.charged", "payload": {
            "subscription": {"entity": {"id": sub_ref, "status": "active", "current_end": end,
                                        "notes": {"order_id": order["id"]}}},
            "payment": {"entity": {"id": "pay_s1", "amount": 300}}}}
        ok(_webhook(s, charged, "evt_c1"))
        ok(_webhook(s, charged, "evt_c1"))
        assert s.order(order["id"])["status"] == "paid"
        assert s.status(a, s.student) == "active"
        (sub,) = ok(s.client.get("/api/v1/payments/subscriptions",
                                 headers=s.auth(s.student)))["items"]
        assert sub["status"] == "active" and sub["current_period_end"].startswith(
            time.strftime("%Y-%m-%d", time.gmtime(end)))
        cancelled = {"event": "subscription.cancelled", "payload": {"subscription": {
            "entity": {"id": sub_ref, "status": "cancelled", "current_end": end}}}}
        ok(_webhook(s, cancelled, "evt_x"))
        assert s.status(a, s.student) == "dropped"
        # A late charge event of the ended subscription does not revive it.
        ok(_webhook(s, charged, "evt_c2"))
        assert s.status(a, s.student) == "dropped"


def test_reconcile_finds_a_charged_razorpay_subscription(make_app):
    with fake_server("razorpay") as fake:
        s = _rzp_school(make_app, fake)
        a = s.course("alpha", price=1000)
        plan = ok(s.client.post("/api/v1/payments/plans", json={
            "name": "Alpha", "amount": 300, "currency": "INR", "period_days": 7,
            "course_ids": [a]}, headers=s.auth(s.admin)), 201)
        order = ok(s.client.post("/api/v1/payments/orders", json={"plan_id": plan["id"]},
                                 headers=s.auth(s.student)), 201)
        sub_ref = order["checkout"]["razorpay_subscription_id"]

        out = s.reconcile()
        assert "applied=0" in out and s.order(order["id"])["status"] == "pending"
        end = int(time.time()) + 7 * 86400
        fake.objects[sub_ref].update(status="active", paid_count=1, current_end=end)
        out = s.reconcile()
        assert "applied=2" in out, out
        assert s.order(order["id"])["status"] == "paid"
        assert ok(s.enroll(s.student, a), 201)["status"] == "active"
