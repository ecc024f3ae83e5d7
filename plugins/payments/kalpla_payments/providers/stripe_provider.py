"""Stripe through the official ``stripe`` package: Checkout Sessions (one-off payments and
subscriptions), refunds, and webhooks signed with the ``Stripe-Signature`` scheme.

Credentials: ``secret_key`` (API) and ``webhook_secret`` (``whsec_…``). The API base is
Stripe's unless the app's ``PAYMENTS_STRIPE_API_BASE`` config names another (tests use a
local fake server).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
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

TOLERANCE_SECONDS = 300
SUBSCRIPTION_STATUS = {"active": "active", "trialing": "active", "past_due": "past_due",
                       "unpaid": "past_due", "canceled": "canceled",
                       "incomplete_expired": "canceled"}


def _ts(value: Any) -> datetime | None:
    return datetime.fromtimestamp(int(value), UTC) if value else None


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
        return [self._read(credentials, event)]

    def _read(self, credentials: Mapping[str, str], event: dict[str, Any]) -> PaymentEvent:
        eid, etype = str(event["id"]), str(event["type"])
        obj: dict[str, Any] = (event.get("data") or {}).get("object") or {}
        meta = obj.get("metadata") or {}
        if etype == "checkout.session.completed":
            if obj.get("mode") == "subscription" and obj.get("subscription"):
                # Paid for the first period; the subscription's own events follow.
                return PaymentEvent(eid, etype, "paid", order_id=meta.get("order_id"),
                                    order_ref=obj.get("id"), payment_id=obj.get("invoice"),
                                    amount=int(obj.get("amount_total") or 0),
                                    subscription_ref=obj.get("subscription"))
            if obj.get("payment_status") == "paid":
                return PaymentEvent(eid, etype, "paid", order_id=meta.get("order_id"),
                                    order_ref=obj.get("id"),
                                    payment_id=obj.get("payment_intent"),
                                    amount=int(obj.get("amount_total") or 0))
        elif etype == "checkout.session.expired":
            return PaymentEvent(eid, etype, "expired", order_id=meta.get("order_id"),
                                order_ref=obj.get("id"))
        elif etype == "payment_intent.payment_failed":
            return PaymentEvent(eid, etype, "failed", order_id=meta.get("order_id"),
                                payment_id=obj.get("id"))
        elif etype == "charge.refunded":
            order_id = meta.get("order_id") or self._order_of_intent(
                credentials, obj.get("payment_intent"))
            return PaymentEvent(eid, etype, "refunded", order_id=order_id,
                                payment_id=obj.get("payment_intent"),
                                amount=int(obj.get("amount_refunded") or 0),
                                paid_amount=int(obj.get("amount_captured")
                                                or obj.get("amount") or 0))
        elif etype == "invoice.paid":
            lines = (obj.get("lines") or {}).get("data") or []
            ends = [int((ln.get("period") or {}).get("end") or 0) for ln in lines]
            sub_ref = obj.get("subscription") or (
                ((obj.get("parent") or {}).get("subscription_details") or {})
                .get("subscription"))
            return PaymentEvent(eid, etype, "subscription", subscription_ref=sub_ref,
                                status="active", period_end=_ts(max(ends, default=0)))
        elif etype in ("customer.subscription.updated", "customer.subscription.deleted"):
            items = (obj.get("items") or {}).get("data") or [{}]
            end = obj.get("current_period_end") or items[0].get("current_period_end")
            status = "canceled" if etype.endswith("deleted") else \
                SUBSCRIPTION_STATUS.get(str(obj.get("status")), "past_due")
            return PaymentEvent(eid, etype, "subscription", subscription_ref=obj.get("id"),
                                order_id=meta.get("order_id"), status=status,
                                period_end=_ts(end))
        return PaymentEvent(eid, etype, "ignored")

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

    def poll(self, credentials: Mapping[str, str], provider_ref: str) -> list[PaymentEvent]:
        try:
            s = self._client(credentials).v1.checkout.sessions.retrieve(provider_ref)
        except stripe.StripeError as exc:
            raise ProviderError(str(exc)) from None
        if s.status == "complete" and s.payment_status == "paid":
            return [PaymentEvent(f"poll:{provider_ref}:paid", "checkout.session.poll", "paid",
                                 order_ref=provider_ref,
                                 payment_id=getattr(s, "payment_intent", None),
                                 amount=int(s.amount_total or 0))]
        if s.status == "expired":
            return [PaymentEvent(f"poll:{provider_ref}:expired", "checkout.session.poll",
                                 "expired", order_ref=provider_ref)]
        return []

    def refund(self, credentials: Mapping[str, str], payment_id: str, amount: int,
               reason: str) -> str:
        if not payment_id:
            raise ProviderError("the order has no Stripe payment to refund")
        try:
            refund = self._client(credentials).v1.refunds.create(params={
                "payment_intent": payment_id, "amount": amount,
                "metadata": {"reason": reason[:500]}})
        except stripe.StripeError as exc:
            raise ProviderError(str(exc.user_message or exc)) from None
        return str(refund.id)


def factory(app: Any) -> StripeProvider:
    return StripeProvider(app.config.get("PAYMENTS_STRIPE_API_BASE"))
