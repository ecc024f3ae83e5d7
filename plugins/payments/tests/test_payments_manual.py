"""The manual provider over HTTP: the gate holds a paid course, an admin records the payment,
the enrollment goes active, the receipt carries the invoice number, a refund drops it."""

from __future__ import annotations

from payments_support import ok, problem, school


def test_paid_course_checkout_mark_paid_receipt_and_refund(make_app):
    s = school(make_app, {"tax_rate_bp": 1800})
    free = s.course("free")
    paid = s.course("paid", price=50000)

    # A free course is free to enroll: the plugin abstains.
    assert ok(s.enroll(s.student, free), 201)["status"] == "active"

    body = ok(s.enroll(s.student, paid), 202)
    assert body["status"] == "pending" and body["pending_plugin"] == "payments"
    assert s.status(paid, s.student) == "pending"
    action = body["action"]
    assert action["type"] == "checkout" and action["provider"] == "manual"
    order = s.order(action["order_id"], s.student)
    assert (order["subtotal"], order["tax"], order["total"]) == (50000, 9000, 59000)
    assert order["status"] == "pending" and order["invoice_number"] is None

    # The buyer cannot mark their own order paid; no receipt before payment.
    problem(s.client.post(f"/api/v1/payments/orders/{order['id']}/mark-paid",
                          json={"reference": "cash"}, headers=s.auth(s.student)), 403)
    problem(s.client.get(f"/api/v1/payments/orders/{order['id']}/receipt",
                         headers=s.auth(s.student)), 409)
    # Another student does not see it at all.
    problem(s.client.get(f"/api/v1/payments/orders/{order['id']}",
                         headers=s.auth(s.student2)), 404)

    paid_order = ok(s.client.post(f"/api/v1/payments/orders/{order['id']}/mark-paid",
                                  json={"reference": "NEFT-123"}, headers=s.auth(s.admin)))
    assert paid_order["status"] == "paid" and paid_order["invoice_number"] == 1
    assert s.status(paid, s.student) == "active"
    problem(s.client.post(f"/api/v1/payments/orders/{order['id']}/mark-paid",
                          json={"reference": "again"}, headers=s.auth(s.admin)), 409)

    receipt = ok(s.client.get(f"/api/v1/payments/orders/{order['id']}/receipt",
                              headers=s.auth(s.student)))
    assert receipt["invoice_number"] == "school-000001"
    assert receipt["total"] == 59000 and receipt["tax"] == 9000
    assert receipt["payment_reference"] == "NEFT-123"

    # Refunds never exceed what was paid; a partial one keeps the enrollment.
    url = f"/api/v1/payments/orders/{order['id']}/refund"
    p = problem(s.client.post(url, json={"amount": 59001, "reason": "too much"},
                              headers=s.auth(s.admin)), 422)
    assert "amount" in p["errors"]
    problem(s.client.post(url, json={"reason": "mine"}, headers=s.auth(s.student)), 403)
    keyed = {**s.auth(s.admin), "Idempotency-Key": "refund-1"}
    part = ok(s.client.post(url, json={"amount": 9000, "reason": "goodwill",
                                       "reference": "R1"}, headers=keyed))
    # The same refund retried with its key is answered again, not refunded twice.
    again = s.client.post(url, json={"amount": 9000, "reason": "goodwill", "reference": "R1"},
                          headers=keyed)
    assert ok(again)["amount_refunded"] == 9000 and again.headers["Idempotent-Replayed"]
    assert part["status"] == "partially_refunded" and part["amount_refunded"] == 9000
    assert s.status(paid, s.student) == "active"
    full = ok(s.client.post(url, json={"reason": "left the course"},
                            headers=s.auth(s.admin)))
    assert full["status"] == "refunded" and full["amount_refunded"] == 59000
    assert s.status(paid, s.student) == "dropped"
    problem(s.client.post(url, json={"amount": 1, "reason": "more"},
                          headers=s.auth(s.admin)), 422)

    events = ok(s.client.get(f"/api/v1/payments/orders/{order['id']}/events",
                             headers=s.auth(s.admin)))
    assert [(e["from_status"], e["to_status"]) for e in events] == [
        (None, "pending"), ("pending", "paid"), ("paid", "partially_refunded"),
        ("partially_refunded", "refunded")]
    assert events[1]["actor"] == f"user:{s.admin.id}" and "NEFT-123" in events[1]["reason"]


