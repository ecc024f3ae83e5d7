"""Totals of an order in integer minor units.

Every division rounds half up (``round_half_up``): 0.5 of a minor unit goes up, anything less
goes down. Order of operations: the coupon's discount comes off the price, then tax applies to
what is left — added on top when prices exclude tax, or taken out of it when they include tax
(``tax = net − net × 10000 / (10000 + rate)``, the included part).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from kalpla_payments.models import Coupon, CoursePrice

BASIS_POINTS = 10_000


def round_half_up(numerator: int, denominator: int) -> int:
    """``numerator / denominator`` rounded half up, for non-negative integers."""
    if numerator < 0 or denominator <= 0:
        raise ValueError("round_half_up takes a non-negative numerator and positive denominator")
    return (2 * numerator + denominator) // (2 * denominator)


@dataclass(frozen=True)
class Totals:
    subtotal: int
    discount: int
    tax: int
    total: int


def current_amount(price: CoursePrice, now: datetime) -> int:
    """The sale price while its window is open, else the list price."""
    if price.sale_amount is not None \
            and (price.sale_starts_at is None or price.sale_starts_at <= now) \
            and (price.sale_ends_at is None or now < price.sale_ends_at):
        return price.sale_amount
    return price.amount


def discount_of(coupon: Coupon | None, subtotal: int) -> int:
    if coupon is None:
        return 0
    if coupon.kind == "percent":
        return min(subtotal, round_half_up(subtotal * coupon.value, 100))
    return min(subtotal, coupon.value)


def totals(subtotal: int, coupon: Coupon | None, tax_rate_bp: int,
           tax_inclusive: bool) -> Totals:
    discount = discount_of(coupon, subtotal)
    net = subtotal - discount
    if tax_inclusive:
        tax = net - round_half_up(net * BASIS_POINTS, BASIS_POINTS + tax_rate_bp)
        return Totals(subtotal, discount, tax, net)
    tax = round_half_up(net * tax_rate_bp, BASIS_POINTS)
    return Totals(subtotal, discount, tax, net + tax)
