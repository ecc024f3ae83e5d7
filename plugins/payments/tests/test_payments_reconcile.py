"""``kalpla payments reconcile`` at scale, against local fake gateways: pending orders read in
bounded batches, oldest first, each gateway asked with no transaction open and each answer
applied in a transaction of its own; one order's gateway error or failed write is logged,
counted and retried on the next run without stopping the rest. Razorpay's invoices are read
page by page, so a subscription with more than a page of them keeps its first charge
apart from its renewals."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from kalpla_payments import webhooks
from kalpla_payments.models import Order, Subscription
from payments_support import (
    DAY,
    RAZORPAY_KEYS,
    buy_plan,
    complete_subscription,
    fake_server,
    ok,
    plan_school,
    post_razorpay,
    razorpay_charged,
    school,
)
from sqlalchemy import event, select, update
from sqlalchemy.engine import Engine


@contextmanager
def open_transactions() -> Iterator[set[int]]:
    """The connections (of any engine) inside a transaction, kept up to date."""
    live: set[int] = set()

    def begin(conn: Any) -> None:
        live.add(id(conn))

    def end(conn: Any) -> None:
        live.discard(id(conn))

    hooks = [("begin", begin), ("commit", end), ("rollback", end)]
    for name, fn in hooks:
        event.listen(Engine, name, fn)
    try:
        yield live
    finally:
        for name, fn in hooks:
            event.remove(Engine, name, fn)


def _statuses(s: Any) -> dict[str, tuple[str, int | None]]:
    with s.kalpla.db.session() as db:
        return {ref: (status, number) for ref, status, number in db.execute(select(
            Order.provider_ref, Order.status, Order.invoice_number))}


def test_reconcile_works_through_many_pending_orders_one_at_a_time(make_app, monkeypatch):
    monkeypatch.setattr(webhooks, "RECONCILE_BATCH", 4)
    with fake_server("razorpay") as fake:
        s = school(make_app, {"provider": "razorpay"}, PAYMENTS_RAZORPAY_API_BASE=fake.url)
        s.set_keys("razorpay", RAZORPAY_KEYS)
        refs = []
        for n in range(11):  # three batches of four
            course = s.course(f"c{n}", price=1000 + n)
            order = ok(s.client.post("/api/v1/payments/orders", json={"course_id": course},
                                     headers=s.auth(s.student)), 201)
            ref = order["checkout"]["razorpay_order_id"]
            fake.objects[ref]["payments"].append({
                "id": f"pay_{n}", "entity": "payment", "order_id": ref, "status": "captured",
                "amount": 1000 + n})
            refs.append(ref)
        down, bad_write = refs[2], refs[6]
        fake.broken.add(f"/v1/orders/{down}/payments")
        apply = webhooks.apply

        def failing_apply(session: Any, kalpla: Any, institution_id: str, provider: str,
                          ev: Any, now: Any) -> None:
            apply(session, kalpla, institution_id, provider, ev, now)
            if ev.order_ref == bad_write:
                raise RuntimeError("the database went away")

        monkeypatch.setattr(webhooks, "apply", failing_apply)
        asked: list[tuple[str, int]] = []
        with open_transactions() as live:
            fake.on_request = lambda method, path: asked.append(
                (path.split("/")[3], len(live))) if path.endswith("/payments") else None
            out = s.reconcile()
        fake.on_request = None
        assert "asked=10 applied=9 failed=2" in out, out
        # Oldest first, each once, and no transaction open while the gateway answered.
        assert asked == [(ref, 0) for ref in refs]
        got = _statuses(s)
        assert [got[ref][0] for ref in refs] == [
            "pending" if ref in (down, bad_write) else "paid" for ref in refs]
        assert sorted(n for _, n in got.values() if n) == list(range(1, 10))

        # Both are tried again next time: the failed write's claim was rolled back with it.
        fake.broken.clear()
        monkeypatch.setattr(webhooks, "apply", apply)
        out = s.reconcile()
        assert "asked=2 applied=2 failed=0" in out, out
        got = _statuses(s)
        assert {got[ref][0] for ref in refs} == {"paid"}
        assert sorted(n for _, n in got.values()) == list(range(1, 12))


def test_reconcile_reads_every_page_of_a_razorpay_subscriptions_invoices(make_app):
    with fake_server("razorpay") as fake:
        s, course, plan_id = plan_school(make_app, fake, "razorpay")
        first = buy_plan(s, plan_id)
        sub_ref = first["checkout"]["razorpay_subscription_id"]
        now = int(time.time())
        charges = 130  # more than one page of 100; every webhook lost
        for n in range(1, charges + 1):
            start = now - (charges - n + 1) * DAY
            fake.objects[f"inv_{n}"] = {
                "id": f"inv_{n}", "entity": "invoice", "subscription_id": sub_ref,
                "status": "paid", "payment_id": f"pay_{n}", "amount": 1000,
                "amount_paid": 1000, "currency": "INR", "created_at": start,
                "billing_start": start, "billing_end": start + DAY, "paid_at": start}
        fake.objects[sub_ref].update(status="active", paid_count=charges,
                                     current_end=now + 3600)
        # Only the latest charge's webhook came: it implied the first payment (the plan's
        # order is paid, its payment not known yet) and is a renewal of its own.
        post_razorpay(s, razorpay_charged(sub_ref, first["id"], f"pay_{charges}", charges,
                                          now + 3600), "evt_last")
        with s.kalpla.db.session() as db:
            db.execute(update(Subscription).values(
                current_period_end=datetime.fromtimestamp(now + 1800, UTC)))
            db.commit()

        out = s.reconcile()
        assert "asked=1" in out and "failed=0" in out, out
        with s.kalpla.db.session() as db:
            rows = db.execute(select(Order.kind, Order.provider_payment_id,
                                     Order.invoice_number).where(Order.plan_id.is_not(None))
                              ).all()
            end = db.scalar(select(Subscription.current_period_end))
        # The oldest invoice is the first charge: it names the plan's order's payment; each
        # of the 129 after it is a renewal of its own, numbered without gaps.
        first_row = [r for r in rows if r.kind == "purchase"]
        assert [tuple(r) for r in first_row] == [("purchase", "pay_1", 1)]
        renewals = sorted(r.provider_payment_id for r in rows if r.kind == "renewal")
        assert renewals == sorted(f"pay_{n}" for n in range(2, charges + 1))
        assert sorted(r.invoice_number for r in rows) == list(range(1, charges + 1))
        assert end == datetime.fromtimestamp(now + 3600, UTC)
        assert ok(s.enroll(s.student, course), 201)["status"] == "active"

        # The next run finds nothing new.
        with s.kalpla.db.session() as db:
            db.execute(update(Subscription).values(
                current_period_end=datetime.now(UTC) + timedelta(hours=1)))
            db.commit()
        out = s.reconcile()
        assert "asked=1 applied=0 failed=0" in out, out


def test_reconcile_reads_every_page_of_a_stripe_subscriptions_invoices(make_app):
    with fake_server("stripe") as fake:
        s, course, plan_id = plan_school(make_app, fake, "stripe")
        first = buy_plan(s, plan_id)
        complete_subscription(s, fake, first)
        now = int(time.time())
        charges = 150  # a page and a half; every renewal's webhook lost
        fake.objects["in_1"]["created"] = now - charges * DAY
        for n in range(2, charges + 1):
            created = now - (charges - n + 1) * DAY
            fake.objects[f"in_{n}"] = {
                "id": f"in_{n}", "object": "invoice", "status": "paid",
                "subscription": "sub_1", "billing_reason": "subscription_cycle",
                "currency": "inr", "amount_paid": 1000, "payment_intent": f"pi_r{n}",
                "created": created, "status_transitions": {"paid_at": created},
                "subscription_details": {"metadata": {"order_id": first["id"]}},
                "lines": {"data": [{"period": {"end": created + DAY}}]}}
        fake.objects["sub_1"] = {"id": "sub_1", "object": "subscription", "status": "active",
                                 "current_period_end": now + 3600, "metadata": {}}
        with s.kalpla.db.session() as db:
            db.execute(update(Subscription).values(
                current_period_end=datetime.fromtimestamp(now + 1800, UTC)))
            db.commit()

        out = s.reconcile()
        assert "asked=1" in out and "failed=0" in out, out
        with s.kalpla.db.session() as db:
            rows = db.execute(select(Order.kind, Order.provider_ref, Order.invoice_number)
                              .where(Order.plan_id.is_not(None))).all()
        assert sorted(r.provider_ref for r in rows if r.kind == "renewal") == sorted(
            f"in_{n}" for n in range(2, charges + 1))
        assert sorted(r.invoice_number for r in rows) == list(range(1, charges + 1))
        assert ok(s.enroll(s.student, course), 201)["status"] == "active"
        listed = [c[2] for c in fake.calls if c[:2] == ("GET", "/v1/invoices")]
        assert [(c["limit"], c.get("starting_after")) for c in listed] == [
            ("100", None), ("100", f"in_{charges - 99}")]


def test_reconcile_expires_more_stale_orders_than_a_batch(make_app, monkeypatch):
    monkeypatch.setattr(webhooks, "RECONCILE_BATCH", 2)
    s = school(make_app)
    ids = [ok(s.client.post("/api/v1/payments/orders",
                            json={"course_id": s.course(f"c{n}", price=500)},
                            headers=s.auth(s.student)), 201)["id"] for n in range(5)]
    with s.kalpla.db.session() as db:
        db.execute(update(Order).where(Order.id.in_(ids[:4])).values(
            expires_at=datetime.now(UTC) - timedelta(minutes=1)))
        db.commit()
    out = s.reconcile()
    # The manual gateway is asked about all five (it knows nothing); four are past their time.
    assert "asked=5 applied=0 failed=0 expired_orders=4" in out, out
    assert [s.order(i)["status"] for i in ids] == ["expired"] * 4 + ["pending"]
