"""The payments API, mounted at ``/api/v1/payments/`` (404 where the plugin is disabled)."""

from __future__ import annotations

from typing import Any

from flask import request
from flask.views import MethodView
from sqlalchemy import select
from sqlalchemy.orm import Session

from kalpla_core.toolkit import (
    APIError,
    Blueprint,
    Institution,
    User,
    any_institution,
    conditional_get,
    current_institution,
    current_user,
    db_session,
    etag_of,
    idempotent,
    kalpla,
    page_of,
    page_response,
    paginate,
    plugin_settings,
    require_enabled,
    require_if_match,
    require_permission,
    set_etag,
    utcnow,
)
from kalpla_payments import catalog, credentials, orders, reports, webhooks
from kalpla_payments.access import end_subscription
from kalpla_payments.models import Coupon, CoursePrice, Order, OrderEvent, Plan, Subscription
from kalpla_payments.providers.base import WebhookError
from kalpla_payments.schemas import (
    ConfirmSchema,
    CouponSchema,
    CredentialsSchema,
    CredentialsStateSchema,
    MarkPaidSchema,
    OrderCreateSchema,
    OrderEventSchema,
    OrderListArgs,
    OrderSchema,
    PlanSchema,
    PriceSchema,
    ReceiptSchema,
    RefundSchema,
    ReportArgs,
    SubscriptionSchema,
)

PLUGIN = "payments"
MANAGE = "payments.manage"
REFUND = "payments.refund"
BEARER = [{"bearer": []}]

blp = Blueprint("payments", __name__, description="Payments: prices, plans, coupons, orders, "
                "refunds, subscriptions and the providers' webhooks.")


def _settings() -> dict[str, Any]:
    return plugin_settings(PLUGIN) or {}


def _can_manage(user: User, institution_id: str) -> bool:
    return kalpla().has_permission(db_session(), user, MANAGE, institution_id)


def _order(order_id: str) -> tuple[Order, User]:
    """The order, for its buyer or the institution's payment admins (404 for others)."""
    user = current_user()
    assert user is not None
    order = db_session().get(Order, order_id)
    if order is None or order.institution_id != current_institution().id or (
            order.user_id != user.id and not _can_manage(user, order.institution_id)):
        raise APIError(404, "There is no such order.", "not-found")
    return order, user


# --- what is sold ---------------------------------------------------------------------------

def _price_etag(price: CoursePrice) -> str:
    return etag_of("payments-price", price.course_id, price.updated_at.isoformat())


@blp.route("/prices/<course_id>")
class Price(MethodView):
    @blp.response(200, PriceSchema)
    def get(self, course_id: str) -> Any:
        """A course's price (anyone), with its ETag; 404 for a free course."""
        session = db_session()
        catalog.course_of(session, current_institution().id, course_id)
        price = session.get(CoursePrice, course_id)
        if price is None:
            raise APIError(404, "The course has no price: it is free.", "not-found")
        conditional_get(_price_etag(price))
        return catalog.price_view(price, utcnow())

    @blp.arguments(PriceSchema)
    @blp.response(200, PriceSchema)
    @blp.doc(security=BEARER)
    def put(self, data: dict[str, Any], course_id: str) -> Any:
        """Set a course's price (``payments.manage``); changing an existing price needs its
        ETag in ``If-Match``."""
        inst = current_institution()
        require_permission(MANAGE, inst.id)
        session = db_session()
        existing = session.get(CoursePrice, course_id)
        if existing is not None and existing.institution_id == inst.id:
            require_if_match(_price_etag(existing))
        price = catalog.set_price(session, inst.id, course_id, data)
        set_etag(_price_etag(price))
        return catalog.price_view(price, utcnow())

    @blp.response(204)
    @blp.doc(security=BEARER)
    def delete(self, course_id: str) -> None:
        """Make a course free again (``payments.manage``)."""
        inst = current_institution()
        require_permission(MANAGE, inst.id)
        catalog.remove_price(db_session(), inst.id, course_id)


@blp.route("/plans")
class Plans(MethodView):
    @blp.arguments(ReportArgs, location="query")
    @blp.response(200, page_of(PlanSchema))
    def get(self, args: dict[str, Any]) -> Any:
        """The institution's plans on sale."""
        session = db_session()
        stmt = select(Plan).where(Plan.institution_id == current_institution().id,
                                  Plan.active.is_(True))
        page = paginate(session, stmt, [(Plan.id, "asc")], args["limit"], args["cursor"])
        page.items = catalog.plan_views(session, page.items)
        return page_response(page)

    @blp.arguments(PlanSchema)
    @blp.response(201, PlanSchema)
    @blp.doc(security=BEARER)
    def post(self, data: dict[str, Any]) -> Any:
        """Create a subscription plan (``payments.manage``)."""
        inst = current_institution()
        require_permission(MANAGE, inst.id)
        session = db_session()
        return catalog.plan_views(session, [catalog.create_plan(session, inst.id, data)])[0]


