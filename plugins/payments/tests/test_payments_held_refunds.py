"""A gateway's refund of a renewal charge that overtakes the renewal's own event is held and
applied when the renewal's order appears: the same money state whichever event comes first,
however often and however concurrently they are delivered, and when the renewal is found by
``kalpla payments reconcile`` instead. Also: reconcile asks about subscriptions whose period
ends within a day, and records a renewal it finds on the day the gateway charged it."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kalpla_payments.models import HeldRefund, Order, Refund, Subscription
from payments_support import (
    DAY,
    STRIPE_HOOK,
    STRIPE_KEYS,
    buy_plan,
    complete_subscription,
    deliver_at_once,
    fake_server,
    ok,
    plan_orders,
    plan_school,
    post_razorpay,
    post_stripe,
    razorpay_charged,
    recorded_events,
    stripe_event,
    stripe_invoice,
    stripe_signature,
)
from sqlalchemy import func, select, update


def _charge_refunded(n: int, refunded: int = 1000) -> bytes:
    """Stripe's ``charge.refunded`` of renewal ``n``'s payment: its charge carries no order
    (a subscription's invoice payment has no Kalpla metadata)."""
    return stripe_event(f"evt_refund_{n}", "charge.refunded", {
        "id": f"ch_r{n}", "object": "charge", "payment_intent": f"pi_r{n}", "amount": 1000,
        "amount_captured": 1000, "amount_refunded": refunded, "metadata": {}})


def _renewal(n: int, first_id: str, end: int) -> bytes:
    return stripe_invoice(f"in_{n}", "subscription_cycle", 1000, first_id, end,
                          payment_intent=f"pi_r{n}")


def _money(s: Any) -> list[tuple[Any, ...]]:
    """Every order's kind, status and amounts, and every refund, by invoice number."""
    with s.kalpla.db.session() as db:
        orders = [tuple(r) for r in db.execute(select(
            Order.invoice_number, Order.kind, Order.status, Order.amount_paid,
            Order.amount_refunded).where(Order.plan_id.is_not(None))
            .order_by(Order.invoice_number))]
        refunds = [tuple(r) for r in db.execute(select(Order.invoice_number, Refund.amount)
                                                 .join(Order, Order.id == Refund.order_id)
                                                 .order_by(Order.invoice_number,
                                                           Refund.amount))]
        held = db.scalar(select(func.count()).select_from(HeldRefund))
    return [*orders, ("refunds", *refunds), ("held", held)]


def _stripe_subscriber(make_app: Any, fake: Any) -> tuple[Any, str, dict[str, Any]]:
    s, course, plan_id = plan_school(make_app, fake, "stripe")
    first = buy_plan(s, plan_id)
    complete_subscription(s, fake, first)
    assert ok(s.enroll(s.student, course), 201)["status"] == "active"
    return s, course, first


@pytest.mark.parametrize("refund_first", [True, False])
def test_a_stripe_renewal_refund_applies_whichever_event_comes_first(make_app, monkeypatch,
                                                                     refund_first):
    with fake_server("stripe") as fake:
        s, course, first = _stripe_subscriber(make_app, fake)
        seen = recorded_events(s.kalpla, monkeypatch)
        end = int(time.time()) + 30 * DAY
        bodies = [_charge_refunded(2), _renewal(2, first["id"], end)]
        for body in bodies if refund_first else bodies[::-1]:
            post_stripe(s, body)
        if refund_first:  # a second delivery of the held refund is a duplicate
            assert post_stripe(s, bodies[0])["duplicates"] == 1
        assert _money(s) == [(1, "purchase", "paid", 1000, 0),
                             (2, "renewal", "refunded", 1000, 1000),
                             ("refunds", (2, 1000)), ("held", 0)]
        refunded = [e for hook, e in seen if hook == "kalpla_order_refunded"]
        assert [(e.amount, e.status) for e in refunded] == [(1000, "refunded")]
        # A renewal's refund leaves the subscription and what it covers alone.
        assert s.status(course, s.student) == "active"
        renewal = plan_orders(s, s.student)[0]
        events = ok(s.client.get(f"/api/v1/payments/orders/{renewal['id']}/events",
                                 headers=s.auth(s.admin)))
        assert [e["to_status"] for e in events] == ["paid", "refunded"]
        assert ("held until" in events[1]["reason"]) is refund_first


def test_razorpay_partial_refunds_held_in_any_order_apply_in_full(make_app):
    with fake_server("razorpay") as fake:
        s, course, plan_id = plan_school(make_app, fake, "razorpay")
        first = buy_plan(s, plan_id)
        sub_ref = first["checkout"]["razorpay_subscription_id"]
        end = int(time.time()) + 30 * DAY
        post_razorpay(s, razorpay_charged(sub_ref, first["id"], "pay_1", 1, end), "evt_c1")

        def refund(event_id: str, total: int) -> None:
            # Razorpay names the payment's own (auto-created) order, which Kalpla never saw.
            post_razorpay(s, {"event": "refund.processed", "payload": {
                "refund": {"entity": {"id": f"rfnd_{event_id}", "payment_id": "pay_2",
                                      "amount": 300}},
                "payment": {"entity": {"id": "pay_2", "order_id": "order_auto_2",
                                       "amount": 1180, "amount_refunded": total,
                                       "notes": {}}}}}, event_id)

        # The later refund's event comes first; both before the charge they refund.
        refund("evt_r2", 1180)
        refund("evt_r1", 300)
        assert _money(s)[-1] == ("held", 2)
        post_razorpay(s, razorpay_charged(sub_ref, first["id"], "pay_2", 2, end + 30 * DAY),
                      "evt_c2")
        assert _money(s) == [(1, "purchase", "paid", 1180, 0),
                             (2, "renewal", "refunded", 1180, 1180),
                             ("refunds", (2, 300), (2, 880)), ("held", 0)]
        # Applied smallest total first: each held event refunds its own part.
        renewal = plan_orders(s, s.student)[0]
        history = ok(s.client.get(f"/api/v1/payments/orders/{renewal['id']}/events",
                                  headers=s.auth(s.admin)))
        assert [(e["to_status"], e["amount"]) for e in history] == [
            ("paid", 1180), ("partially_refunded", 300), ("refunded", 880)]
        assert ok(s.enroll(s.student, course), 201)["status"] == "active"


def test_a_refund_held_for_a_first_payment_named_late_ends_the_subscription(make_app):
    with fake_server("razorpay") as fake:
        s, course, plan_id = plan_school(make_app, fake, "razorpay")
        first = buy_plan(s, plan_id)
        sub_ref = first["checkout"]["razorpay_subscription_id"]
        end = int(time.time()) + 60 * DAY
        # The renewal implies the first payment (paid, its payment unknown) ...
        post_razorpay(s, razorpay_charged(sub_ref, first["id"], "pay_2", 2, end), "evt_c2")
        assert ok(s.enroll(s.student, course), 201)["status"] == "active"
        # ... the first payment's full refund comes next (held: no order has pay_1 yet) ...
        post_razorpay(s, {"event": "refund.processed", "payload": {
            "refund": {"entity": {"id": "rfnd_1", "payment_id": "pay_1", "amount": 1000}},
            "payment": {"entity": {"id": "pay_1", "order_id": "order_auto_1", "amount": 1000,
                                   "amount_refunded": 1000, "notes": {}}}}}, "evt_r1")
        assert s.order(first["id"])["status"] == "paid"
        # ... and the first charge's late event names it: the refund applies, which ends the
        # subscription the first payment started.
        post_razorpay(s, razorpay_charged(sub_ref, first["id"], "pay_1", 1, end - 30 * DAY),
                      "evt_c1")
        assert _money(s) == [(1, "purchase", "refunded", 1000, 1000),
                             (2, "renewal", "paid", 1180, 0),
                             ("refunds", (1, 1000)), ("held", 0)]
        assert s.status(course, s.student) == "dropped"


def test_a_refund_and_its_renewal_delivered_at_once_converge(make_app):
    with fake_server("stripe") as fake:
        s, _, first = _stripe_subscriber(make_app, fake)
        end = int(time.time()) + 30 * DAY

        def signed(body: bytes) -> tuple[bytes, dict[str, str]]:
            return body, {"Stripe-Signature": stripe_signature(
                body, STRIPE_KEYS["webhook_secret"])}

        for n in range(2, 6):
            # Each event three times, all six deliveries released together.
            deliveries = [signed(_charge_refunded(n, 400)), signed(_renewal(n, first["id"],
                                                                        end + n * DAY))] * 3
            answers = deliver_at_once(s.app, STRIPE_HOOK, deliveries)
            assert sum(a["applied"] for a in answers) == 2, answers
        assert _money(s) == [(1, "purchase", "paid", 1000, 0)] + [
            (n, "renewal", "partially_refunded", 1000, 400) for n in range(2, 6)] + [
            ("refunds", *[(n, 400) for n in range(2, 6)]), ("held", 0)]


def _soon(s: Any, hours: int) -> None:
    """The subscription's period here ends in ``hours`` (its renewal's webhook was lost)."""
    with s.kalpla.db.session() as db:
        db.execute(update(Subscription).values(
            current_period_end=datetime.now(UTC) + timedelta(hours=hours)))
        db.commit()


def _revenue_days(s: Any) -> list[tuple[str, int, int]]:
    rows = ok(s.client.get("/api/v1/payments/reports/revenue-by-day",
                           headers=s.auth(s.admin)))["items"]
    return [(r["key"], r["paid"], r["refunded"]) for r in rows]


def _day(ts: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def test_reconcile_finds_a_stripe_renewal_a_day_ahead_on_its_own_day(make_app):
    with fake_server("stripe") as fake:
        s, _, first = _stripe_subscriber(make_app, fake)
        now = int(time.time())
        charged = now - 2 * DAY  # charged two days ago; its webhook (and so the order) lost
        fake.objects["in_2"] = {
            "id": "in_2", "object": "invoice", "status": "paid", "subscription": "sub_1",
            "billing_reason": "subscription_cycle", "currency": "inr", "amount_paid": 1000,
            "payment_intent": "pi_r2", "created": charged - 3600,
            "status_transitions": {"paid_at": charged},
            "subscription_details": {"metadata": {"order_id": first["id"]}},
            "lines": {"data": [{"period": {"end": now + 30 * DAY}}]}}
        fake.objects["sub_1"] = {"id": "sub_1", "object": "subscription", "status": "active",
                                 "current_period_end": now + 30 * DAY, "metadata": {}}
        # Its refund came through, held: no order has its payment.
        post_stripe(s, _charge_refunded(2, 250))

        _soon(s, 3 * 24)  # three days out: not asked
        out = s.reconcile()
        assert "asked=0" in out and "held_refunds=1" in out, out
        _soon(s, 6)  # within the day: asked
        out = s.reconcile()
        assert "asked=1" in out and "held_refunds=0" in out, out
        renewal = plan_orders(s, s.student)[0]
        assert (renewal["kind"], renewal["status"], renewal["amount_refunded"]) == (
            "renewal", "partially_refunded", 250)
        assert renewal["paid_at"].startswith(_day(charged))
        assert (_day(charged), 1000, 250) in _revenue_days(s)
        with s.kalpla.db.session() as db:
            assert db.scalar(select(Subscription.current_period_end)) == datetime.fromtimestamp(
                now + 30 * DAY, UTC)


def test_reconcile_finds_a_razorpay_renewal_a_day_ahead_on_its_own_day(make_app):
    with fake_server("razorpay") as fake:
        s, _, plan_id = plan_school(make_app, fake, "razorpay")
        first = buy_plan(s, plan_id)
        sub_ref = first["checkout"]["razorpay_subscription_id"]
        now = int(time.time())
        post_razorpay(s, razorpay_charged(sub_ref, first["id"], "pay_1", 1, now), "evt_c1")
        charged = now - 3 * DAY
        invoice = {"entity": "invoice", "subscription_id": sub_ref, "status": "paid",
                   "amount": 1180, "amount_paid": 1180, "currency": "INR"}
        fake.objects["inv_1"] = {**invoice, "id": "inv_1", "payment_id": "pay_1",
                                 "billing_start": now - 30 * DAY, "billing_end": now,
                                 "paid_at": now - 30 * DAY}
        fake.objects["inv_2"] = {**invoice, "id": "inv_2", "payment_id": "pay_2",
                                 "billing_start": now, "billing_end": now + 30 * DAY,
                                 "paid_at": charged}
        fake.objects[sub_ref].update(status="active", paid_count=2, current_end=now + 30 * DAY)
        _soon(s, 20)

        out = s.reconcile()
        assert "asked=1" in out and "expired_subscriptions=0" in out, out
        renewal, purchase = plan_orders(s, s.student)
        assert (renewal["kind"], renewal["invoice_number"], purchase["id"]) == (
            "renewal", 2, first["id"])
        assert renewal["paid_at"].startswith(_day(charged))
        assert (_day(charged), 1180, 0) in _revenue_days(s)


def test_a_refund_racing_its_renewal_in_the_worst_order_is_not_lost(make_app, monkeypatch):
    """The interleaving that loses a refund without the counter lock, forced: the refund's
    event looks for the order before the renewal commits, and the renewal looks for held
    refunds before the refund's event holds its own. (SQLite runs one writer at a time, so
    only a database with row locks can interleave them.)"""
    from kalpla_payments import orders, webhooks

    with fake_server("stripe") as fake:
        s, _, first = _stripe_subscriber(make_app, fake)
        if s.kalpla.db.engine.dialect.name == "sqlite":
            pytest.skip("SQLite serialises the two deliveries")
        looked, checked = threading.Event(), threading.Event()
        find_order, release = webhooks.find_order, orders.release_held_refunds

        def slow_find(session: Any, institution_id: str, provider: str, event: Any) -> Any:
            found = find_order(session, institution_id, provider, event)
            if event.kind == "refunded" and found is None and not looked.is_set():
                looked.set()  # found no order: let the renewal look for held refunds first
                checked.wait(30)
            return found

        def late_release(session: Any, kalpla: Any, order: Any, now: Any) -> int:
            if order.kind != "renewal":
                return release(session, kalpla, order, now)
            looked.wait(30)
            try:
                return release(session, kalpla, order, now)
            finally:
                checked.set()

        monkeypatch.setattr(webhooks, "find_order", slow_find)
        monkeypatch.setattr(orders, "release_held_refunds", late_release)
        deliver_at_once(s.app, STRIPE_HOOK, [
            (body, {"Stripe-Signature": stripe_signature(body, STRIPE_KEYS["webhook_secret"])})
            for body in (_charge_refunded(2), _renewal(2, first["id"],
                                                         int(time.time()) + 30 * DAY))])
        assert looked.is_set() and checked.is_set()
        assert _money(s) == [(1, "purchase", "paid", 1000, 0),
                             (2, "renewal", "refunded", 1000, 1000),
                             ("refunds", (2, 1000)), ("held", 0)]


def test_reconcile_drops_refunds_held_a_month_for_payments_no_order_took(make_app):
    with fake_server("stripe") as fake:
        s, _, first = _stripe_subscriber(make_app, fake)
        post_stripe(s, _charge_refunded(7))  # a payment of the account's other sales
        post_stripe(s, _charge_refunded(8))
        with s.kalpla.db.session() as db:
            db.execute(update(HeldRefund).where(HeldRefund.payment_id == "pi_r7").values(
                received_at=datetime.now(UTC) - timedelta(days=31)))
            db.commit()
        out = s.reconcile()
        assert "held_refunds=1" in out and "dropped_refunds=1" in out, out
        with s.kalpla.db.session() as db:
            assert db.scalars(select(HeldRefund.payment_id)).all() == ["pi_r8"]
        # The one still held applies when its renewal comes.
        post_stripe(s, _renewal(8, first["id"], int(time.time()) + 30 * DAY))
        assert _money(s)[1:] == [(2, "renewal", "refunded", 1000, 1000),
                                 ("refunds", (2, 1000)), ("held", 0)]
