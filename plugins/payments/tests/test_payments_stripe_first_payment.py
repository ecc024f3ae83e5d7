"""A Stripe plan's first payment is the payment intent that paid the subscription's first
invoice, whichever event pays the order (``checkout.session.completed``, ``invoice.paid``
with ``billing_reason`` ``subscription_create`` in either API shape, or ``kalpla payments
reconcile``): an admin's refund goes through it, and Stripe's ``charge.refunded`` of it
refunds the order and ends the subscription, whether it comes before or after the order is
paid. Orders that recorded the invoice (before this, or when Stripe could not say) are
refunded through the invoice's payment intent and take it when an event names it."""

from __future__ import annotations

import time
from typing import Any

import pytest
from kalpla_payments.models import HeldRefund, Order, Subscription
from kalpla_payments.providers.stripe_provider import StripeProvider
from payments_support import (
    DAY,
    STRIPE_HOOK,
    STRIPE_KEYS,
    buy_plan,
    complete_subscription,
    deliver_at_once,
    fake_server,
    ok,
    pay_subscription_checkout,
    plan_school,
    post_stripe,
    stripe_event,
    stripe_invoice,
    stripe_signature,
)
from sqlalchemy import func, select, update


def _charge_refunded(intent: str, refunded: int = 1000, n: int = 1) -> bytes:
    """Stripe's ``charge.refunded`` of a subscription's payment: no order in its metadata."""
    return stripe_event(f"evt_refund_{n}", "charge.refunded", {
        "id": "ch_first", "object": "charge", "payment_intent": intent, "amount": 1000,
        "amount_captured": 1000, "amount_refunded": refunded, "metadata": {}})


def _state(s: Any, order_id: str) -> tuple[Any, ...]:
    """The plan order's status, payment and refunded amount, its subscription's status, and
    how many refunds are held."""
    with s.kalpla.db.session() as db:
        order = db.get(Order, order_id)
        assert order is not None
        sub = db.scalar(select(Subscription.status).where(Subscription.order_id == order_id))
        held = db.scalar(select(func.count()).select_from(HeldRefund))
        return order.status, order.provider_payment_id, order.amount_refunded, sub, held


def _refunds_sent(fake: Any) -> list[dict[str, Any]]:
    return [{k: v for k, v in form.items() if k in ("payment_intent", "charge", "amount")}
            for method, path, form in fake.calls if (method, path) == ("POST", "/v1/refunds")]


def _record_invoice_as_payment(s: Any, order_id: str, invoice: str = "in_1") -> None:
    """The order as this plugin recorded it before: the first invoice as its payment."""
    with s.kalpla.db.session() as db:
        db.execute(update(Order).where(Order.id == order_id).values(
            provider_payment_id=invoice, payment_reference=invoice))
        db.commit()


def _first_invoice_paid(order: dict[str, Any], shape: str, intent: str) -> bytes:
    """``invoice.paid`` of the first invoice: the older API names its payment intent, the
    newer one lists payments only when asked (so its event names none)."""
    end = int(time.time()) + 30 * DAY
    if shape == "old":
        return stripe_invoice("in_1", "subscription_create", 1000, order["id"], end,
                              payment_intent=intent)
    return stripe_event("evt_in_1", "invoice.paid", {
        "id": "in_1", "object": "invoice", "billing_reason": "subscription_create",
        "parent": {"subscription_details": {"subscription": "sub_1",
                                            "metadata": {"order_id": order["id"]}}},
        "amount_paid": 1000, "currency": "inr", "total_taxes": [],
        "lines": {"data": [{"period": {"end": end}}]}})


