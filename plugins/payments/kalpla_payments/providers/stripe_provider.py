"""Stripe through the official ``stripe`` package: Checkout Sessions (one-off payments and
subscriptions), refunds, and webhooks signed with the ``Stripe-Signature`` scheme.

Credentials: ``secret_key`` (API) and ``webhook_secret`` (``whsec_…``). The API base is
Stripe's unless the app's ``PAYMENTS_STRIPE_API_BASE`` config names another (tests use a
local fake server).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import stripe

from kalpla_payments.providers.base import (
    Checkout,
    CheckoutRequest,
    PaymentEvent,
    ProviderError,
    WebhookError,
)

log = logging.getLogger(__name__)
TOLERANCE_SECONDS = 300
# Stripe lists at most 100 objects a call; a subscription's paid invoices take this many
# pages at most before ``reconcile`` gives up on it (counted as failed) rather than guess.
INVOICE_PAGE = 100
INVOICE_PAGES = 10
SUBSCRIPTION_STATUS = {"active": "active", "trialing": "active", "past_due": "past_due",
                       "unpaid": "past_due", "canceled": "canceled",
                       "incomplete_expired": "canceled"}


def _ts(value: Any) -> datetime | None:
    return datetime.fromtimestamp(int(value), UTC) if value else None


def _invoice_payment_intent(invoice: dict[str, Any]) -> str | None:
    """The payment intent that paid an invoice (older API versions name it on the invoice,
    newer ones in its ``payments`` list)."""
    if invoice.get("payment_intent"):
        return str(invoice["payment_intent"])
    for entry in (invoice.get("payments") or {}).get("data") or []:
        intent = (entry.get("payment") or {}).get("payment_intent")
        if intent and entry.get("status", "paid") == "paid":
            return str(intent)
    return None


def _paid_by(invoice_id: str | None, intent: str | None) -> dict[str, str | None]:
    """A subscription invoice's payment as a ``paid`` event names it: the payment intent
    (what Stripe's refunds and ``charge.refunded`` name), replacing the invoice an older
    order may have recorded; the invoice itself only when its payment is not known."""
    return {"payment_id": intent or invoice_id, "replaces": invoice_id if intent else None}


def _invoice_tax(invoice: dict[str, Any]) -> int | None:
    """The tax Stripe computed on the invoice, or None when it computed none (Kalpla's own
    tax is then inside the amount, as the checkout sent it)."""
    if invoice.get("tax") is not None:
        return int(invoice["tax"])
    taxes = invoice.get("total_taxes")
    return sum(int(t.get("amount") or 0) for t in taxes) if taxes else None


def _invoice_paid_at(invoice: dict[str, Any]) -> datetime | None:
    """When the invoice was paid (its status transition; else when it was made)."""
    return _ts((invoice.get("status_transitions") or {}).get("paid_at")) \
        or _ts(invoice.get("created"))


def _invoice_events(eid: str, etype: str, invoice: dict[str, Any],
                    intent_of: Callable[[str], str | None] | None = None) -> list[PaymentEvent]:
    """``invoice.paid`` of a subscription. The first invoice (``subscription_create``) is the
    checkout's own payment: it pays the plan's order (which the checkout's event may pay
    too; an order is paid once). A renewal (``subscription_cycle``) is a charge of its own,
    an order of its own. Any other invoice only moves the period on. Either names the
    payment intent that paid it, asked of Stripe (``intent_of``) when the payload does not
    carry it (newer API versions list it in ``payments`` only when asked to)."""
    details = (invoice.get("parent") or {}).get("subscription_details") \
        or invoice.get("subscription_details") or {}
    sub_ref = invoice.get("subscription") or details.get("subscription")
    order_id = (details.get("metadata") or {}).get("order_id")
    lines = (invoice.get("lines") or {}).get("data") or []
    end = _ts(max((int((ln.get("period") or {}).get("end") or 0) for ln in lines), default=0))
    amount = int(invoice.get("amount_paid") or 0)
    reason = invoice.get("billing_reason")
    state = {"order_id": order_id, "subscription_ref": sub_ref, "status": "active",
             "period_end": end}
    charged = reason in ("subscription_cycle", "subscription_create") and amount > 0
    intent = _invoice_payment_intent(invoice) if charged else None
    if charged and intent is None and intent_of is not None and invoice.get("id"):
        intent = intent_of(str(invoice["id"]))
    if reason == "subscription_cycle" and amount > 0:
        return [PaymentEvent(eid, etype, "renewal", payment_id=intent,
                             renewal_ref=invoice.get("id"), amount=amount,
                             currency=str(invoice.get("currency") or "").upper() or None,
                             tax=_invoice_tax(invoice), paid_at=_invoice_paid_at(invoice),
                             **state)]
    if reason == "subscription_create" and amount > 0:
        return [PaymentEvent(f"{eid}:payment", etype, "paid", order_id=order_id,
                             amount=amount, subscription_ref=sub_ref,
                             **_paid_by(invoice.get("id"), intent)),
                PaymentEvent(f"{eid}:state", etype, "subscription", **state)]
    return [PaymentEvent(eid, etype, "subscription", **state)]


class StripeProvider:
    name = "stripe"
    credential_fields: tuple[str, ...] = ("secret_key", "webhook_secret")

    def __init__(self, api_base: str | None = None) -> None:
        self.api_base = api_base

    def _client(self, credentials: Mapping[str, str]) -> stripe.StripeClient:
        key = credentials.get("secret_key")
        if not key:
            raise ProviderError("no Stripe secret key is set for this institution")
        extra: dict[str, Any] = {"base_addresses": {"api": self.api_base}} \
            if self.api_base else {}
        return stripe.StripeClient(key, max_network_retries=0, **extra)

    def start_checkout(self, credentials: Mapping[str, str],
                       request: CheckoutRequest) -> Checkout:
        metadata = {"order_id": request.order_id, "institution_id": request.institution_id}
        price_data: dict[str, Any] = {"currency": request.currency.lower(),
                                      "unit_amount": request.amount,
                                      "product_data": {"name": request.description}}
        params: dict[str, Any] = {
            "line_items": [{"quantity": 1, "price_data": price_data}],
            "success_url": request.success_url or "https://example.invalid/success",
            "cancel_url": request.cancel_url or "https://example.invalid/cancel",
            "client_reference_id": request.order_id, "metadata": metadata,
            "customer_email": request.customer_email,
        }
        if request.period_days:
            price_data["recurring"] = {"interval": "day",
                                       "interval_count": request.period_days}
            params.update(mode="subscription", subscription_data={"metadata": metadata})
        else:
            params.update(mode="payment", payment_intent_data={"metadata": metadata})
        try:
            session = self._client(credentials).v1.checkout.sessions.create(params=params)
        except stripe.StripeError as exc:
            raise ProviderError(str(exc.user_message or exc)) from None
        return Checkout(provider_ref=session.id, url=session.url)

    def verify_webhook(self, credentials: Mapping[str, str], headers: Mapping[str, str],
                       body: bytes) -> list[PaymentEvent]:
        secret = credentials.get("webhook_secret")
        if not secret:
            raise WebhookError("no webhook secret is set")
        header = next((v for k, v in headers.items() if k.lower() == "stripe-signature"), "")
        try:
            stripe.WebhookSignature.verify_header(body.decode("utf-8"), header, secret,
                                                  TOLERANCE_SECONDS)
            event = json.loads(body)
        except (stripe.SignatureVerificationError, UnicodeDecodeError, ValueError) as exc:
            raise WebhookError(str(exc) or "bad signature") from None
        if not isinstance(event, dict) or not event.get("id") or not event.get("type"):
            raise WebhookError("not a Stripe event")
        return self._read(credentials, event)

    def _read(self, credentials: Mapping[str, str],
              event: dict[str, Any]) -> list[PaymentEvent]:
        eid, etype = str(event["id"]), str(event["type"])
        obj: dict[str, Any] = (event.get("data") or {}).get("object") or {}
        meta = obj.get("metadata") or {}
        if etype in ("checkout.session.completed", "checkout.session.async_payment_succeeded"):
            return [self._session_event(credentials, eid, etype, obj)]
        if etype == "checkout.session.async_payment_failed":
            return [PaymentEvent(eid, etype, "failed", order_id=meta.get("order_id"),
                                 order_ref=obj.get("id"))]
        if etype == "checkout.session.expired":
            return [PaymentEvent(eid, etype, "expired", order_id=meta.get("order_id"),
                                 order_ref=obj.get("id"))]
        if etype == "payment_intent.payment_failed":
            return [PaymentEvent(eid, etype, "failed", order_id=meta.get("order_id"),
                                 payment_id=obj.get("id"))]
        if etype == "charge.refunded":
            intent = obj.get("payment_intent")
            order_id = meta.get("order_id") or self._order_of_intent(credentials, intent)
            # A subscription's payment carries no order: its invoice names the plan's first
            # order where that order recorded the invoice in place of the payment.
            invoice = None if order_id else self._invoice_of_intent(credentials, intent)
            return [PaymentEvent(eid, etype, "refunded", order_id=order_id,
                                 payment_id=intent, replaces=invoice,
                                 amount=int(obj.get("amount_refunded") or 0),
                                 paid_amount=int(obj.get("amount_captured")
                                                 or obj.get("amount") or 0))]
        if etype == "invoice.paid":
            return _invoice_events(eid, etype, obj,
                                   lambda ref: self._intent_of_invoice(credentials, ref))
        if etype in ("customer.subscription.updated", "customer.subscription.deleted"):
            items = (obj.get("items") or {}).get("data") or [{}]
            end = obj.get("current_period_end") or items[0].get("current_period_end")
            status = "canceled" if etype.endswith("deleted") else \
                SUBSCRIPTION_STATUS.get(str(obj.get("status")), "past_due")
            return [PaymentEvent(eid, etype, "subscription", subscription_ref=obj.get("id"),
                                 order_id=meta.get("order_id"), status=status,
                                 period_end=_ts(end))]
        return [PaymentEvent(eid, etype, "ignored")]

    def _session_event(self, credentials: Mapping[str, str], eid: str, etype: str,
                       obj: dict[str, Any]) -> PaymentEvent:
        """A completed Checkout Session is paid only when its ``payment_status`` says so: with
        a delayed method (bank debit, transfer) it completes ``unpaid`` and the outcome comes
        later as ``checkout.session.async_payment_succeeded`` or ``…_failed``. A subscription's
        session names only its first invoice: the payment intent is asked of Stripe."""
        meta = obj.get("metadata") or {}
        common: dict[str, Any] = {"order_id": meta.get("order_id"), "order_ref": obj.get("id")}
        if obj.get("payment_status") not in ("paid", "no_payment_required"):
            return PaymentEvent(eid, etype, "processing", **common)
        if obj.get("mode") == "subscription":
            # Paid for the first period; the subscription's own events follow.
            invoice = obj.get("invoice")
            intent = self._intent_of_invoice(credentials, invoice) if invoice else None
            return PaymentEvent(eid, etype, "paid", amount=int(obj.get("amount_total") or 0),
                                subscription_ref=obj.get("subscription"),
                                **_paid_by(invoice, intent), **common)
        return PaymentEvent(eid, etype, "paid", payment_id=obj.get("payment_intent"),
                            amount=int(obj.get("amount_total") or 0), **common)

    def _order_of_intent(self, credentials: Mapping[str, str],
                         intent_id: str | None) -> str | None:
        """A refund may arrive before the checkout event that tells its payment: the
        payment intent carries the order id in its metadata."""
        if not intent_id:
            return None
        try:
            intent = self._client(credentials).v1.payment_intents.retrieve(intent_id)
        except stripe.StripeError:
            return None
        found = (intent.to_dict().get("metadata") or {}).get("order_id")
        return str(found) if found else None

    def _invoice_of_intent(self, credentials: Mapping[str, str],
                           intent_id: str | None) -> str | None:
        """The invoice a payment intent paid (a subscription's charge), or None."""
        if not intent_id:
            return None
        try:
            found = self._client(credentials).v1.invoice_payments.list(params={
                "payment": {"type": "payment_intent", "payment_intent": intent_id},
                "limit": 1})
        except (stripe.StripeError, ProviderError) as exc:
            log.warning("Stripe: no invoice found for a payment intent: %s", exc)
            return None
        invoice = next((p.to_dict().get("invoice") for p in found.data), None)
        return str(invoice) if invoice else None

    def _intent_of_invoice(self, credentials: Mapping[str, str],
                           invoice_id: str) -> str | None:
        """The payment intent that paid an invoice, or None when Stripe names none or cannot
        be asked now (the order then records the invoice until a later event names it)."""
        try:
            return _fetch_intent(self._client(credentials), invoice_id)
        except (stripe.StripeError, ProviderError) as exc:
            log.warning("Stripe: the payment of invoice %s is not known: %s", invoice_id, exc)
            return None

    def poll(self, credentials: Mapping[str, str], provider_ref: str) -> list[PaymentEvent]:
        """What a lost webhook would have said about a Checkout Session. One completed with a
        delayed payment method stays ``unpaid`` until the bank answers; its payment (the
        payment intent, or a subscription's first invoice) tells whether that is still
        processing, or paid, or failed."""
        try:
            client = self._client(credentials)
            s = client.v1.checkout.sessions.retrieve(provider_ref).to_dict()
            complete = s.get("status") == "complete"
            state = s.get("payment_status")
            if complete and state not in ("paid", "no_payment_required"):
                state = self._delayed_outcome(client, s)
        except stripe.StripeError as exc:
            raise ProviderError(str(exc)) from None
        source = "checkout.session.poll"
        if complete and state in ("paid", "no_payment_required"):
            paid_by: dict[str, str | None] = {"payment_id": s.get("payment_intent")}
            if s.get("mode") == "subscription":
                invoice = s.get("invoice")
                paid_by = _paid_by(invoice, self._intent_of_invoice(credentials, invoice)
                                   if invoice else None)
            return [PaymentEvent(f"poll:{provider_ref}:paid", source, "paid",
                                 order_ref=provider_ref, amount=int(s.get("amount_total") or 0),
                                 subscription_ref=s.get("subscription"), **paid_by)]
        if complete and state == "failed":
            return [PaymentEvent(f"poll:{provider_ref}:failed", source, "failed",
                                 order_ref=provider_ref)]
        if complete:  # still processing: asked again tomorrow, it keeps the order open
            day = datetime.now(UTC).date().isoformat()
            return [PaymentEvent(f"poll:{provider_ref}:processing:{day}", source,
                                 "processing", order_ref=provider_ref)]
        if s.get("status") == "expired":
            return [PaymentEvent(f"poll:{provider_ref}:expired", source, "expired",
                                 order_ref=provider_ref)]
        return []

    def poll_subscription(self, credentials: Mapping[str, str],
                          subscription_ref: str) -> list[PaymentEvent]:
        """What lost webhooks would have said about a subscription: its paid invoices (the
        first pays the plan's order, each renewal is an order) and its state and period."""
        try:
            client = self._client(credentials)
            invoices = _paid_invoices(client, subscription_ref)
            sub = client.v1.subscriptions.retrieve(subscription_ref).to_dict()
        except stripe.StripeError as exc:
            raise ProviderError(str(exc)) from None
        out: list[PaymentEvent] = []
        for invoice in sorted(invoices, key=lambda i: int(i.get("created") or 0)):
            out.extend(_invoice_events(f"poll:{invoice['id']}", "invoice.poll", invoice,
                                       lambda ref: self._intent_of_invoice(credentials, ref)))
        items = (sub.get("items") or {}).get("data") or [{}]
        end = sub.get("current_period_end") or items[0].get("current_period_end")
        status = SUBSCRIPTION_STATUS.get(str(sub.get("status")), "past_due")
        out.append(PaymentEvent(f"poll:{subscription_ref}:{status}:{end}",
                                "customer.subscription.poll", "subscription",
                                subscription_ref=subscription_ref, status=status,
                                period_end=_ts(end)))
        return out

    @staticmethod
    def _delayed_outcome(client: stripe.StripeClient, session: dict[str, Any]) -> str:
        """``paid``, ``failed`` or ``processing``: the payment behind an unpaid session."""
        if session.get("mode") == "subscription":
            if not session.get("invoice"):
                return "processing"
            status = client.v1.invoices.retrieve(str(session["invoice"])).status
            return {"paid": "paid", "void": "failed", "uncollectible": "failed"}.get(
                str(status), "processing")
        if not session.get("payment_intent"):
            return "processing"
        status = client.v1.payment_intents.retrieve(str(session["payment_intent"])).status
        return {"succeeded": "paid", "requires_payment_method": "failed",
                "canceled": "failed"}.get(str(status), "processing")

    def refund(self, credentials: Mapping[str, str], payment_id: str, amount: int,
               reason: str) -> str:
        """Refund a payment intent or a charge. An order that recorded a subscription's
        invoice in place of its payment (its payment intent was not known yet) is refunded
        through the payment intent that paid the invoice, asked of Stripe first."""
        if not payment_id:
            raise ProviderError("the order has no Stripe payment to refund")
        client = self._client(credentials)
        try:
            target = _fetch_intent(client, payment_id) if payment_id.startswith("in_") \
                else payment_id
            if not target:
                raise ProviderError(f"Stripe names no payment of invoice {payment_id}")
            paid = {"charge" if target.startswith(("ch_", "py_")) else "payment_intent": target}
            refund = client.v1.refunds.create(params={
                **paid, "amount": amount, "metadata": {"reason": reason[:500]}})
        except stripe.StripeError as exc:
            raise ProviderError(str(exc.user_message or exc)) from None
        return str(refund.id)


def _paid_invoices(client: stripe.StripeClient, subscription_ref: str) -> list[dict[str, Any]]:
    """A subscription's paid invoices, every page of them (Stripe lists at most
    ``INVOICE_PAGE`` a call, newest first, and pages with ``starting_after``);
    ``ProviderError`` rather than a partial list past ``INVOICE_PAGES`` pages."""
    found: list[dict[str, Any]] = []
    params: dict[str, Any] = {"subscription": subscription_ref, "status": "paid",
                              "limit": INVOICE_PAGE, "expand": ["data.payments"]}
    for _ in range(INVOICE_PAGES):
        page = client.v1.invoices.list(params=params)
        found.extend(i.to_dict() for i in page.data)
        if not page.has_more or not page.data:
            return found
        params["starting_after"] = page.data[-1].id
    raise ProviderError(f"subscription {subscription_ref} has more than "
                        f"{INVOICE_PAGES * INVOICE_PAGE} paid invoices")


def _fetch_intent(client: stripe.StripeClient, invoice_id: str) -> str | None:
    """The payment intent that paid an invoice; its ``payments`` are listed only when asked
    for (newer API versions), older ones name ``payment_intent`` on the invoice."""
    invoice = client.v1.invoices.retrieve(invoice_id, params={"expand": ["payments"]})
    return _invoice_payment_intent(invoice.to_dict())


def factory(app: Any) -> StripeProvider:
    return StripeProvider(app.config.get("PAYMENTS_STRIPE_API_BASE"))