def test_paying_first_then_enrolling_goes_through_the_gate(make_app):
    s = school(make_app)
    paid = s.course("paid", price=1000)
    order = ok(s.client.post("/api/v1/payments/orders", json={"course_id": paid},
                             headers=s.auth(s.student)), 201)
    ok(s.client.post(f"/api/v1/payments/orders/{order['id']}/mark-paid",
                     json={"reference": "cash"}, headers=s.auth(s.admin)))
    # Paying creates no enrollment by itself; enrolling asks the gate, which lets them in.
    assert s.status(paid, s.student) is None
    assert ok(s.enroll(s.student, paid), 201)["status"] == "active"
    problem(s.client.post("/api/v1/payments/orders", json={"course_id": paid},
                          headers=s.auth(s.student)), 409)


def test_invoice_numbers_are_sequential_per_institution(make_app):
    s = school(make_app)
    s.factories.enable(s.other, "payments")
    numbers = []
    for i, user in enumerate([s.student, s.student2, s.admin]):
        cid = s.course(f"c{i}", price=100)
        order = ok(s.client.post("/api/v1/payments/orders", json={"course_id": cid},
                                 headers=s.auth(user)), 201)
        numbers.append(ok(s.client.post(f"/api/v1/payments/orders/{order['id']}/mark-paid",
                                        json={"reference": "x"},
                                        headers=s.auth(s.admin)))["invoice_number"])
    assert numbers == [1, 2, 3]


def test_disabled_plugin_leaves_courses_free_and_routes_404(make_app):
    s = school(make_app)
    paid = s.course("paid", price=1000)
    outsider = s.factories.user(roles={s.other: ["admin", "mentor"]})
    other_student = s.factories.user(roles={s.other: ["student"]})
    body = ok(s.client.post("/api/v1/courses", json={"slug": "o", "title": "O"},
                            headers=s.auth(outsider, s.other)), 201)
    ok(s.client.post(f"/api/v1/courses/{body['id']}/publish",
                     headers=s.auth(outsider, s.other)))
    problem(s.client.put(f"/api/v1/payments/prices/{body['id']}",
                         json={"amount": 100, "currency": "INR"},
                         headers=s.auth(outsider, s.other)), 404)
    problem(s.client.get("/api/v1/payments/orders", headers=s.auth(other_student, s.other)),
            404)
    r = s.client.post(f"/api/v1/courses/{body['id']}/enrollments",
                      headers=s.auth(other_student, s.other))
    assert ok(r, 201)["status"] == "active"
    # Disabling it where it was on: the priced course is free to enroll and routes 404.
    ok(s.client.delete("/api/v1/institutions/school/plugins/payments",
                       headers=s.auth(s.admin)), 204)
    assert ok(s.enroll(s.student, paid), 201)["status"] == "active"
    problem(s.client.get("/api/v1/payments/orders", headers=s.auth(s.student)), 404)
    problem(s.client.post("/api/v1/payments/webhooks/stripe/school", data=b"{}"), 404)


def test_invoice_numbers_have_no_gaps_or_duplicates_under_concurrency(make_app):
    import threading

    s = school(make_app)
    cid = s.course("paid", price=100)
    buyers = [s.factories.user(roles={s.inst: ["student"]}) for _ in range(8)]
    order_ids = [ok(s.client.post("/api/v1/payments/orders", json={"course_id": cid},
                                  headers=s.auth(b)), 201)["id"] for b in buyers]
    headers = s.auth(s.admin)
    start = threading.Barrier(len(order_ids))
    codes: list[int] = []

    def pay(order_id: str) -> None:
        client = s.app.test_client()
        start.wait()
        codes.append(client.post(f"/api/v1/payments/orders/{order_id}/mark-paid",
                                 json={"reference": "x"}, headers=headers).status_code)

    threads = [threading.Thread(target=pay, args=(oid,)) for oid in order_ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [200] * len(order_ids)
    numbers = sorted(s.order(oid)["invoice_number"] for oid in order_ids)
    assert numbers == list(range(1, len(order_ids) + 1))
