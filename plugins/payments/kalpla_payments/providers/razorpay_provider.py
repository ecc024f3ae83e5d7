"""Razorpay through the official ``razorpay`` package: orders paid in Razorpay's checkout
widget, the payment signature (HMAC-SHA256 of ``order_id|payment_id`` with the key secret),
webhooks (``X-Razorpay-Signature``: HMAC-SHA256 of the raw body with the webhook secret) and
refunds.

Credentials: ``key_id`` (public, handed to the widget), ``key_secret`` and
``webhook_secret``. The API base is Razorpay's unless the app's
``PAYMENTS_RAZORPAY_API_BASE`` config names another (tests use a local fake server).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import razorpay
import requests
from razorpay.errors import BadRequestError, GatewayError, ServerError, SignatureVerificationError

from kalpla_payments.providers.base import (
    Checkout,
    CheckoutRequest,
    PaymentEvent,
    ProviderError,
    WebhookError,
)

CLIENT_ERRORS = (BadRequestError, GatewayError, ServerError, requests.RequestException)
# Billing cycles a subscription runs for at most (Razorpay asks for a count); it is ended
# earlier by cancelling it at Razorpay, whose event ends it here.
SUBSCRIPTION_CYCLES = 120
# Razorpay lists at most 100 invoices a call; a subscription has at most
# ``SUBSCRIPTION_CYCLES`` charges (plus the odd retry), so this many pages is ample.
INVOICE_PAGE = 100
INVOICE_PAGES = 10
SUBSCRIPTION_STATUS = {"authenticated": "active", "active": "active", "pending": "past_due",
                       "halted": "past_due", "cancelled": "canceled", "completed": "canceled",
                       "expired": "canceled"}


def _ts(value: Any) -> datetime | None:
    return datetime.fromtimestamp(int(value), UTC) if value else None


def _header(headers: Mapping[str, str], name: str) -> str:
    return next((v for k, v in headers.items() if k.lower() == name.lower()), "")


def _all_invoices(client: razorpay.Client, subscription_ref: str) -> list[dict[str, Any]]:
    """A subscription's invoices, every page of them: Razorpay answers at most
    ``INVOICE_PAGE`` a call, newest first, and pages by ``skip``. An invoice made between two
    calls shifts the older ones to a later page, so one may come twice (kept once), never
    missed. ``ProviderError`` rather than a partial list past ``INVOICE_PAGES`` pages."""
    seen: dict[str, dict[str, Any]] = {}
    for page in range(INVOICE_PAGES):
        found = client.invoice.all({"subscription_id": subscription_ref,
                                    "count": INVOICE_PAGE, "skip": page * INVOICE_PAGE})
        items = found.get("items") or []
        for invoice in items:
            seen.setdefault(str(invoice.get("id")), invoice)
        if len(items) < INVOICE_PAGE:
            return list(seen.values())
    raise ProviderError(f"subscription {subscription_ref} has more than "
                        f"{INVOICE_PAGES * INVOICE_PAGE} invoices")


class RazorpayProvider:
    name = "razorpay"
    credential_fields: tuple[str, ...] = ("key_id", "key_secret", "webhook_secret")

    def __init__(self, api_base: str | None = None) -> None:
        self.api_base = api_base

    def _client(self, credentials: Mapping[str, str]) -> razorpay.Client:
        if not credentials.get("key_id") or not credentials.get("key_secret"):
            raise ProviderError("no Razorpay keys are set for this institution")
        options = {"base_url": self.api_base} if self.api_base else {}
        return razorpay.Client(auth=(credentials["key_id"], credentials["key_secret"]),
                               **options)

    def start_checkout(self, credentials: Mapping[str, str],
                       request: CheckoutRequest) -> Checkout:
        notes = {"order_id": request.order_id}
        try:
            client = self._client(credentials)
            if request.period_days:
                return self._start_subscription(client, credentials, request)
            order = client.order.create({
                "amount": request.amount, "currency": request.currency,
                "receipt": request.order_id[:40], "notes": notes})
        except CLIENT_ERRORS as exc:
            raise ProviderError(str(exc)) from None
        return Checkout(provider_ref=order["id"], url=None, client={
            "razorpay_order_id": order["id"], "key_id": credentials["key_id"],
            "amount": request.amount, "currency": request.currency})

    def _start_subscription(self, client: razorpay.Client, credentials: Mapping[str, str],
                            request: CheckoutRequest) -> Checkout:
        """A Razorpay plan billed every ``period_days`` days, and a subscription to it that
        the buyer authorises in the widget (or at its hosted ``short_url``)."""
        plan = client.plan.create({"period": "daily", "interval": request.period_days,
                                   "item": {"name": request.description[:100],
                                            "amount": request.amount,
                                            "currency": request.currency},
                                   "notes": {"order_id": request.order_id}})
        sub = client.subscription.create({"plan_id": plan["id"], "total_count": SUBSCRIPTION_CYCLES,
                                          "customer_notify": 1,
                                          "notes": {"order_id": request.order_id}})
        return Checkout(provider_ref=sub["id"], url=sub.get("short_url"), client={
            "razorpay_subscription_id": sub["id"], "key_id": credentials["key_id"],
            "amount": request.amount, "currency": request.currency})

    def confirm_payment(self, credentials: Mapping[str, str], order_ref: str,
                        payment_id: str, signature: str, amount: int) -> PaymentEvent:
        """The widget's answer, checked with the key secret (``order_id|payment_id``, or
        ``payment_id|subscription_id`` for a subscription): a ``paid`` event."""
        utility = self._client(credentials).utility
        try:
            if order_ref.startswith("sub_"):
                utility.verify_subscription_payment_signature({
                    "razorpay_subscription_id": order_ref, "razorpay_payment_id": payment_id,
                    "razorpay_signature": signature})
            else:
                utility.verify_payment_signature({
                    "razorpay_order_id": order_ref, "razorpay_payment_id": payment_id,
                    "razorpay_signature": signature})
        except SignatureVerificationError:
            raise WebhookError("the payment signature does not match") from None
        return PaymentEvent(f"payment:{payment_id}", "payment.signed", "paid",
                            order_ref=order_ref, payment_id=payment_id, amount=amount)

    def verify_webhook(self, credentials: Mapping[str, str], headers: Mapping[str, str],
                       body: bytes) -> list[PaymentEvent]:
        secret = credentials.get("webhook_secret")
        signature = _header(headers, "X-Razorpay-Signature")
        if not secret or not signature:
            raise WebhookError("missing webhook secret or signature")
        try:
            razorpay.Client().utility.verify_webhook_signature(body.decode("utf-8"),
                                                               signature, secret)
            event = json.loads(body)
        except (SignatureVerificationError, UnicodeDecodeError, ValueError):
            raise WebhookError("bad signature") from None
        if not isinstance(event, dict) or not event.get("event"):
            raise WebhookError("not a Razorpay event")
        # Razorpay names each delivery's event in a header; the body's digest stands in.
        event_id = _header(headers, "X-Razorpay-Event-Id") or hashlib.sha256(body).hexdigest()
        if str(event["event"]).startswith("subscription."):
            return self._read_subscription(event_id, event)
        return [self._read(event_id, event)]

    def _read_subscription(self, event_id: str, event: dict[str, Any]) -> list[PaymentEvent]:
        """A subscription event: its state, plus the payment of a charged cycle (the first
        one pays the plan's order). One delivery, so the parts get ids of their own."""
        etype = str(event["event"])
        payload = event.get("payload") or {}
        sub = (payload.get("subscription") or {}).get("entity") or {}
        notes = sub.get("notes") or {}
        order_id = notes.get("order_id") if isinstance(notes, dict) else None
        end = sub.get("current_end")
        out = []
        payment = (payload.get("payment") or {}).get("entity") or {}
        period_end = datetime.fromtimestamp(int(end), UTC) if end else None
        if etype == "subscription.charged" and payment.get("id"):
            common: dict[str, Any] = {
                "order_id": order_id, "order_ref": sub.get("id"), "payment_id": payment["id"],
                "amount": int(payment.get("amount") or 0), "subscription_ref": sub.get("id")}
            # The first charge pays the plan's order; each later one (``paid_count`` counts
            # them, this one included) is a renewal with an order of its own.
            if int(sub.get("paid_count") or 1) > 1:
                out.append(PaymentEvent(
                    f"{event_id}:payment", etype, "renewal", renewal_ref=payment["id"],
                    currency=str(payment.get("currency") or "").upper() or None,
                    period_end=period_end, paid_at=_ts(payment.get("created_at")),
                    **common))
            else:
                out.append(PaymentEvent(f"{event_id}:payment", etype, "paid", **common))
        out.append(PaymentEvent(
            f"{event_id}:state", etype, "subscription", order_id=order_id,
            order_ref=sub.get("id"), subscription_ref=sub.get("id"),
            status=SUBSCRIPTION_STATUS.get(str(sub.get("status")), "past_due"),
            period_end=period_end))
        return out

    def _read(self, event_id: str, event: dict[str, Any]) -> PaymentEvent:
        etype = str(event["event"])
        payload = event.get("payload") or {}
        payment = (payload.get("payment") or {}).get("entity") or {}
        notes = payment.get("notes") or {}
        common = {"order_id": notes.get("order_id") if isinstance(notes, dict) else None,
                  "order_ref": payment.get("order_id"), "payment_id": payment.get("id")}
        if etype in ("payment.captured", "order.paid"):
            return PaymentEvent(event_id, etype, "paid", amount=int(payment.get("amount") or 0),
                                **common)
        if etype == "payment.failed":
            return PaymentEvent(event_id, etype, "failed", **common)
        if etype in ("refund.processed", "refund.created"):
            refund = (payload.get("refund") or {}).get("entity") or {}
            total = int(payment.get("amount_refunded") or refund.get("amount") or 0)
            common["payment_id"] = common["payment_id"] or refund.get("payment_id")
            return PaymentEvent(event_id, etype, "refunded", amount=total,
                                paid_amount=int(payment.get("amount") or 0), **common)
        return PaymentEvent(event_id, etype, "ignored")

    def poll(self, credentials: Mapping[str, str], provider_ref: str) -> list[PaymentEvent]:
        try:
            client = self._client(credentials)
            if provider_ref.startswith("sub_"):
                return self._poll_subscription(client, provider_ref)
            found = client.order.payments(provider_ref)
        except CLIENT_ERRORS as exc:
            raise ProviderError(str(exc)) from None
        for payment in found.get("items", []):
            if payment.get("status") == "captured":
                return [PaymentEvent(f"payment:{payment['id']}", "order.poll", "paid",
                                     order_ref=provider_ref, payment_id=payment["id"],
                                     amount=int(payment.get("amount") or 0))]
        return []

    def _poll_subscription(self, client: razorpay.Client, ref: str) -> list[PaymentEvent]:
        sub = client.subscription.fetch(ref)
        if int(sub.get("paid_count") or 0) < 1:
            return []
        plan = client.plan.fetch(sub["plan_id"])
        end = sub.get("current_end")
        return [PaymentEvent(f"poll:{ref}:first", "subscription.poll", "paid", order_ref=ref,
                             amount=int((plan.get("item") or {}).get("amount") or 0),
                             subscription_ref=ref),
                PaymentEvent(f"poll:{ref}:{end}", "subscription.poll", "subscription",
                             order_ref=ref, subscription_ref=ref,
                             status=SUBSCRIPTION_STATUS.get(str(sub.get("status")), "past_due"),
                             period_end=datetime.fromtimestamp(int(end), UTC) if end else None)]

    def poll_subscription(self, credentials: Mapping[str, str],
                          subscription_ref: str) -> list[PaymentEvent]:
        """What lost webhooks would have said about a subscription: its paid invoices in
        billing order (the first charge pays the plan's order, each later one is a renewal)
        and its state and period."""
        try:
            client = self._client(credentials)
            sub = client.subscription.fetch(subscription_ref)
            invoices = _all_invoices(client, subscription_ref)
        except CLIENT_ERRORS as exc:
            raise ProviderError(str(exc)) from None
        notes = sub.get("notes") or {}
        order_id = notes.get("order_id") if isinstance(notes, dict) else None
        # Every invoice is read: the oldest paid one is the first charge (it pays the plan's
        # order), so a page short of it would take a renewal for the first payment.
        paid = sorted((i for i in invoices
                       if i.get("status") == "paid" and i.get("payment_id")),
                      key=lambda i: int(i.get("billing_start") or i.get("paid_at") or 0))
        out = []
        for n, invoice in enumerate(paid):
            payment_id = str(invoice["payment_id"])
            common: dict[str, Any] = {
                "order_id": order_id, "order_ref": subscription_ref, "payment_id": payment_id,
                "amount": int(invoice.get("amount_paid") or invoice.get("amount") or 0),
                "subscription_ref": subscription_ref}
            if n == 0:
                out.append(PaymentEvent(f"poll:{payment_id}:first", "subscription.poll",
                                        "paid", **common))
                continue
            end = invoice.get("billing_end")
            out.append(PaymentEvent(
                f"poll:{payment_id}", "subscription.poll", "renewal", renewal_ref=payment_id,
                currency=str(invoice.get("currency") or "").upper() or None,
                period_end=_ts(end), paid_at=_ts(invoice.get("paid_at")), **common))
        end = sub.get("current_end")
        status = SUBSCRIPTION_STATUS.get(str(sub.get("status")), "past_due")
        out.append(PaymentEvent(
            f"poll:{subscription_ref}:{status}:{end}", "subscription.poll", "subscription",
            order_ref=subscription_ref, subscription_ref=subscription_ref, status=status,
            period_end=datetime.fromtimestamp(int(end), UTC) if end else None))
        return out

    def refund(self, credentials: Mapping[str, str], payment_id: str, amount: int,
               reason: str) -> str:
        if not payment_id:
            raise ProviderError("the order has no Razorpay payment to refund")
        try:
            refund = self._client(credentials).payment.refund(
                payment_id, {"amount": amount, "notes": {"reason": reason[:250]}})
        except CLIENT_ERRORS as exc:
            raise ProviderError(str(exc)) from None
        return str(refund["id"])


def factory(app: Any) -> RazorpayProvider:
    return RazorpayProvider(app.config.get("PAYMENTS_RAZORPAY_API_BASE"))
