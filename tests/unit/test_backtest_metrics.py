"""Backtest metrics on hand-computed cases."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from trading.errors import Invalid
from trading.metrics import compute_metrics, round_trips
from trading.orders import Fill, Side

T0 = datetime(2024, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def fill(n: int, side: Side, qty: str, px: str, fee: str, day: int, symbol: str = "AAPL") -> Fill:
    return Fill(f"o{n}:1", f"o{n}", symbol, side, Decimal(qty), Decimal(px), Decimal(fee), T0 + day * DAY)


def test_returns_ratios_and_drawdown_by_hand() -> None:
    # capital 100, then 110, 99, 108.9: returns +10 %, -10 %, +10 %
    curve = [(T0 + i * DAY, Decimal(v)) for i, v in enumerate(["110", "99", "108.9"])]
    m = compute_metrics(curve, [], capital=100, periods_per_year=4)
    assert m.total_return == pytest.approx(0.089)
    assert m.cagr == pytest.approx(1.089 ** (4 / 3) - 1)  # 3 returns at 4 a year: 0.75 years
    # mean 1/30, sample std sqrt(0.04/3): sharpe = (1/30) / 0.11547 * sqrt(4)
    assert m.sharpe == pytest.approx((1 / 30) / math.sqrt(0.04 / 3) * 2)
    # downside deviation sqrt((0 + 0.01 + 0) / 3)
    assert m.sortino == pytest.approx((1 / 30) / math.sqrt(0.01 / 3) * 2)
    assert m.max_drawdown == pytest.approx(0.1)  # 110 -> 99
    assert m.max_drawdown_bars == 2  # 99 and 108.9 are both below the peak of 110
    assert m.max_drawdown_duration == 2 * (timedelta(days=365.25) / 4)
    assert m.calmar == pytest.approx(m.cagr / 0.1)
    assert (m.round_trips, m.win_rate, m.profit_factor, m.exposure, m.turnover) == (0, None, None, 0.0, 0.0)


def test_the_interval_is_inferred_from_the_curve() -> None:
    curve = [(T0 + i * DAY, Decimal(100 + i)) for i in range(5)]
    m = compute_metrics(curve, [])
    assert m.interval == DAY
    assert m.periods_per_year == pytest.approx(365.25)
    assert m.sortino is None  # no losing period
    assert m.max_drawdown == 0.0
    assert m.calmar is None
    assert m.total_return == pytest.approx(0.04)


def test_fifo_round_trips_win_rate_and_profit_factor() -> None:
    fills = [fill(1, Side.BUY, "2", "10", "0.2", 0), fill(2, Side.BUY, "1", "13", "0.1", 1),
             fill(3, Side.SELL, "2", "12", "0.2", 2),  # closes the first lot: 2*2 - 0.4 fees = 3.6
             fill(4, Side.SELL, "2", "11", "0.2", 3),  # closes 1 @ 13: -2 - 0.2 = -2.2; opens 1 short @ 11
             fill(5, Side.BUY, "1", "12", "0.1", 4)]  # covers the short: -1 - 0.2 = -1.2
    trips = round_trips(fills)
    assert [(t.direction, t.quantity, t.pnl) for t in trips] == [
        ("long", Decimal(2), Decimal("3.6")), ("long", Decimal(1), Decimal("-2.2")),
        ("short", Decimal(1), Decimal("-1.2"))]
    curve = [(T0 + i * DAY, Decimal(100)) for i in range(6)]
    m = compute_metrics(curve, fills, periods_per_year=365)
    assert m.round_trips == 3
    assert m.win_rate == pytest.approx(1 / 3)
    assert m.profit_factor == pytest.approx(3.6 / 3.4)
    # positions after each day: 2, 3, 1, -1, 0, 0 -> open on 4 of 6 points
    assert m.exposure == pytest.approx(4 / 6)
    # notional 20 + 13 + 24 + 22 + 12 = 91 over a mean equity of 100
    assert m.turnover == pytest.approx(0.91)
    assert m.sharpe is None  # flat equity: no volatility


def test_a_wiped_out_account_and_bad_input() -> None:
    m = compute_metrics([(T0, Decimal(50)), (T0 + DAY, Decimal(0))], [], capital=100)
    assert (m.total_return, m.cagr, m.max_drawdown) == (-1.0, -1.0, 1.0)
    with pytest.raises(Invalid):
        compute_metrics([], [])
    with pytest.raises(Invalid):
        compute_metrics([(T0, Decimal(1))], [])
