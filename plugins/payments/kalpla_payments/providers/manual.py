"""The embedded default: no gateway. An institution admin records a payment received by bank
transfer, cash or invoice (``POST …/orders/{id}/mark-paid``) and refunds the same way."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kalpla_payments.providers.base import (
    Checkout,
    CheckoutRequest,
    PaymentEvent,
    WebhookError,
)


class ManualProvider:
    name = "manual"
    credential_fields: tuple[str, ...] = ()

    def start_checkout(self, credentials: Mapping[str, str],
                       request: CheckoutRequest) -> Checkout:
        return Checkout(provider_ref=f"manual_{request.order_id}", url=None,
                        client={"instructions": "Pay the institution; an administrator "
                                "records the payment with its reference."})

    def verify_webhook(self, credentials: Mapping[str, str], headers: Mapping[str, str],
                       body: bytes) -> list[PaymentEvent]:
        raise WebhookError("The manual provider takes no webhooks.")

    def poll(self, credentials: Mapping[str, str], provider_ref: str) -> list[PaymentEvent]:
        return []  # only an admin knows; nothing to ask

    def refund(self, credentials: Mapping[str, str], payment_id: str, amount: int,
               reason: str) -> str:
        return ""  # the money goes back outside Kalpla; the admin gives the reference


def factory(app: Any) -> ManualProvider:
    return ManualProvider()
