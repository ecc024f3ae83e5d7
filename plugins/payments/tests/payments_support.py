"""Shared set-up of the payments tests: a school with its people, paid courses made over HTTP,
local fake Stripe and Razorpay API servers, and webhooks signed with each provider's own
algorithm. Nothing here reaches the internet."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy import select

from kalpla_core.testing import Factories
from kalpla_core.toolkit import Enrollment

STRIPE_KEYS = {"secret_key": "sk_test_school", "webhook_secret": "whsec_school"}
RAZORPAY_KEYS = {"key_id": "rzp_test_school", "key_secret": "rzp_secret_school",
                 "webhook_secret": "rzp_whsec_school"}


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, (response.status_code, response.get_data(True))
    return response.json if response.get_data() else None


def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.get_data(True))
    assert response.content_type == "application/problem+json"
    return response.json


@dataclass
class School:
    app: Any
    client: Any
    factories: Factories
    inst: Any
    other: Any
    admin: Any
    instructor: Any
    student: Any
    student2: Any
    new_app: Any = None  # builds another app like ``app`` (the CLI adds commands to its app)

    @property
    def kalpla(self) -> Any:
        return self.app.extensions["kalpla"]

    def auth(self, user: Any, inst: Any = None) -> dict[str, str]:
        return self.factories.auth(user, inst or self.inst)

    def course(self, slug: str, price: int | None = None, currency: str = "INR") -> str:
        body = ok(self.client.post("/api/v1/courses", json={"slug": slug, "title": slug.title()},
                                   headers=self.auth(self.instructor)), 201)
        ok(self.client.post(f"/api/v1/courses/{body['id']}/publish",
                            headers=self.auth(self.instructor)))
        if price is not None:
            ok(self.client.put(f"/api/v1/payments/prices/{body['id']}",
                               json={"amount": price, "currency": currency},
                               headers=self.auth(self.admin)))
        return str(body["id"])

    def enroll(self, user: Any, course_id: str) -> Any:
        return self.client.post(f"/api/v1/courses/{course_id}/enrollments",
                                headers=self.auth(user))

    def enrollment(self, course_id: str, user: Any) -> Enrollment | None:
        with self.kalpla.db.session() as s:
            return s.scalar(select(Enrollment).where(Enrollment.course_id == course_id,
                                                     Enrollment.user_id == user.id))

    def status(self, course_id: str, user: Any) -> str | None:
        e = self.enrollment(course_id, user)
        return e.status if e else None

    def order(self, order_id: str, user: Any | None = None) -> dict[str, Any]:
        return ok(self.client.get(f"/api/v1/payments/orders/{order_id}",
                                  headers=self.auth(user or self.admin)))

    def reconcile(self) -> str:
        """``kalpla payments reconcile`` through the ``kalpla`` command line on this app."""
        from click.testing import CliRunner

        from kalpla_core.cli import make_cli

        result = CliRunner().invoke(make_cli(create_app=self.new_app),
                                    ["payments", "reconcile"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return str(result.output)

    def set_keys(self, provider: str, values: dict[str, str]) -> None:
        ok(self.client.put(f"/api/v1/payments/credentials/{provider}",
                           json={"values": values}, headers=self.auth(self.admin)))


def school(make_app: Any, settings: dict[str, Any] | None = None, **config: Any) -> School:
    def new_app() -> Any:
        app = make_app(plugins=["payments"])
        app.config.update(config)
        return app

    app = new_app()
    f = Factories(app)
    inst = f.institution("school", plugins={"payments": settings or {}})
    other = f.institution("other")
    return School(app=app, client=app.test_client(), factories=f, inst=inst, other=other,
                  admin=f.user(name="Ada Admin", roles={inst: ["admin"]}),
                  instructor=f.user(name="Ines Instructor", roles={inst: ["mentor"]}),
                  student=f.user(name="Sam Student", roles={inst: ["student"]}),
                  student2=f.user(name="Tia Student", roles={inst: ["student"]}),
                  new_app=new_app)


def deliver_at_once(app: Any, path: str, deliveries: list[tuple[bytes, dict[str, str]]]
                    ) -> list[Any]:
    """POST each ``(body, headers)`` webhook from a thread of its own, the threads released
    together; the JSON answers (every one must be a 200)."""
    results: list[Any] = []
    start = threading.Barrier(len(deliveries))

    def deliver(body: bytes, headers: dict[str, str]) -> None:
        client = app.test_client()
        start.wait()
        r = client.post(path, data=body, headers=headers)
        results.append((r.status_code, r.get_data(True), r.json))

    threads = [threading.Thread(target=deliver, args=d) for d in deliveries]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [(code, text) for code, text, _ in results if code != 200] == []
    return [answer for _, _, answer in results]


def recorded_events(kalpla: Any, monkeypatch: Any) -> list[tuple[str, Any]]:
    """Every event the app delivers from now on, as ``(hook, event)``."""
    seen: list[tuple[str, Any]] = []
    deliver = kalpla.deliver

    def record(hook: str, event: Any, only: Any = None) -> None:
        seen.append((hook, event))
        deliver(hook, event, only)

    monkeypatch.setattr(kalpla, "deliver", record)
    return seen


# --- signing, as the providers do -----------------------------------------------------------

def stripe_signature(body: bytes, secret: str, timestamp: int | None = None) -> str:
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


def stripe_event(event_id: str, type_: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"id": event_id, "object": "event", "type": type_,
                       "data": {"object": obj}}).encode()


def razorpay_hmac(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


# --- gateway subscriptions: a plan sold through Stripe or Razorpay ---------------------------

STRIPE_HOOK = "/api/v1/payments/webhooks/stripe/school"
RAZORPAY_HOOK = "/api/v1/payments/webhooks/razorpay/school"
DAY = 86400


def post_stripe(s: Any, body: bytes) -> Any:
    return ok(s.client.post(STRIPE_HOOK, data=body, headers={
        "Stripe-Signature": stripe_signature(body, STRIPE_KEYS["webhook_secret"])}))


def plan_school(make_app: Any, fake: Any, provider: str,
                **settings: Any) -> tuple[Any, str, str]:
    """A school selling one paid course through a monthly plan of 1000 (+ tax)."""
    base = "PAYMENTS_STRIPE_API_BASE" if provider == "stripe" else "PAYMENTS_RAZORPAY_API_BASE"
    s = school(make_app, {"provider": provider, **settings}, **{base: fake.url})
    s.set_keys(provider, STRIPE_KEYS if provider == "stripe" else RAZORPAY_KEYS)
    course = s.course("alpha", price=5000)
    plan = ok(s.client.post("/api/v1/payments/plans", json={
        "name": "Monthly", "amount": 1000, "currency": "INR", "period_days": 30,
        "course_ids": [course]}, headers=s.auth(s.admin)), 201)
    return s, course, plan["id"]


def buy_plan(s: Any, plan_id: str) -> dict[str, Any]:
    return ok(s.client.post("/api/v1/payments/orders", json={"plan_id": plan_id},
                            headers=s.auth(s.student)), 201)


def stripe_invoice(invoice_id: str, reason: str, amount: int, order_id: str, end: int,
                   **extra: Any) -> bytes:
    """A paid subscription invoice as older Stripe API versions shape it."""
    return stripe_event(f"evt_{invoice_id}", "invoice.paid", {
        "id": invoice_id, "object": "invoice", "billing_reason": reason, "subscription": "sub_1",
        "subscription_details": {"metadata": {"order_id": order_id}}, "amount_paid": amount,
        "currency": "inr", "tax": None, "lines": {"data": [{"period": {"end": end}}]},
        **extra})


def pay_subscription_checkout(fake: Any, order: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The buyer pays a plan's Checkout Session at (fake) Stripe: the subscription ``sub_1``
    and its first invoice ``in_1`` are made, paid by a payment intent of their own (which,
    as Stripe's, carries no order metadata). The session and that payment intent's id."""
    sid = order["checkout"]["url"].rsplit("/", 1)[1]
    cs = fake.objects[sid]
    cs.update(status="complete", payment_status="paid", subscription="sub_1", invoice="in_1")
    pid = fake.next_id("pi")
    fake.objects[pid] = {"id": pid, "object": "payment_intent", "status": "succeeded",
                         "metadata": {}}
    now = int(time.time())
    fake.objects["in_1"] = {
        "id": "in_1", "object": "invoice", "status": "paid", "subscription": "sub_1",
        "billing_reason": "subscription_create", "amount_paid": cs["amount_total"],
        "currency": cs["currency"], "created": now,
        "subscription_details": {"metadata": cs["metadata"]},
        "lines": {"data": [{"period": {"end": now + 30 * DAY}}]},
        "payments": {"object": "list", "data": [{
            "object": "invoice_payment", "invoice": "in_1", "status": "paid",
            "payment": {"type": "payment_intent", "payment_intent": pid}}]}}
    return cs, pid


