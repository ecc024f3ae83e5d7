from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, post_load, validate, validates_schema

CURRENCY = validate.Regexp(r"^[A-Z]{3}$", error="An ISO 4217 code in capitals (USD, INR).")
MONEY = validate.Range(min=0, max=10**12)


class PaymentsSettings(Schema):
    """Per-institution settings (``PUT /api/v1/institutions/{slug}/plugins/payments``).
    Provider keys are not settings: they go to ``PUT /api/v1/payments/credentials/…``."""

    provider = fields.String(load_default="manual", validate=validate.Length(1, 32),
                             metadata={"description": "The payments provider checkouts use."})
    tax_rate_bp = fields.Integer(load_default=0, validate=validate.Range(0, 10_000),
                                 metadata={"description": "Tax rate in basis points "
                                           "(1800 = 18 %)."})
    tax_inclusive = fields.Boolean(load_default=False,
                                   metadata={"description": "Prices include the tax."})
    order_ttl_minutes = fields.Integer(load_default=60, validate=validate.Range(5, 60 * 24 * 7))
    success_url = fields.String(load_default="", validate=validate.Length(max=500))
    cancel_url = fields.String(load_default="", validate=validate.Length(max=500))


class PriceSchema(Schema):
    course_id = fields.String(dump_only=True)
    amount = fields.Integer(required=True, validate=MONEY,
                            metadata={"description": "Minor units (cents, paise)."})
    currency = fields.String(required=True, validate=CURRENCY)
    sale_amount = fields.Integer(load_default=None, allow_none=True, validate=MONEY)
    sale_starts_at = fields.AwareDateTime(load_default=None, allow_none=True)
    sale_ends_at = fields.AwareDateTime(load_default=None, allow_none=True)
    current_amount = fields.Integer(dump_only=True)

    @validates_schema
    def _sale(self, data: dict[str, Any], **_: Any) -> None:
        starts, ends = data.get("sale_starts_at"), data.get("sale_ends_at")
        if starts and ends and ends <= starts:
            raise ValidationError("The sale must end after it starts.", "sale_ends_at")


class PlanSchema(Schema):
    id = fields.String(dump_only=True)
    name = fields.String(required=True, validate=validate.Length(1, 200))
    amount = fields.Integer(required=True, validate=MONEY)
    currency = fields.String(required=True, validate=CURRENCY)
    period_days = fields.Integer(required=True, validate=validate.Range(1, 3660))
    all_courses = fields.Boolean(load_default=False)
    course_ids = fields.List(fields.String(), load_default=list)
    active = fields.Boolean(dump_only=True)


