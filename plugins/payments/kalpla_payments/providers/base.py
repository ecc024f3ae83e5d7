"""The ``payments`` port: what a payment gateway implements.

A gateway is registered through the ``kalpla_providers`` hook as
``Provider("payments", "<name>", factory)``; ``factory(app)`` returns an object with the
attributes and methods of :class:`PaymentProvider`. The payments plugin calls it with the
institution's decrypted credentials (a dict of the provider's ``credential_fields``) and maps
what it answers onto orders and subscriptions; a provider never touches the database.

Card data never reaches Kalpla: a provider starts a hosted checkout (or hands the client what
its widget needs) and learns the outcome from signed webhooks or by asking the gateway.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

EventKind = Literal["paid", "processing", "failed", "expired", "refunded", "renewal",
                    "subscription", "ignored"]


class WebhookError(Exception):
    """The webhook is not authentic (bad or stale signature) or cannot be read: a 400."""


class ProviderError(Exception):
    """The gateway refused a call or could not be reached: a 502."""


@dataclass(frozen=True)
class CheckoutRequest:
    """What the provider needs to start a checkout for an order."""

    order_id: str
    institution_id: str
    description: str
    amount: int  # minor units, tax included
    currency: str  # ISO 4217, upper case
    customer_email: str
    success_url: str
    cancel_url: str
    # For a subscription plan: the billing period in days (the provider bills each period).
    period_days: int | None = None


@dataclass(frozen=True)
class Checkout:
    """A started checkout: the provider's reference of it, and what the client needs (a hosted
    ``url``, or the gateway order id and public key for a client-side widget)."""

    provider_ref: str
    url: str | None = None
    client: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PaymentEvent:
    """A provider event, normalised.

    - ``paid``: ``amount`` was paid for the order (``payment_id`` the gateway's payment);
    - ``processing``: the checkout was completed with a delayed payment method (a bank debit
      or transfer): the order waits, unexpired, for the ``paid`` or ``failed`` that follows;
    - ``failed``: the payment attempt failed; ``expired``: the checkout ran out unpaid;
    - ``refunded``: ``amount`` is the *total* refunded so far for the payment (events may
      arrive late or twice; totals make them safe to apply in any order); ``paid_amount`` is
      what was paid, so a refund seen before its payment can apply both;
    - ``renewal``: the gateway charged the subscription ``subscription_ref`` for a later
      period (not its first): ``amount`` in ``currency`` (``tax`` of it when the gateway
      computed the tax, else None), ``renewal_ref`` the gateway's id of that charge (invoice
      or payment; one order per ref), ``payment_id`` what a refund names, ``period_end`` the
      end of the period paid for, ``paid_at`` when the gateway charged (None: now);
      ``order_id``/``order_ref`` name the plan's first order;
    - ``subscription``: the gateway subscription ``subscription_ref`` is ``status``
      (``active``, ``past_due``, ``canceled``) until ``period_end``;
    - ``ignored``: an event type the plugin does not act on (still recorded as seen).

    ``replaces`` (``paid``, ``refunded``) is an id an order may have recorded in place of
    ``payment_id`` before the payment was known (Stripe: a subscription's first invoice):
    such an order is found by it and takes ``payment_id`` instead.

    The order is named by ``order_id`` (Kalpla's, from metadata the provider attached) or by
    ``order_ref`` (the provider's reference returned by :meth:`start_checkout`).
    """

    event_id: str
    type: str
    kind: EventKind
    order_id: str | None = None
    order_ref: str | None = None
    payment_id: str | None = None
    amount: int = 0
    paid_amount: int = 0
    subscription_ref: str | None = None
    status: str | None = None
    period_end: datetime | None = None
    renewal_ref: str | None = None
    currency: str | None = None
    tax: int | None = None
    paid_at: datetime | None = None
    replaces: str | None = None


class PaymentProvider(Protocol):
    name: str
    # Names of the institution's secret settings this provider uses (write-only in the API).
    credential_fields: tuple[str, ...]

    def start_checkout(self, credentials: Mapping[str, str],
                       request: CheckoutRequest) -> Checkout:
        """Start a hosted checkout (or a gateway order) for the order."""

    def verify_webhook(self, credentials: Mapping[str, str], headers: Mapping[str, str],
                       body: bytes) -> list[PaymentEvent]:
        """Check the signature over the raw ``body`` and read it; ``WebhookError`` when it is
        not authentic. Nothing is parsed before the signature is checked."""

    def poll(self, credentials: Mapping[str, str], provider_ref: str) -> list[PaymentEvent]:
        """Ask the gateway for the state of a pending checkout (``kalpla payments
        reconcile``): the events a lost webhook would have brought."""

    def refund(self, credentials: Mapping[str, str], payment_id: str, amount: int,
               reason: str) -> str:
        """Refund ``amount`` of a payment; the gateway's refund id."""

    # Optional, for gateways that bill subscriptions (``reconcile`` asks when a
    # subscription's period ran out here):
    # ``poll_subscription(credentials, subscription_ref) -> list[PaymentEvent]``, its paid
    # charges (the first as ``paid``, later ones as ``renewal``) and its ``subscription``
    # state.
