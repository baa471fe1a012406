"""Exact numbers for prices, quantities and money.

Everything monetary is a `Decimal`, built only through these functions, which refuse
NaN, infinities, booleans and (where it makes no sense) zero or negatives, naming the
field at fault. Floats are converted through their shortest repr, so ``0.1`` becomes
``Decimal("0.1")``, not its binary expansion.
"""

from __future__ import annotations

from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from trading.errors import Invalid

Price = Decimal
Quantity = Decimal
Money = Decimal

ZERO = Decimal(0)
_BASIS_POINTS = Decimal(10_000)


def to_decimal(value: Any, *, field: str) -> Decimal:
    """Convert `value` to a finite Decimal or raise `Invalid` naming `field`."""
    if type(value) is Decimal and value.is_finite():  # the common case, answered first
        return value
    if isinstance(value, bool) or value is None:
        raise Invalid(f"{field} must be a number", field=field)
    try:
        result = value if isinstance(value, Decimal) else Decimal(
            repr(value) if isinstance(value, float) else str(value))
    except (InvalidOperation, ValueError, TypeError):
        raise Invalid(f"{field} must be a number", field=field) from None
    if not result.is_finite():
        raise Invalid(f"{field} must be finite", field=field)
    return result


def price(value: Any, *, field: str = "price") -> Price:
    """A strictly positive, finite price."""
    result = to_decimal(value, field=field)
    if result <= 0:
        raise Invalid(f"{field} must be positive", field=field)
    return result


def quantity(value: Any, *, field: str = "quantity") -> Quantity:
    """A strictly positive, finite quantity."""
    result = to_decimal(value, field=field)
    if result <= 0:
        raise Invalid(f"{field} must be positive", field=field)
    return result


def non_negative(value: Any, *, field: str) -> Decimal:
    """A finite value that is zero or more (volumes, fees, limits)."""
    result = to_decimal(value, field=field)
    if result < 0:
        raise Invalid(f"{field} must not be negative", field=field)
    return result


def money(value: Any, *, field: str = "amount") -> Money:
    """A finite amount of money (may be negative: P&L, cash flows)."""
    return to_decimal(value, field=field)


def round_to_step(value: Decimal, step: Decimal, *, down: bool = False) -> Decimal:
    """Round `value` to a multiple of `step` (half-even, or down)."""
    units = (value / step).quantize(Decimal(1), rounding=ROUND_DOWN if down else ROUND_HALF_EVEN)
    return units * step


def bps(value: Decimal, basis_points: Decimal) -> Decimal:
    """`basis_points` of `value` (1 bp = 0.01%)."""
    return value * basis_points / _BASIS_POINTS