def test_an_admin_refund_of_a_stripe_plan_sends_its_payment_intent(make_app):
    with fake_server("stripe") as fake:
        s, course, plan_id = plan_school(make_app, fake, "stripe")
        first = buy_plan(s, plan_id)
        intent = complete_subscription(s, fake, first)
        assert ok(s.enroll(s.student, course), 201)["status"] == "active"
        assert _state(s, first["id"]) == ("paid", intent, 0, "active", 0)

        ok(s.client.post(f"/api/v1/payments/orders/{first['id']}/refund",
                         json={"reason": "asked"}, headers=s.auth(s.admin)))
        assert _refunds_sent(fake) == [{"payment_intent": intent, "amount": "1000"}]
        assert _state(s, first["id"]) == ("refunded", intent, 1000, "canceled", 0)
        assert s.status(course, s.student) == "dropped"
        # Stripe's own event of that refund follows: it matches the order, changes nothing
        # and holds nothing.
        assert post_stripe(s, _charge_refunded(intent))["applied"] == 1
        assert _state(s, first["id"]) == ("refunded", intent, 1000, "canceled", 0)


@pytest.mark.parametrize("via", ["checkout", "invoice-old", "invoice-new"])
@pytest.mark.parametrize("refund_first", [False, True])
def test_stripes_refund_of_the_first_payment_ends_the_subscription(make_app, via,
                                                                   refund_first):
    with fake_server("stripe") as fake:
        s, course, plan_id = plan_school(make_app, fake, "stripe")
        first = buy_plan(s, plan_id)
        assert ok(s.enroll(s.student, course), 202)["status"] == "pending"
        cs, intent = pay_subscription_checkout(fake, first)
        paid = stripe_event("evt_cs", "checkout.session.completed", cs) if via == "checkout" \
            else _first_invoice_paid(first, via.removeprefix("invoice-"), intent)
        bodies = [paid, _charge_refunded(intent)]
        for n, body in enumerate(bodies[::-1] if refund_first else bodies):
            post_stripe(s, body)
            if refund_first and n == 0:  # no order has that payment yet: held
                assert _state(s, first["id"]) == ("pending", None, 0, None, 1)
        assert _state(s, first["id"]) == ("refunded", intent, 1000, "canceled", 0)
        assert s.status(course, s.student) == "dropped"
        history = ok(s.client.get(f"/api/v1/payments/orders/{first['id']}/events",
                                  headers=s.auth(s.admin)))
        assert [e["to_status"] for e in history] == ["pending", "paid", "refunded"]
        assert ("held until" in history[-1]["reason"]) is refund_first


def test_a_partial_refund_ahead_and_its_payment_delivered_at_once_converge(make_app):
    with fake_server("stripe") as fake:
        s, _, plan_id = plan_school(make_app, fake, "stripe")
        first = buy_plan(s, plan_id)
        cs, intent = pay_subscription_checkout(fake, first)

        def signed(body: bytes) -> tuple[bytes, dict[str, str]]:
            return body, {"Stripe-Signature": stripe_signature(
                body, STRIPE_KEYS["webhook_secret"])}

        deliveries = [signed(_charge_refunded(intent, 400)),
                      signed(stripe_event("evt_cs", "checkout.session.completed", cs)),
                      signed(_first_invoice_paid(first, "old", intent))] * 3
        answers = deliver_at_once(s.app, STRIPE_HOOK, deliveries)
        # The refund once; the invoice's payment and its subscription state, once each.
        assert sum(a["applied"] for a in answers) == 4, answers
        assert _state(s, first["id"]) == ("partially_refunded", intent, 400, "active", 0)


def test_reconcile_records_the_first_payment_and_applies_its_held_refund(make_app):
    with fake_server("stripe") as fake:
        s, course, plan_id = plan_school(make_app, fake, "stripe")
        first = buy_plan(s, plan_id)
        _, intent = pay_subscription_checkout(fake, first)  # its webhooks were lost
        post_stripe(s, _charge_refunded(intent, 300))
        assert _state(s, first["id"]) == ("pending", None, 0, None, 1)
        out = s.reconcile()
        assert "held_refunds=0" in out, out
        assert _state(s, first["id"]) == ("partially_refunded", intent, 300, "active", 0)
        assert ok(s.enroll(s.student, course), 201)["status"] == "active"


