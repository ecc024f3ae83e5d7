"""Orders, coupons, tax, idempotency, subscriptions with the manual provider, credentials and
reports, over HTTP."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from kalpla_payments.models import Credentials
from kalpla_payments.pricing import round_half_up, totals
from payments_support import STRIPE_KEYS, ok, problem, school
from sqlalchemy import select


@pytest.mark.parametrize(("n", "d", "expected"), [(5, 2, 3), (4, 2, 2), (7, 3, 2),
                                                  (149, 100, 1), (150, 100, 2), (0, 7, 0)])
def test_round_half_up(n, d, expected):
    assert round_half_up(n, d) == expected


def test_totals_exclusive_and_inclusive_tax():
    assert totals(999, None, 1800, False).tax == 180  # 179.82 → 180
    t = totals(1000, None, 1800, True)
    assert (t.total, t.tax) == (1000, 153)  # 1000 - 847.46 → 1000 - 847
    assert totals(0, None, 1800, False).total == 0


def test_idempotency_key_same_body_same_order_other_body_422(make_app):
    s = school(make_app)
    a, b = s.course("a", price=100), s.course("b", price=200)
    headers = {**s.auth(s.student), "Idempotency-Key": "order-1"}
    first = ok(s.client.post("/api/v1/payments/orders", json={"course_id": a},
                             headers=headers), 201)
    again = s.client.post("/api/v1/payments/orders", json={"course_id": a}, headers=headers)
    assert ok(again, 201)["id"] == first["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    problem(s.client.post("/api/v1/payments/orders", json={"course_id": b}, headers=headers),
            422)
    orders = ok(s.client.get("/api/v1/payments/orders", headers=s.auth(s.student)))
    assert [o["id"] for o in orders["items"]] == [first["id"]]


def test_coupons_fixed_expired_used_up_and_scoped(make_app):
    s = school(make_app, {"tax_rate_bp": 500})
    a, b = s.course("a", price=1000), s.course("b", price=1000)
    admin = s.auth(s.admin)
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    for body in ({"code": "FLAT", "kind": "fixed", "value": 300, "currency": "INR",
                  "max_uses": 1, "once_per_user": False},
                 {"code": "OLD", "kind": "percent", "value": 10, "expires_at": past},
                 {"code": "ONLYA", "kind": "percent", "value": 100, "course_id": a},
                 {"code": "USD", "kind": "fixed", "value": 1, "currency": "USD"}):
        ok(s.client.post("/api/v1/payments/coupons", json=body, headers=admin), 201)
    problem(s.client.post("/api/v1/payments/coupons", json={
        "code": "BAD", "kind": "percent", "value": 101}, headers=admin), 422)

    def buy(user, course, code):
        return s.client.post("/api/v1/payments/orders", json={"course_id": course,
                                                               "coupon": code},
                             headers=s.auth(user))

    order = ok(buy(s.student, a, "flat"), 201)
    # 1000 - 300 = 700, plus 5 % tax = 35.
    assert (order["discount"], order["tax"], order["total"]) == (300, 35, 735)
    for code in ("FLAT", "OLD", "ONLYA", "USD", "NOPE"):
        p = problem(buy(s.student2, b, code), 422)
        assert "coupon" in p["errors"], code
    # A 100 % coupon leaves nothing to pay: paid at once, with an invoice number.
    free = ok(buy(s.student2, a, "onlya"), 201)
    assert free["status"] == "paid" and free["total"] == 0 and free["invoice_number"] == 1
    assert ok(s.enroll(s.student2, a), 201)["status"] == "active"


def test_a_subscriber_enrolls_without_paying_and_loses_access_on_cancel(make_app):
    s = school(make_app)
    a, b, c = (s.course("a", price=1000), s.course("b", price=1000),
               s.course("c", price=1000))
    free = s.course("free")
    plan = ok(s.client.post("/api/v1/payments/plans", json={
        "name": "A and B", "amount": 500, "currency": "INR", "period_days": 30,
        "course_ids": [a, b]}, headers=s.auth(s.admin)), 201)
    # Bought c separately; enrolled in a free course too.
    order_c = ok(s.client.post("/api/v1/payments/orders", json={"course_id": c},
                               headers=s.auth(s.student)), 201)
    ok(s.client.post(f"/api/v1/payments/orders/{order_c['id']}/mark-paid",
                     json={"reference": "cash"}, headers=s.auth(s.admin)))
    ok(s.enroll(s.student, c), 201)
    ok(s.enroll(s.student, free), 201)
    # Held on a before subscribing; subscribing activates it.
    ok(s.enroll(s.student, a), 202)
    order = ok(s.client.post("/api/v1/payments/orders", json={"plan_id": plan["id"]},
                             headers=s.auth(s.student)), 201)
    ok(s.client.post(f"/api/v1/payments/orders/{order['id']}/mark-paid",
                     json={"reference": "cash"}, headers=s.auth(s.admin)))
    assert s.status(a, s.student) == "active"
    assert ok(s.enroll(s.student, b), 201)["status"] == "active"
    # Not covered by the plan: still held for payment.
    assert ok(s.enroll(s.student2, a), 202)["status"] == "pending"

    subs = ok(s.client.get("/api/v1/payments/subscriptions", headers=s.auth(s.student)))
    (sub,) = subs["items"]
    problem(s.client.post(f"/api/v1/payments/subscriptions/{sub['id']}/cancel",
                          headers=s.auth(s.student2)), 404)
    ended = ok(s.client.post(f"/api/v1/payments/subscriptions/{sub['id']}/cancel",
                             headers=s.auth(s.student)))
    assert ended["status"] == "canceled"
    assert s.status(a, s.student) == "dropped" and s.status(b, s.student) == "dropped"
    # What was bought separately, and free courses, stay.
    assert s.status(c, s.student) == "active" and s.status(free, s.student) == "active"
    assert ok(s.enroll(s.student, a), 202)["status"] == "pending"


def test_credentials_are_write_only_and_sealed(make_app):
    s = school(make_app)
    state = ok(s.client.put("/api/v1/payments/credentials/stripe",
                            json={"values": STRIPE_KEYS}, headers=s.auth(s.admin)))
    assert state == {"provider": "stripe", "fields_set": ["secret_key", "webhook_secret"]}
    got = s.client.get("/api/v1/payments/credentials/stripe", headers=s.auth(s.admin))
    assert STRIPE_KEYS["secret_key"] not in got.get_data(as_text=True)
    assert ok(got)["fields_set"] == ["secret_key", "webhook_secret"]
    problem(s.client.put("/api/v1/payments/credentials/stripe",
                         json={"values": {"password": "x"}}, headers=s.auth(s.admin)), 422)
    problem(s.client.put("/api/v1/payments/credentials/stripe",
                         json={"values": {"secret_key": "x"}}, headers=s.auth(s.student)), 403)
    listed = s.client.get("/api/v1/institutions/school/plugins", headers=s.auth(s.admin))
    assert STRIPE_KEYS["secret_key"] not in listed.get_data(as_text=True)
    with s.kalpla.db.session() as db:
        (row,) = db.scalars(select(Credentials))
        assert STRIPE_KEYS["secret_key"].encode() not in row.sealed
    ok(s.client.put("/api/v1/payments/credentials/stripe",
                    json={"values": {"webhook_secret": ""}}, headers=s.auth(s.admin)))
    assert ok(s.client.get("/api/v1/payments/credentials/stripe",
                           headers=s.auth(s.admin)))["fields_set"] == ["secret_key"]


def test_reports_revenue_refunds_and_subscriptions(make_app):
    s = school(make_app)
    courses = [s.course(f"c{i}", price=1000 * (i + 1)) for i in range(3)]
    for user in (s.student, s.student2):
        for cid in courses:
            order = ok(s.client.post("/api/v1/payments/orders", json={"course_id": cid},
                                     headers=s.auth(user)), 201)
            ok(s.client.post(f"/api/v1/payments/orders/{order['id']}/mark-paid",
                             json={"reference": "r"}, headers=s.auth(s.admin)))
    ok(s.client.post(f"/api/v1/payments/orders/{order['id']}/refund",
                     json={"amount": 500, "reason": "late"}, headers=s.auth(s.admin)))
    url = "/api/v1/payments/reports/revenue-by-course?limit=2"
    first = s.client.get(url, headers=s.auth(s.admin))
    page = ok(first)
    assert len(page["items"]) == 2 and page["next_cursor"] and "Link" in first.headers
    rest = ok(s.client.get(f"{url}&cursor={page['next_cursor']}", headers=s.auth(s.admin)))
    rows = {r["key"]: r for r in page["items"] + rest["items"]}
    assert rest["next_cursor"] is None and set(rows) == set(courses)
    assert rows[courses[2]]["paid"] == 6000 and rows[courses[2]]["refunded"] == 500
    assert rows[courses[2]]["net"] == 5500 and rows[courses[0]]["orders"] == 2
    days = ok(s.client.get("/api/v1/payments/reports/revenue-by-day",
                           headers=s.auth(s.admin)))["items"]
    assert [(d["key"], d["paid"]) for d in days] == [
        (datetime.now(UTC).date().isoformat(), 12000)]
    refunds = ok(s.client.get("/api/v1/payments/reports/refunds", headers=s.auth(s.admin)))
    assert [r["amount"] for r in refunds["items"]] == [500]
    ok(s.client.get("/api/v1/payments/reports/active-subscriptions", headers=s.auth(s.admin)))
    problem(s.client.get("/api/v1/payments/reports/refunds", headers=s.auth(s.student)), 403)
    problem(s.client.get("/api/v1/payments/reports/revenue-by-day?cursor=zz",
                         headers=s.auth(s.admin)), 400)
    # Admins list every order of the institution; students only theirs.
    assert len(ok(s.client.get("/api/v1/payments/orders?limit=100",
                               headers=s.auth(s.admin)))["items"]) == 6
    assert len(ok(s.client.get("/api/v1/payments/orders",
                               headers=s.auth(s.student)))["items"]) == 3


def test_reconcile_expires_stale_orders_and_lapsed_subscriptions(make_app):
    from kalpla_payments.models import Order, Subscription

    s = school(make_app)
    a = s.course("a", price=1000)
    plan = ok(s.client.post("/api/v1/payments/plans", json={
        "name": "A", "amount": 100, "currency": "INR", "period_days": 7,
        "course_ids": [a]}, headers=s.auth(s.admin)), 201)
    order = ok(s.client.post("/api/v1/payments/orders", json={"plan_id": plan["id"]},
                             headers=s.auth(s.student)), 201)
    ok(s.client.post(f"/api/v1/payments/orders/{order['id']}/mark-paid",
                     json={"reference": "cash"}, headers=s.auth(s.admin)))
    assert ok(s.enroll(s.student, a), 201)["status"] == "active"
    stale = ok(s.enroll(s.student2, a), 202)["action"]["order_id"]
    past = datetime.now(UTC) - timedelta(minutes=1)
    with s.kalpla.db.session() as db:
        db.scalar(select(Subscription)).current_period_end = past
        db.get(Order, stale).expires_at = past
    out = s.reconcile()
    assert "expired_orders=1" in out and "expired_subscriptions=1" in out
    assert s.order(stale)["status"] == "expired"
    assert s.status(a, s.student) == "dropped"
    # A new enrollment request starts a new checkout instead of reusing the expired order.
    ok(s.client.delete(f"/api/v1/enrollments/{s.enrollment(a, s.student2).id}",
                       headers=s.auth(s.student2)), 200)
    again = ok(s.enroll(s.student2, a), 202)["action"]["order_id"]
    assert again != stale


def test_events_for_analytics_after_commit(make_app):
    import types

    from kalpla_core.hookspecs import PluginMeta, hookimpl

    heard: list = []
    spy = types.SimpleNamespace(KALPLA_PLUGIN=PluginMeta("spy", "1.0", ">=0.1"))
    spy.kalpla_order_paid = hookimpl(lambda event: heard.append(event))
    spy.kalpla_order_refunded = hookimpl(lambda event: heard.append(event))
    app = make_app(plugins=["payments", "spy"], plugin_objects={"spy": spy})
    from kalpla_core.testing import Factories
    f = Factories(app)
    inst = f.institution("school", plugins=["payments", "spy"])
    admin = f.user(roles={inst: ["admin", "mentor"]})
    client = app.test_client()
    cid = ok(client.post("/api/v1/courses", json={"slug": "c", "title": "C"},
                         headers=f.auth(admin, inst)), 201)["id"]
    ok(client.post(f"/api/v1/courses/{cid}/publish", headers=f.auth(admin, inst)))
    ok(client.put(f"/api/v1/payments/prices/{cid}", json={"amount": 900, "currency": "EUR"},
                  headers=f.auth(admin, inst)))
    order = ok(client.post("/api/v1/payments/orders", json={"course_id": cid},
                           headers=f.auth(admin, inst)), 201)
    ok(client.post(f"/api/v1/payments/orders/{order['id']}/mark-paid",
                   json={"reference": "x"}, headers=f.auth(admin, inst)))
    ok(client.post(f"/api/v1/payments/orders/{order['id']}/refund",
                   json={"amount": 100, "reason": "r"}, headers=f.auth(admin, inst)))
    assert [(e.name, e.order_id) for e in heard] == [
        ("kalpla.payments.order.paid.v1", order["id"]),
        ("kalpla.payments.order.refunded.v1", order["id"])]
    assert heard[0].amount == 900 and heard[0].invoice_number == 1
    assert (heard[1].amount, heard[1].status) == (100, "partially_refunded")


def test_prices_changes_need_the_etag_and_sales_apply_in_their_window(make_app):
    s = school(make_app)
    cid = s.course("c", price=1000)
    url = f"/api/v1/payments/prices/{cid}"
    school_header = {"Kalpla-Institution": "school"}
    first = s.client.get(url, headers=school_header)  # anyone may read a price
    assert ok(first)["current_amount"] == 1000
    etag = first.headers["ETag"]
    assert s.client.get(url, headers={**school_header, "If-None-Match": etag}).status_code \
        == 304
    now = datetime.now(UTC)
    sale = {"amount": 1000, "currency": "INR", "sale_amount": 600,
            "sale_starts_at": (now - timedelta(hours=1)).isoformat(),
            "sale_ends_at": (now + timedelta(hours=1)).isoformat()}
    problem(s.client.put(url, json=sale, headers=s.auth(s.admin)), 428)
    problem(s.client.put(url, json=sale, headers={**s.auth(s.admin), "If-Match": '"x"'}), 412)
    changed = s.client.put(url, json=sale, headers={**s.auth(s.admin), "If-Match": etag})
    assert ok(changed)["current_amount"] == 600 and changed.headers["ETag"] != etag
    order = ok(s.client.post("/api/v1/payments/orders", json={"course_id": cid},
                             headers=s.auth(s.student)), 201)
    assert order["subtotal"] == 600
    bad = {**sale, "sale_ends_at": sale["sale_starts_at"]}
    problem(s.client.put(url, json=bad, headers={**s.auth(s.admin), "If-Match": "*"}), 422)


def test_listing_plans_costs_the_same_queries_whatever_their_number(make_app):
    from kalpla_core.testing import count_queries

    s = school(make_app)
    cids = [s.course(f"c{i}", price=100) for i in range(3)]

    def add_plan(n: int) -> None:
        ok(s.client.post("/api/v1/payments/plans", json={
            "name": f"P{n}", "amount": 10, "currency": "INR", "period_days": 30,
            "course_ids": cids[: 1 + n % 3]}, headers=s.auth(s.admin)), 201)

    def listing() -> tuple[int, list]:
        with count_queries(s.kalpla.db.engine) as q:
            items = ok(s.client.get("/api/v1/payments/plans?limit=50",
                                    headers=s.auth(s.student)))["items"]
        return q.count, items

    add_plan(0)
    few, items = listing()
    assert items[0]["course_ids"] == sorted(cids[:1])
    for n in range(1, 6):
        add_plan(n)
    many, items = listing()
    assert len(items) == 6 and many == few


def test_export_and_erase_keep_the_accounting_without_the_buyer(make_app):
    from kalpla_payments.models import Order

    s = school(make_app)
    cid = s.course("c", price=100)
    order = ok(s.client.post("/api/v1/payments/orders", json={"course_id": cid},
                             headers=s.auth(s.student)), 201)
    pm = s.kalpla.plugins
    with s.kalpla.db.session() as db:
        section = dict(pm.call_each("kalpla_user_export", session=db,
                                    user_id=s.student.id))["payments"]
        assert [o["id"] for o in section["orders"]] == [order["id"]]
        pm.call_each("kalpla_user_erase", session=db, user_id=s.student.id)
    with s.kalpla.db.session() as db:
        kept = db.get(Order, order["id"])
        assert kept is not None and kept.user_id is None and kept.total == 100