@blp.route("/coupons")
class Coupons(MethodView):
    @blp.arguments(ReportArgs, location="query")
    @blp.response(200, page_of(CouponSchema))
    @blp.doc(security=BEARER)
    def get(self, args: dict[str, Any]) -> Any:
        """The institution's coupons (``payments.manage``)."""
        inst = current_institution()
        require_permission(MANAGE, inst.id)
        stmt = select(Coupon).where(Coupon.institution_id == inst.id)
        return page_response(paginate(db_session(), stmt, [(Coupon.id, "asc")],
                                      args["limit"], args["cursor"]))

    @blp.arguments(CouponSchema)
    @blp.response(201, CouponSchema)
    @blp.doc(security=BEARER)
    def post(self, data: dict[str, Any]) -> Any:
        """Create a coupon (``payments.manage``)."""
        inst = current_institution()
        require_permission(MANAGE, inst.id)
        return catalog.create_coupon(db_session(), inst.id, data)


@blp.route("/credentials/<provider>")
class ProviderCredentials(MethodView):
    @blp.response(200, CredentialsStateSchema)
    @blp.doc(security=BEARER)
    def get(self, provider: str) -> Any:
        """Which of a provider's secret fields are set (never their values)."""
        inst = current_institution()
        require_permission(MANAGE, inst.id)
        orders.provider_of(kalpla(), provider)
        return {"provider": provider, "fields_set": sorted(credentials.load(
            db_session(), kalpla(), inst.id, provider))}

    @blp.arguments(CredentialsSchema)
    @blp.response(200, CredentialsStateSchema)
    @blp.doc(security=BEARER)
    def put(self, data: dict[str, Any], provider: str) -> Any:
        """Store a provider's keys and webhook secret, sealed (``payments.manage``)."""
        inst = current_institution()
        require_permission(MANAGE, inst.id)
        allowed = set(orders.provider_of(kalpla(), provider).credential_fields)
        unknown = sorted(set(data["values"]) - allowed)
        if unknown:
            raise APIError(422, "The request has invalid fields; see errors.", "validation",
                           errors={"values": [f"Unknown fields: {', '.join(unknown)}; "
                                              f"{provider} takes {', '.join(sorted(allowed))}."]})
        names = credentials.store(db_session(), kalpla(), inst.id, provider, data["values"])
        return {"provider": provider, "fields_set": names}


# --- orders ---------------------------------------------------------------------------------

@blp.route("/orders")
class Orders(MethodView):
    @idempotent
    @blp.arguments(OrderCreateSchema)
    @blp.response(201, OrderSchema)
    @blp.doc(security=BEARER)
    def post(self, data: dict[str, Any]) -> Any:
        """Buy a course or a plan (with a coupon code): the order with its totals and what
        the client needs to pay. Honours ``Idempotency-Key``."""
        user = current_user()
        assert user is not None
        inst = current_institution()
        return orders.create_order(db_session(), kalpla(), institution_id=inst.id, user=user,
                                   settings=_settings(), course_id=data["course_id"],
                                   plan_id=data["plan_id"], coupon_code=(
                                       data["coupon"].upper() if data["coupon"] else None),
                                   now=utcnow())

    @blp.arguments(OrderListArgs, location="query")
    @blp.response(200, page_of(OrderSchema))
    @blp.doc(security=BEARER)
    def get(self, args: dict[str, Any]) -> Any:
        """My orders, newest first; every order of the institution for its payment admins."""
        user = current_user()
        assert user is not None
        inst = current_institution()
        stmt = select(Order).where(Order.institution_id == inst.id)
        if args["mine"] or not _can_manage(user, inst.id):
            stmt = stmt.where(Order.user_id == user.id)
        return page_response(paginate(db_session(), stmt, [(Order.created_at, "desc"),
                                                           (Order.id, "desc")],
                                      args["limit"], args["cursor"]))


@blp.route("/orders/<order_id>")
class OrderOne(MethodView):
    @blp.response(200, OrderSchema)
    @blp.doc(security=BEARER)
    def get(self, order_id: str) -> Any:
        """An order (its buyer, or the institution's payment admins)."""
        return _order(order_id)[0]