def test_an_order_that_recorded_its_invoice_is_refunded_through_its_payment_intent(make_app):
    with fake_server("stripe") as fake:
        s, _, plan_id = plan_school(make_app, fake, "stripe")
        first = buy_plan(s, plan_id)
        intent = complete_subscription(s, fake, first)
        _record_invoice_as_payment(s, first["id"])

        ok(s.client.post(f"/api/v1/payments/orders/{first['id']}/refund",
                         json={"reason": "asked", "amount": 400}, headers=s.auth(s.admin)))
        assert ("GET", "/v1/invoices/in_1", {"expand": {"0": "payments"}}) in fake.calls
        assert _refunds_sent(fake) == [{"payment_intent": intent, "amount": "400"}]
        # Stripe's event of that refund names the payment intent; its invoice names the
        # order, which takes the payment intent: nothing is refunded twice or held.
        post_stripe(s, _charge_refunded(intent, 400))
        assert _state(s, first["id"]) == ("partially_refunded", intent, 400, "active", 0)
        ok(s.client.post(f"/api/v1/payments/orders/{first['id']}/refund",
                         json={"reason": "rest"}, headers=s.auth(s.admin)))
        assert _refunds_sent(fake)[-1] == {"payment_intent": intent, "amount": "600"}
        assert _state(s, first["id"]) == ("refunded", intent, 1000, "canceled", 0)


def test_stripes_refund_of_an_order_that_recorded_its_invoice_finds_it(make_app):
    with fake_server("stripe") as fake:
        s, course, plan_id = plan_school(make_app, fake, "stripe")
        first = buy_plan(s, plan_id)
        intent = complete_subscription(s, fake, first)
        assert ok(s.enroll(s.student, course), 201)["status"] == "active"
        _record_invoice_as_payment(s, first["id"])
        post_stripe(s, _charge_refunded(intent))
        assert _state(s, first["id"]) == ("refunded", intent, 1000, "canceled", 0)
        assert s.status(course, s.student) == "dropped"


def test_an_invoice_whose_payment_stripe_cannot_name_yet_is_replaced_later(make_app):
    """Stripe could not say which payment paid the first invoice when the checkout completed
    (the invoice is not found): the order records the invoice, a refund of the payment
    intent is held, and the first invoice's own ``invoice.paid`` names the payment, which
    applies it."""
    with fake_server("stripe") as fake:
        s, _, plan_id = plan_school(make_app, fake, "stripe")
        first = buy_plan(s, plan_id)
        cs, intent = pay_subscription_checkout(fake, first)
        del fake.objects["in_1"]
        post_stripe(s, stripe_event("evt_cs", "checkout.session.completed", cs))
        assert _state(s, first["id"]) == ("paid", "in_1", 0, "active", 0)
        post_stripe(s, _charge_refunded(intent))
        assert _state(s, first["id"]) == ("paid", "in_1", 0, "active", 1)
        post_stripe(s, _first_invoice_paid(first, "old", intent))
        assert _state(s, first["id"]) == ("refunded", intent, 1000, "canceled", 0)


def test_a_refund_of_a_charge_names_the_charge(make_app):
    with fake_server("stripe") as fake:
        provider = StripeProvider(fake.url)
        assert provider.refund(STRIPE_KEYS, "ch_9", 250, "asked").startswith("re_")
        assert _refunds_sent(fake) == [{"charge": "ch_9", "amount": "250"}]