def complete_subscription(s: Any, fake: Any, order: dict[str, Any]) -> str:
    """Pay the plan's checkout and deliver ``checkout.session.completed``; the payment
    intent that paid the first invoice."""
    cs, pid = pay_subscription_checkout(fake, order)
    post_stripe(s, stripe_event("evt_cs", "checkout.session.completed", cs))
    return pid


def plan_orders(s: Any, user: Any) -> list[dict[str, Any]]:
    """The user's orders of plans (not the course checkouts the gate started), newest
    first."""
    items = ok(s.client.get("/api/v1/payments/orders", headers=s.auth(user)))["items"]
    return [o for o in items if o["plan_id"]]


def post_razorpay(s: Any, event: dict[str, Any], event_id: str) -> Any:
    body = json.dumps(event).encode()
    return ok(s.client.post(RAZORPAY_HOOK, data=body, headers={
        "X-Razorpay-Signature": razorpay_hmac(RAZORPAY_KEYS["webhook_secret"], body),
        "X-Razorpay-Event-Id": event_id}))


def razorpay_charged(sub_ref: str, order_id: str, payment_id: str, paid_count: int,
                     end: int) -> dict[str, Any]:
    return {"event": "subscription.charged", "payload": {
        "subscription": {"entity": {"id": sub_ref, "status": "active", "current_end": end,
                                    "paid_count": paid_count,
                                    "notes": {"order_id": order_id}}},
        "payment": {"entity": {"id": payment_id, "amount": 1180, "currency": "INR"}}}}