@blp.route("/orders/<order_id>/events")
class OrderEvents(MethodView):
    @blp.response(200, OrderEventSchema(many=True))
    @blp.doc(security=BEARER)
    def get(self, order_id: str) -> Any:
        """Every change of the order: from, to, amount, who and why."""
        order, _ = _order(order_id)
        return list(db_session().scalars(select(OrderEvent).where(
            OrderEvent.order_id == order.id).order_by(OrderEvent.id)))


@blp.route("/orders/<order_id>/receipt")
class Receipt(MethodView):
    @blp.response(200, ReceiptSchema)
    @blp.doc(security=BEARER)
    def get(self, order_id: str) -> Any:
        """The receipt of a paid order, with its invoice number."""
        order, _ = _order(order_id)
        if order.invoice_number is None:
            raise APIError(409, "The order is not paid; it has no receipt.", "not-paid")
        return reports.receipt(db_session(), order, current_institution())


@blp.route("/orders/<order_id>/mark-paid")
class MarkPaid(MethodView):
    @idempotent
    @blp.arguments(MarkPaidSchema)
    @blp.response(200, OrderSchema)
    @blp.doc(security=BEARER)
    def post(self, data: dict[str, Any], order_id: str) -> Any:
        """Record a payment received outside Kalpla (manual provider; ``payments.manage``)."""
        order, _ = _order(order_id)
        user = require_permission(MANAGE, order.institution_id)
        if order.provider != "manual":
            raise APIError(409, f"Payments of {order.provider} orders come from the provider.",
                           "not-manual")
        if order.status in orders.PAID_STATES:
            raise APIError(409, "The order is paid already.", "already-paid")
        amount = order.total if data["amount"] is None else data["amount"]
        orders.mark_paid(db_session(), kalpla(), order, amount=amount, payment_id=None,
                         actor=f"user:{user.id}", reason=f"Marked paid: {data['reference']}",
                         reference=data["reference"], now=utcnow())
        return order


@blp.route("/orders/<order_id>/refund")
class RefundOrder(MethodView):
    @idempotent
    @blp.arguments(RefundSchema)
    @blp.response(200, OrderSchema)
    @blp.doc(security=BEARER)
    def post(self, data: dict[str, Any], order_id: str) -> Any:
        """Refund part or all of a paid order (``payments.refund``); never more than paid.
        Honours ``Idempotency-Key``: a retried refund is answered, not repeated."""
        order, _ = _order(order_id)
        user = require_permission(REFUND, order.institution_id)
        orders.refund(db_session(), kalpla(), order, amount=data["amount"],
                      reason=data["reason"], reference=data["reference"],
                      actor=f"user:{user.id}", now=utcnow())
        return order


@blp.route("/orders/<order_id>/confirm")
class ConfirmOrder(MethodView):
    @blp.arguments(ConfirmSchema)
    @blp.response(200, OrderSchema)
    @blp.doc(security=BEARER)
    def post(self, data: dict[str, Any], order_id: str) -> Any:
        """The buyer's widget reports a payment with the gateway's signature (Razorpay): it
        is checked with the key secret before the order is paid."""
        order, _ = _order(order_id)
        provider = orders.provider_of(kalpla(), order.provider)
        if not hasattr(provider, "confirm_payment") or order.provider_ref is None:
            raise APIError(409, f"{order.provider} orders are not confirmed by the client.",
                           "not-confirmable")
        session = db_session()
        try:
            event = provider.confirm_payment(
                credentials.load(session, kalpla(), order.institution_id, order.provider),
                order.provider_ref, data["payment_id"], data["signature"], order.total)
        except WebhookError:
            raise APIError(400, "The payment signature does not match.",
                           "bad-signature") from None
        webhooks.process(session, kalpla(), order.institution_id, order.provider, [event],
                         utcnow())
        session.refresh(order)
        return order


# --- subscriptions --------------------------------------------------------------------------

@blp.route("/subscriptions")
class Subscriptions(MethodView):
    @blp.arguments(OrderListArgs, location="query")
    @blp.response(200, page_of(SubscriptionSchema))
    @blp.doc(security=BEARER)
    def get(self, args: dict[str, Any]) -> Any:
        """My subscriptions; every one of the institution for its payment admins."""
        user = current_user()
        assert user is not None
        inst = current_institution()
        stmt = select(Subscription).where(Subscription.institution_id == inst.id)
        if args["mine"] or not _can_manage(user, inst.id):
            stmt = stmt.where(Subscription.user_id == user.id)
        return page_response(paginate(db_session(), stmt, [(Subscription.id, "asc")],
                                      args["limit"], args["cursor"]))