def test_a_refund_racing_the_event_that_names_the_payment_is_not_lost(make_app, monkeypatch):
    """The interleaving that would lose the refund, forced: its event looks for the order
    (which still records the invoice) before the first invoice's ``invoice.paid`` names the
    payment, and that looks for held refunds before the refund holds its own. (SQLite runs
    one writer at a time, so only a database with row locks can interleave them.)"""
    import threading

    from kalpla_payments import orders, webhooks

    with fake_server("stripe") as fake:
        s, _, plan_id = plan_school(make_app, fake, "stripe")
        if s.kalpla.db.engine.dialect.name == "sqlite":
            pytest.skip("SQLite serialises the two deliveries")
        first = buy_plan(s, plan_id)
        cs, intent = pay_subscription_checkout(fake, first)
        del fake.objects["in_1"]  # Stripe cannot name the payment: the order records in_1
        post_stripe(s, stripe_event("evt_cs", "checkout.session.completed", cs))
        looked, checked = threading.Event(), threading.Event()
        find_order, release = webhooks.find_order, orders.release_held_refunds

        def slow_find(session: Any, institution_id: str, provider: str, event: Any) -> Any:
            found = find_order(session, institution_id, provider, event)
            if event.kind == "refunded" and found is None and not looked.is_set():
                looked.set()
                checked.wait(30)
            return found

        def late_release(session: Any, kalpla: Any, order: Any, now: Any) -> int:
            if order.provider_payment_id != intent:
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
            for body in (_charge_refunded(intent), _first_invoice_paid(first, "old", intent))])
        assert looked.is_set() and checked.is_set()
        assert _state(s, first["id"]) == ("refunded", intent, 1000, "canceled", 0)


def test_a_renewal_whose_event_names_no_payment_asks_stripe_for_it(make_app):
    """Newer API versions list an invoice's payments only when asked, so a renewal's
    ``invoice.paid`` names no payment intent: it is asked of Stripe, and Stripe's refund of
    it then finds the renewal's order."""
    with fake_server("stripe") as fake:
        s, _, plan_id = plan_school(make_app, fake, "stripe")
        first = buy_plan(s, plan_id)
        complete_subscription(s, fake, first)
        end = int(time.time()) + 60 * DAY
        renewal = {"id": "in_2", "object": "invoice", "billing_reason": "subscription_cycle",
                   "status": "paid", "parent": {"subscription_details": {
                       "subscription": "sub_1", "metadata": {"order_id": first["id"]}}},
                   "amount_paid": 1000, "currency": "inr",
                   "lines": {"data": [{"period": {"end": end}}]}}
        fake.objects["in_2"] = {**renewal, "payments": {"object": "list", "data": [{
            "object": "invoice_payment", "invoice": "in_2", "status": "paid",
            "payment": {"type": "payment_intent", "payment_intent": "pi_r2"}}]}}
        post_stripe(s, stripe_event("evt_in_2", "invoice.paid", renewal))
        with s.kalpla.db.session() as db:
            assert db.scalar(select(Order.provider_payment_id).where(
                Order.provider_ref == "in_2")) == "pi_r2"
        post_stripe(s, _charge_refunded("pi_r2", n=2))
        with s.kalpla.db.session() as db:
            assert db.execute(select(Order.kind, Order.status).where(
                Order.plan_id.is_not(None)).order_by(Order.invoice_number)).all() == [
                ("purchase", "paid"), ("renewal", "refunded")]


def test_an_invoice_stripe_names_no_payment_of_is_not_refunded(make_app):
    with fake_server("stripe") as fake:
        s, _, plan_id = plan_school(make_app, fake, "stripe")
        first = buy_plan(s, plan_id)
        complete_subscription(s, fake, first)
        _record_invoice_as_payment(s, first["id"])
        fake.objects["in_1"].pop("payments")  # paid out of band: no payment to refund
        r = s.client.post(f"/api/v1/payments/orders/{first['id']}/refund",
                          json={"reason": "asked"}, headers=s.auth(s.admin))
        assert r.status_code == 502 and r.json["type"].endswith("provider-error"), r.json
        assert _refunds_sent(fake) == []
        assert _state(s, first["id"])[:3] == ("paid", "in_1", 0)