# --- fake gateways ----------------------------------------------------------------------------

def _nest(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's form encoding (``a[b][0][c]=v``) as nested dicts (lists keyed by index)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        parts = key.replace("]", "").split("[")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


@dataclass
class FakeGateway:
    url: str = ""
    calls: list[tuple[str, str, Any]] = field(default_factory=list)
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    counter: Any = field(default_factory=lambda: itertools.count(1))
    # Paths that answer 500, as a gateway having a bad moment does.
    broken: set[str] = field(default_factory=set)
    # Called with (method, path) as each request arrives, before it is answered.
    on_request: Any = None

    def next_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self.counter)}"


def _listing(fake: FakeGateway, kind: str, **match: str) -> list[dict[str, Any]]:
    return [o for o in fake.objects.values() if o.get("object", o.get("entity")) == kind
            and all(o.get(k) == v for k, v in match.items())]


def _missing(what: str) -> tuple[int, dict[str, Any]]:
    return 404, {"error": {"type": "invalid_request_error", "code": "resource_missing",
                           "message": f"No such {what}"}}


def _invoice_payments(invoice: dict[str, Any]) -> list[dict[str, Any]]:
    """An invoice's payments: its ``payments`` list, or (older shape) its payment intent."""
    listed = (invoice.get("payments") or {}).get("data")
    if listed is not None:
        return list(listed)
    intent = invoice.get("payment_intent")
    return [{"object": "invoice_payment", "invoice": invoice["id"], "status": "paid",
             "payment": {"type": "payment_intent", "payment_intent": intent}}] if intent else []