class CouponSchema(Schema):
    id = fields.String(dump_only=True)
    code = fields.String(required=True, validate=validate.Regexp(r"^[A-Za-z0-9_-]{3,64}$"))
    kind = fields.String(required=True, validate=validate.OneOf(["percent", "fixed"]))
    value = fields.Integer(required=True, validate=validate.Range(1, 10**12))
    currency = fields.String(load_default=None, allow_none=True, validate=CURRENCY)
    course_id = fields.String(load_default=None, allow_none=True)
    plan_id = fields.String(load_default=None, allow_none=True)
    max_uses = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(1))
    used_count = fields.Integer(dump_only=True)
    expires_at = fields.AwareDateTime(load_default=None, allow_none=True)
    once_per_user = fields.Boolean(load_default=True)

    @validates_schema
    def _kind(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("kind") == "percent" and data.get("value", 0) > 100:
            raise ValidationError("A percentage is at most 100.", "value")
        if data.get("kind") == "fixed" and not data.get("currency"):
            raise ValidationError("A fixed discount needs its currency.", "currency")
        if data.get("course_id") and data.get("plan_id"):
            raise ValidationError("A coupon is for a course or a plan, not both.", "plan_id")

    @post_load
    def _upper(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        data["code"] = data["code"].upper()
        return data


class OrderCreateSchema(Schema):
    course_id = fields.String(load_default=None, allow_none=True)
    plan_id = fields.String(load_default=None, allow_none=True)
    coupon = fields.String(load_default=None, allow_none=True,
                           validate=validate.Length(1, 64))


class OrderSchema(Schema):
    id = fields.String()
    kind = fields.String(metadata={
        "description": "purchase (bought through a checkout) or renewal (a subscription's "
                       "later charge by the gateway)."})
    subscription_id = fields.String(allow_none=True, metadata={
        "description": "The subscription a renewal renews."})
    institution_id = fields.String()
    user_id = fields.String(allow_none=True)
    course_id = fields.String(allow_none=True)
    plan_id = fields.String(allow_none=True)
    description = fields.String()
    status = fields.String()
    currency = fields.String()
    subtotal = fields.Integer()
    discount = fields.Integer()
    tax = fields.Integer()
    tax_rate_bp = fields.Integer()
    tax_inclusive = fields.Boolean()
    total = fields.Integer()
    amount_paid = fields.Integer()
    amount_refunded = fields.Integer()
    provider = fields.String()
    checkout = fields.Dict(allow_none=True, metadata={
        "description": "What the client needs to pay: a hosted checkout url, or the gateway "
                       "order id and public key for its widget; processing is true once the "
                       "checkout was completed with a delayed payment method whose outcome "
                       "is awaited."})
    invoice_number = fields.Integer(allow_none=True)
    paid_at = fields.DateTime(allow_none=True)
    expires_at = fields.DateTime(allow_none=True)
    created_at = fields.DateTime()


class OrderListArgs(Schema):
    limit = fields.Integer(load_default=20, validate=validate.Range(1, 100))
    cursor = fields.String(load_default=None, validate=validate.Length(max=2000))
    mine = fields.Boolean(load_default=False, metadata={
        "description": "Only my orders, even for an admin."})


class MarkPaidSchema(Schema):
    reference = fields.String(required=True, validate=validate.Length(1, 200),
                              metadata={"description": "Bank transfer, cash or invoice ref."})
    amount = fields.Integer(load_default=None, allow_none=True, validate=MONEY)


class RefundSchema(Schema):
    amount = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(1),
                            metadata={"description": "Default: everything not yet refunded."})
    reason = fields.String(required=True, validate=validate.Length(1, 500))
    reference = fields.String(load_default=None, allow_none=True,
                              validate=validate.Length(max=200))


class ConfirmSchema(Schema):
    payment_id = fields.String(required=True, validate=validate.Length(1, 200))
    signature = fields.String(required=True, validate=validate.Length(1, 500))


class OrderEventSchema(Schema):
    from_status = fields.String(allow_none=True)
    to_status = fields.String()
    amount = fields.Integer()
    actor = fields.String()
    reason = fields.String()
    created_at = fields.DateTime()


class ReceiptSchema(Schema):
    order_id = fields.String()
    kind = fields.String()
    subscription_id = fields.String(allow_none=True)
    invoice_number = fields.String(metadata={"description": "<institution slug>-<number>"})
    institution = fields.String()
    buyer = fields.Dict()
    lines = fields.List(fields.Dict())
    currency = fields.String()
    subtotal = fields.Integer()
    discount = fields.Integer()
    tax = fields.Integer()
    tax_rate_bp = fields.Integer()
    tax_inclusive = fields.Boolean()
    total = fields.Integer()
    amount_paid = fields.Integer()
    amount_refunded = fields.Integer()
    status = fields.String()
    provider = fields.String()
    payment_reference = fields.String(allow_none=True)
    paid_at = fields.DateTime()


class SubscriptionSchema(Schema):
    id = fields.String()
    user_id = fields.String()
    plan_id = fields.String()
    order_id = fields.String(allow_none=True)
    status = fields.String()
    provider = fields.String()
    current_period_end = fields.DateTime()
    ended_at = fields.DateTime(allow_none=True)
    created_at = fields.DateTime()


class CredentialsSchema(Schema):
    """Write-only: values are stored sealed and never answered; ``fields_set`` says which
    are present. An empty string removes a field."""

    values = fields.Dict(keys=fields.String(validate=validate.Length(1, 64)),
                         values=fields.String(validate=validate.Length(max=500)),
                         required=True, load_only=True)


class CredentialsStateSchema(Schema):
    provider = fields.String()
    fields_set = fields.List(fields.String())


class ReportArgs(Schema):
    limit = fields.Integer(load_default=20, validate=validate.Range(1, 100))
    cursor = fields.String(load_default=None, validate=validate.Length(max=2000))