@blp.route("/subscriptions/<subscription_id>/cancel")
class CancelSubscription(MethodView):
    @blp.response(200, SubscriptionSchema)
    @blp.doc(security=BEARER)
    def post(self, subscription_id: str) -> Any:
        """End a subscription now (its subscriber, or ``payments.manage``): the enrollments it
        paid for are dropped. A gateway subscription is ended by the gateway's event."""
        user = current_user()
        assert user is not None
        session = db_session()
        sub = session.get(Subscription, subscription_id)
        if sub is None or sub.institution_id != current_institution().id or (
                sub.user_id != user.id and not _can_manage(user, sub.institution_id)):
            raise APIError(404, "There is no such subscription.", "not-found")
        if sub.provider != "manual":
            raise APIError(409, f"Cancel {sub.provider} subscriptions with {sub.provider}; "
                           "its event ends it here.", "not-manual")
        end_subscription(session, kalpla(), sub, "canceled", f"Canceled by user:{user.id}",
                         utcnow())
        return sub


# --- webhooks -------------------------------------------------------------------------------

@blp.route("/webhooks/<provider>/<institution_slug>")
@any_institution
class Webhook(MethodView):
    @blp.response(200)
    def post(self, provider: str, institution_slug: str) -> Any:
        """A provider's webhook, verified on the raw body before anything is read: a bad or
        stale signature is a 400 and changes nothing; each event is applied once."""
        session = db_session()
        inst = session.scalar(select(Institution).where(Institution.slug == institution_slug))
        if inst is None:
            raise APIError(404, "Nothing is found here.")
        require_enabled(PLUGIN, inst.id)
        if provider not in kalpla().providers.names(orders.PORT):
            raise APIError(400, f"There is no payment provider {provider!r}.", "bad-webhook")
        gateway = orders.provider_of(kalpla(), provider)
        body = request.get_data(cache=False)
        try:
            received = gateway.verify_webhook(
                credentials.load(session, kalpla(), inst.id, provider),
                dict(request.headers), body)
        except WebhookError as exc:
            raise APIError(400, f"The webhook was refused: {exc}", "bad-webhook") from None
        out = webhooks.process(session, kalpla(), inst.id, provider, received, utcnow())
        return {"received": out.received, "applied": out.applied,
                "duplicates": out.duplicates}


# --- reports --------------------------------------------------------------------------------

def _admin_session() -> tuple[Session, str]:
    inst = current_institution()
    require_permission(MANAGE, inst.id)
    return db_session(), inst.id


@blp.route("/reports/revenue-by-course")
class RevenueByCourse(MethodView):
    @blp.arguments(ReportArgs, location="query")
    @blp.response(200, page_of(reports.RevenueRowSchema))
    @blp.doc(security=BEARER)
    def get(self, args: dict[str, Any]) -> Any:
        """Paid and refunded amounts per course and currency (``payments.manage``)."""
        session, inst_id = _admin_session()
        return page_response(reports.revenue(session, inst_id, "course", args["limit"],
                                             args["cursor"]))


@blp.route("/reports/revenue-by-day")
class RevenueByDay(MethodView):
    @blp.arguments(ReportArgs, location="query")
    @blp.response(200, page_of(reports.RevenueRowSchema))
    @blp.doc(security=BEARER)
    def get(self, args: dict[str, Any]) -> Any:
        """Paid and refunded amounts per UTC day of payment and currency, newest first."""
        session, inst_id = _admin_session()
        return page_response(reports.revenue(session, inst_id, "day", args["limit"],
                                             args["cursor"]))


@blp.route("/reports/refunds")
class Refunds(MethodView):
    @blp.arguments(ReportArgs, location="query")
    @blp.response(200, page_of(reports.RefundRowSchema))
    @blp.doc(security=BEARER)
    def get(self, args: dict[str, Any]) -> Any:
        """Refunds, newest first (``payments.manage``)."""
        session, inst_id = _admin_session()
        return page_response(reports.refunds(session, inst_id, args["limit"], args["cursor"]))


@blp.route("/reports/active-subscriptions")
class ActiveSubscriptions(MethodView):
    @blp.arguments(ReportArgs, location="query")
    @blp.response(200, page_of(SubscriptionSchema))
    @blp.doc(security=BEARER)
    def get(self, args: dict[str, Any]) -> Any:
        """Live subscriptions (``payments.manage``)."""
        session, inst_id = _admin_session()
        stmt = select(Subscription).where(Subscription.institution_id == inst_id,
                                          Subscription.status.in_(("active", "past_due")),
                                          Subscription.current_period_end > utcnow())
        return page_response(paginate(session, stmt, [(Subscription.id, "asc")],
                                      args["limit"], args["cursor"]))