def _stripe_invoice(invoice: dict[str, Any], expand: list[str], prefix: str = "") -> Any:
    """As Stripe answers: an invoice's ``payments`` only when asked to expand them."""
    if f"{prefix}payments" in expand:
        return invoice
    return {k: v for k, v in invoice.items() if k != "payments"}


def _stripe(fake: FakeGateway, method: str, path: str, query: dict[str, str], auth: str,
            body: bytes) -> Any:
    if auth != f"Bearer {STRIPE_KEYS['secret_key']}":
        return 401, {"error": {"type": "invalid_request_error", "message": "bad key"}}
    form = _nest(parse_qsl(body.decode()))
    args = _nest(list(query.items()))
    expand = list((args.get("expand") or {}).values())
    fake.calls.append((method, path, form if method == "POST" else args))
    if method == "POST" and path == "/v1/checkout/sessions":
        sid = fake.next_id("cs_test")
        item = form["line_items"]["0"]["price_data"]
        meta = form.get("metadata", {})
        pid = None
        if form["mode"] == "payment":  # a subscription's payment comes with its invoice
            pid = fake.next_id("pi")
            fake.objects[pid] = {"id": pid, "object": "payment_intent", "metadata": meta}
        fake.objects[sid] = {"id": sid, "object": "checkout.session", "mode": form["mode"],
                             "url": f"{fake.url}/pay/{sid}", "status": "open",
                             "payment_status": "unpaid", "metadata": meta,
                             "amount_total": int(item["unit_amount"]),
                             "currency": item["currency"], "payment_intent": pid}
        return 200, fake.objects[sid]
    if method == "GET" and path == "/v1/invoices":
        # As Stripe pages a list: newest first, ``limit`` (10 unless asked, at most 100)
        # after the object ``starting_after`` names.
        found = sorted(_listing(fake, "invoice", subscription=query["subscription"],
                                status=query["status"]),
                       key=lambda i: (int(i.get("created") or 0), str(i["id"])), reverse=True)
        limit = int(query.get("limit", 10))
        if not 1 <= limit <= 100:
            return 400, {"error": {"type": "invalid_request_error",
                                   "message": "limit must be between 1 and 100"}}
        after = query.get("starting_after")
        if after:
            ids = [str(i["id"]) for i in found]
            if after not in ids:
                return _missing(f"invoice: '{after}'")
            found = found[ids.index(after) + 1:]
        return 200, {"object": "list", "url": path, "has_more": len(found) > limit,
                     "data": [_stripe_invoice(i, expand, "data.") for i in found[:limit]]}
    if method == "GET" and path == "/v1/invoice_payments":
        wanted = (args.get("payment") or {}).get("payment_intent")
        found = [p for i in _listing(fake, "invoice") for p in _invoice_payments(i)
                 if p["payment"]["payment_intent"] == wanted]
        return 200, {"object": "list", "url": path, "has_more": False, "data": found}
    if method == "GET" and path.split("/")[-1] in fake.objects:
        found = fake.objects[path.split("/")[-1]]
        return 200, _stripe_invoice(found, expand) if found.get("object") == "invoice" \
            else found
    if method == "POST" and path == "/v1/refunds":
        # Stripe refunds a payment intent or a charge; anything else is not one.
        intent, charge = form.get("payment_intent"), form.get("charge")
        if intent is not None and not intent.startswith("pi_"):
            return _missing(f"payment_intent: '{intent}'")
        if charge is not None and not charge.startswith(("ch_", "py_")):
            return _missing(f"charge: '{charge}'")
        rid = fake.next_id("re")
        return 200, {"id": rid, "object": "refund", "amount": int(form["amount"]),
                     "payment_intent": intent, "charge": charge, "status": "succeeded"}
    return _missing(path)


