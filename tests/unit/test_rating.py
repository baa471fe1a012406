"""Rating a month's usage into invoice lines: which lines appear, rounding, numbering, totals."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from billing.rating import Line, MonthUsage, Pricing, month_label, month_seconds, rate, total_cents
from trading.errors import Invalid

D = Decimal
NOV = date(2026, 11, 1)
HOUR = 3600

PRO = Pricing(plan="pro", plan_name="Pro", currency="usd", base_cents=4900,
              api_calls_included=100_000, api_call_overage_cents_per_1000=D("50"),
              cpu_hours_included=D("10"), cpu_hour_overage_cents=D("12.5"),
              storage_gb_included=D("5"), storage_gb_month_overage_cents=D("2.3"))

ENTERPRISE = Pricing(plan="enterprise", plan_name="Enterprise", currency="usd", base_cents=None,
                     api_calls_included=None, api_call_overage_cents_per_1000=D(0),
                     cpu_hours_included=None, cpu_hour_overage_cents=D(0),
                     storage_gb_included=None, storage_gb_month_overage_cents=D(0))


def usage(*, period: date = NOV, api_calls: int = 0, cpu_hours: str = "0", storage_gb: str = "0",
          **overrides: Any) -> MonthUsage:
    """Usage with a constant storage level held for the whole month."""
    fields: dict[str, Any] = {
        "period": period, "api_calls": api_calls, "cpu_seconds": D(cpu_hours) * HOUR,
        "storage_gb_seconds": D(storage_gb) * month_seconds(period)}
    fields.update(overrides)
    return MonthUsage(**fields)


def kinds(lines: list[Line]) -> list[str]:
    return [line.kind for line in lines]


def only(lines: list[Line], kind: str) -> Line:
    (line,) = [line for line in lines if line.kind == kind]
    return line


def test_under_every_allowance_bills_only_the_base() -> None:
    lines = rate(PRO, usage(api_calls=99_999, cpu_hours="9.5", storage_gb="4.9"))
    assert lines == [Line(1, "base", "Pro plan, November 2026", D(1), "month", D(4900), 4900)]


def test_exactly_at_every_allowance_is_not_overage() -> None:
    assert kinds(rate(PRO, usage(api_calls=100_000, cpu_hours="10", storage_gb="5"))) == ["base"]


def test_api_call_overage_is_billed_per_started_thousand() -> None:
    line = only(rate(PRO, usage(api_calls=250_000)), "api_calls")
    assert (line.quantity, line.unit, line.unit_price_cents, line.amount_cents) == (
        D(150), "1,000 calls", D(50), 7500)
    assert "100,000" in line.description


@pytest.mark.parametrize(("over", "units"), [(1, 1), (999, 1), (1000, 1), (1001, 2), (2500, 3)])
def test_a_started_thousand_calls_counts_as_a_whole_one(over: int, units: int) -> None:
    line = only(rate(PRO, usage(api_calls=100_000 + over)), "api_calls")
    assert line.quantity == units
    assert line.amount_cents == units * 50


def test_cpu_hour_overage() -> None:
    line = only(rate(PRO, usage(cpu_hours="14")), "cpu_hours")
    assert (line.quantity, line.unit, line.unit_price_cents, line.amount_cents) == (
        D(4), "CPU-hour", D("12.5"), 50)


def test_cpu_hours_are_rounded_half_up_to_four_decimals() -> None:
    # 0.18 s is exactly 0.00005 h: half-up makes it 0.0001 (half-even would make it 0).
    pricing = replace(PRO, cpu_hour_overage_cents=D(10_000))
    line = only(rate(pricing, usage(cpu_seconds=D(10 * HOUR) + D("0.18"))), "cpu_hours")
    assert line.quantity == D("0.0001")
    assert line.amount_cents == 1


def test_storage_overage_in_gb_months() -> None:
    line = only(rate(PRO, usage(storage_gb="7.5")), "storage")
    assert (line.quantity, line.unit, line.unit_price_cents, line.amount_cents) == (
        D("2.5"), "GB-month", D("2.3"), 6)  # 5.75 cents, half-up


@pytest.mark.parametrize(("hours", "cents"), [("0.5", 1), ("2.5", 3), ("1.5", 2), ("0.49", 0)])
def test_amounts_are_rounded_half_up_to_the_cent(hours: str, cents: int) -> None:
    pricing = replace(PRO, cpu_hour_overage_cents=D(1))
    lines = rate(pricing, usage(cpu_hours=str(10 + D(hours))))
    if cents:
        assert only(lines, "cpu_hours").amount_cents == cents
    else:
        assert kinds(lines) == ["base"]  # 0.49 cents rounds to nothing: no line


def test_a_zero_unit_price_leaves_the_line_out() -> None:
    free = replace(PRO, base_cents=0, api_call_overage_cents_per_1000=D(0))
    assert rate(free, usage(api_calls=1_000_000)) == []


def test_enterprise_has_no_base_and_unlimited_usage_bills_nothing() -> None:
    heavy = usage(api_calls=10**9, cpu_hours="100000", storage_gb="100000")
    assert rate(ENTERPRISE, heavy) == []
    assert total_cents(rate(ENTERPRISE, heavy)) == 0


def test_lines_are_numbered_without_gaps_when_some_are_skipped() -> None:
    custom = replace(PRO, base_cents=None)
    lines = rate(custom, usage(api_calls=10, cpu_hours="11", storage_gb="6"))
    assert [(line.line_no, line.kind) for line in lines] == [(1, "cpu_hours"), (2, "storage")]


def test_every_line_in_order_and_the_total_is_their_exact_sum() -> None:
    lines = rate(PRO, usage(api_calls=100_001, cpu_hours="12", storage_gb="6"))
    assert [(line.line_no, line.kind) for line in lines] == [
        (1, "base"), (2, "api_calls"), (3, "cpu_hours"), (4, "storage")]
    assert total_cents(lines) == sum(line.amount_cents for line in lines) == 4900 + 50 + 25 + 2
    assert all(type(line.amount_cents) is int for line in lines)
    assert all(isinstance(line.quantity, Decimal) for line in lines)


def test_month_seconds_and_label() -> None:
    assert month_seconds(date(2026, 2, 1)) == 28 * 86_400
    assert month_seconds(date(2028, 2, 1)) == 29 * 86_400
    assert month_seconds(date(2026, 1, 1)) == 31 * 86_400
    assert month_seconds(date(2026, 11, 1)) == 30 * 86_400
    assert month_label(date(2026, 11, 1)) == "November 2026"


def test_the_same_gb_seconds_are_more_gb_months_in_february() -> None:
    ten_gb_for_28_days = D(10 * 28 * 86_400)
    february = rate(PRO, usage(period=date(2026, 2, 1), storage_gb_seconds=ten_gb_for_28_days))
    january = rate(PRO, usage(period=date(2026, 1, 1), storage_gb_seconds=ten_gb_for_28_days))
    assert only(february, "storage").quantity == D(5)  # 10 GB-months, 5 included
    assert only(january, "storage").quantity == D("4.0323")  # 10 * 28/31 = 9.03226 GB-months


def test_a_full_month_at_a_level_is_that_many_gb_months_in_any_month() -> None:
    for period in (date(2026, 2, 1), date(2026, 1, 1), date(2026, 4, 1)):
        assert only(rate(PRO, usage(period=period, storage_gb="10")), "storage").quantity == D(5)


def test_informational_usage_is_not_billed() -> None:
    lines = rate(PRO, usage(memory_gb_seconds=D(10**12), gpu_seconds=D(10**9)))
    assert kinds(lines) == ["base"]


@pytest.mark.parametrize(("field", "value"), [
    ("api_calls", -1),
    ("api_calls", True),
    ("cpu_seconds", D(-1)),
    ("cpu_seconds", D("NaN")),
    ("cpu_seconds", 1.5),
    ("storage_gb_seconds", D("Infinity")),
    ("storage_gb_seconds", D("-0.1")),
    ("memory_gb_seconds", D("-1")),
    ("gpu_seconds", D("sNaN")),
    ("period", date(2026, 11, 2)),
])
def test_bad_usage_names_the_field(field: str, value: Any) -> None:
    with pytest.raises(Invalid) as caught:
        usage(**{field: value})
    assert caught.value.field == field
    assert field in caught.value.message


@pytest.mark.parametrize(("field", "value"), [
    ("base_cents", -1),
    ("api_calls_included", -5),
    ("cpu_hour_overage_cents", D("-0.5")),
    ("storage_gb_included", D("NaN")),
    ("api_call_overage_cents_per_1000", 0.5),
    ("currency", ""),
])
def test_bad_pricing_names_the_field(field: str, value: Any) -> None:
    with pytest.raises(Invalid) as caught:
        replace(PRO, **{field: value})
    assert caught.value.field == field
