"""Rate one month's usage against a plan's pricing into invoice lines.

Pure: no database, Ray or web. Money is integer cents; quantities and unit prices are
`Decimal`; every intermediate value is an exact `Fraction`, so no float and no context
precision ever touches an amount.

The lines of an invoice, numbered 1..n in this order, each present only when it applies:

``base``
    "<plan name> plan, <Month YYYY>", 1 "month" at the plan's base price. Absent for a
    custom-priced plan (``base_cents is None``) and for a free one (``base_cents == 0``).
``api_calls``
    Calls beyond the included number, billed per *started* 1,000 calls (1 call over is
    1 unit), unit "1,000 calls". Never present when calls are unlimited.
``cpu_hours``
    CPU-hours (``cpu_seconds / 3600``) beyond the included, unit "CPU-hour".
``storage``
    GB-months (``storage_gb_seconds / month_seconds(period)``) beyond the included GB,
    unit "GB-month".

Rounding: a fractional quantity (CPU-hours, GB-months) is the exact excess rounded half-up
to 4 decimals; a line's amount is that shown quantity times the unit price, rounded half-up
to a whole cent, so every line can be checked by hand. A line with a zero unit price, and an
overage line whose amount rounds to 0 cents, is left out. The invoice total is the exact
integer sum of the line amounts.
"""

from __future__ import annotations

import calendar
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date
from decimal import Decimal
from fractions import Fraction

from trading.errors import Invalid

SECONDS_PER_DAY = 86_400
SECONDS_PER_HOUR = 3_600
CALLS_PER_UNIT = 1_000
QUANTITY_PLACES = 4

_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")


@dataclass(frozen=True)
class Pricing:
    """A plan's prices and allowances (from ``platform.plans``); ``None`` means custom or unlimited."""

    plan: str
    plan_name: str
    currency: str
    base_cents: int | None
    api_calls_included: int | None
    api_call_overage_cents_per_1000: Decimal
    cpu_hours_included: Decimal | None
    cpu_hour_overage_cents: Decimal
    storage_gb_included: Decimal | None
    storage_gb_month_overage_cents: Decimal

    def __post_init__(self) -> None:
        if not self.currency:
            raise Invalid("currency must not be empty", field="currency")
        for field in ("base_cents", "api_calls_included"):
            value = getattr(self, field)
            if value is not None:
                _check_count(value, field)
        for field in ("api_call_overage_cents_per_1000", "cpu_hour_overage_cents",
                      "storage_gb_month_overage_cents", "cpu_hours_included", "storage_gb_included"):
            value = getattr(self, field)
            if value is not None:
                _check_decimal(value, field)


@dataclass(frozen=True)
class MonthUsage:
    """A tenant's metered usage for the calendar month starting on `period`."""

    period: date
    api_calls: int
    cpu_seconds: Decimal
    storage_gb_seconds: Decimal
    memory_gb_seconds: Decimal = Decimal(0)
    gpu_seconds: Decimal = Decimal(0)

    def __post_init__(self) -> None:
        if not isinstance(self.period, date) or self.period.day != 1:
            raise Invalid("period must be the first day of a month", field="period")
        _check_count(self.api_calls, "api_calls")
        for field in ("cpu_seconds", "storage_gb_seconds", "memory_gb_seconds", "gpu_seconds"):
            _check_decimal(getattr(self, field), field)


@dataclass(frozen=True)
class Line:
    """One invoice line: ``amount_cents`` is ``quantity * unit_price_cents`` rounded half-up."""

    line_no: int
    kind: str
    description: str
    quantity: Decimal
    unit: str
    unit_price_cents: Decimal
    amount_cents: int


def month_seconds(period: date) -> int:
    """Return the number of seconds in the calendar month of `period` (UTC, so no DST)."""
    return calendar.monthrange(period.year, period.month)[1] * SECONDS_PER_DAY


def month_label(period: date) -> str:
    """Return the month of `period` in English, as "November 2026" (independent of locale)."""
    return f"{_MONTHS[period.month - 1]} {period.year}"


def rate(pricing: Pricing, usage: MonthUsage) -> list[Line]:
    """Return the invoice lines for `usage` under `pricing`, numbered 1..n without gaps.

    See the module docstring for which lines appear and how they are rounded.
    """
    unnumbered: list[Line | None] = []

    if pricing.base_cents:
        unnumbered.append(Line(0, "base", f"{pricing.plan_name} plan, {month_label(usage.period)}",
                               Decimal(1), "month", Decimal(pricing.base_cents), pricing.base_cents))

    calls_included = pricing.api_calls_included
    if calls_included is not None and usage.api_calls > calls_included:
        units = -(-(usage.api_calls - calls_included) // CALLS_PER_UNIT)
        unnumbered.append(_overage("api_calls", f"API calls beyond the {calls_included:,} included",
                                   Decimal(units), "1,000 calls", pricing.api_call_overage_cents_per_1000))

    hours_included = pricing.cpu_hours_included
    if hours_included is not None:
        hours = Fraction(usage.cpu_seconds) / SECONDS_PER_HOUR
        unnumbered.append(_overage("cpu_hours", f"CPU-hours beyond the {_plain(hours_included)} included",
                                   _excess(hours, hours_included), "CPU-hour",
                                   pricing.cpu_hour_overage_cents))

    gb_included = pricing.storage_gb_included
    if gb_included is not None:
        gb_months = Fraction(usage.storage_gb_seconds) / month_seconds(usage.period)
        unnumbered.append(_overage("storage", f"Storage beyond the {_plain(gb_included)} GB included",
                                   _excess(gb_months, gb_included), "GB-month",
                                   pricing.storage_gb_month_overage_cents))

    present = [line for line in unnumbered if line is not None]
    return [replace(line, line_no=number) for number, line in enumerate(present, 1)]


def total_cents(lines: Sequence[Line]) -> int:
    """Return the invoice total: the exact sum of the lines' amounts."""
    return sum(line.amount_cents for line in lines)


def _overage(kind: str, description: str, quantity: Decimal, unit: str,
             unit_price_cents: Decimal) -> Line | None:
    """Return an unnumbered overage line, or None when it would bill 0 cents."""
    amount = _round_half_up(Fraction(quantity) * Fraction(unit_price_cents))
    if quantity <= 0 or unit_price_cents == 0 or amount == 0:
        return None
    return Line(0, kind, description, quantity, unit, unit_price_cents, amount)


def _excess(used: Fraction, included: Decimal) -> Decimal:
    """Return how far `used` exceeds `included`, rounded half-up to `QUANTITY_PLACES` decimals."""
    over = used - Fraction(included)
    if over <= 0:
        return Decimal(0)
    scaled = _round_half_up(over * 10**QUANTITY_PLACES)
    return Decimal(f"{scaled}E-{QUANTITY_PLACES}")  # built from text: exact at any size


def _plain(value: Decimal) -> str:
    """Write `value` without exponent or trailing zeros, with thousands separators."""
    return format(value.normalize(), ",f")


def _round_half_up(value: Fraction) -> int:
    """Round a non-negative exact value to the nearest integer, halves away from zero."""
    return int((2 * value + 1) // 2)


def _check_count(value: object, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(f"{field} must be a whole number", field=field)
    if value < 0:
        raise Invalid(f"{field} must not be negative", field=field)


def _check_decimal(value: object, field: str) -> None:
    if not isinstance(value, Decimal):
        raise Invalid(f"{field} must be a Decimal", field=field)
    if not value.is_finite():
        raise Invalid(f"{field} must be finite", field=field)
    if value < 0:
        raise Invalid(f"{field} must not be negative", field=field)