def _razorpay(fake: FakeGateway, method: str, path: str, query: dict[str, str], auth: str,
              body: bytes) -> Any:
    import base64

    expected = base64.b64encode(
        f"{RAZORPAY_KEYS['key_id']}:{RAZORPAY_KEYS['key_secret']}".encode()).decode()
    if auth != f"Basic {expected}":
        return 401, {"error": {"code": "BAD_REQUEST_ERROR", "description": "bad key"}}
    data = json.loads(body) if body else {}
    fake.calls.append((method, path, data))
    if method == "POST" and path == "/v1/orders":
        oid = fake.next_id("order")
        fake.objects[oid] = {"id": oid, "entity": "order", "amount": data["amount"],
                             "currency": data["currency"], "receipt": data["receipt"],
                             "notes": data.get("notes", {}), "status": "created",
                             "payments": []}
        return 200, {k: v for k, v in fake.objects[oid].items() if k != "payments"}
    if method == "POST" and path in ("/v1/plans", "/v1/subscriptions"):
        oid = fake.next_id("plan" if path == "/v1/plans" else "sub")
        fake.objects[oid] = {"id": oid, **data}
        if oid.startswith("sub_"):
            fake.objects[oid].update(status="created", paid_count=0,
                                     short_url=f"{fake.url}/rzp/{oid}")
        return 200, fake.objects[oid]
    if method == "GET" and path == "/v1/invoices":
        # As Razorpay pages a collection: newest first, ``count`` (10 unless asked, at most
        # 100) from ``skip``.
        found = sorted(_listing(fake, "invoice", subscription_id=query["subscription_id"]),
                       key=lambda i: (int(i.get("created_at") or i.get("billing_start") or 0),
                                      str(i["id"])), reverse=True)
        count, skip = int(query.get("count", 10)), int(query.get("skip", 0))
        if not 1 <= count <= 100:
            return 400, {"error": {"code": "BAD_REQUEST_ERROR",
                                   "description": "count must be between 1 and 100"}}
        page = found[skip:skip + count]
        return 200, {"entity": "collection", "count": len(page), "items": page}
    parts = path.strip("/").split("/")
    if method == "GET" and len(parts) == 3 and parts[2] in fake.objects:
        return 200, fake.objects[parts[2]]
    if method == "GET" and len(parts) == 4 and parts[1] == "orders" and parts[3] == "payments":
        order = fake.objects.get(parts[2])
        return (200, {"entity": "collection", "items": order["payments"]}) if order \
            else (404, {"error": {"code": "BAD_REQUEST_ERROR", "description": "no order"}})
    if method == "POST" and len(parts) == 4 and parts[1] == "payments" and parts[3] == "refund":
        return 200, {"id": fake.next_id("rfnd"), "entity": "refund", "payment_id": parts[2],
                     "amount": data["amount"], "status": "processed"}
    return 404, {"error": {"code": "BAD_REQUEST_ERROR", "description": f"no {path}"}}


@contextmanager
def fake_server(kind: str) -> Iterator[FakeGateway]:
    """A local HTTP server speaking enough of Stripe's or Razorpay's API for the plugin."""
    fake = FakeGateway()
    handle = _stripe if kind == "stripe" else _razorpay

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            path, _, query = self.path.partition("?")
            if fake.on_request is not None:
                fake.on_request(self.command, path)
            if path in fake.broken:
                status, payload = 500, {"error": {"code": "SERVER_ERROR", "type": "api_error",
                                                  "description": "try again",
                                                  "message": "try again"}}
            else:
                status, payload = handle(fake, self.command, path, dict(parse_qsl(query)),
                                         self.headers.get("Authorization", ""), body)
            raw = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        do_GET = do_POST = _serve

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
