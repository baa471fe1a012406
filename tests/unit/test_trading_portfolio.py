"""Portfolio accounting: average cost, realised/unrealised P&L, fees, exposure, restore."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from trading.errors import Invalid
from trading.instruments import Bar
from trading.orders import Fill, Side
from trading.portfolio import PnlSnapshot, Portfolio, Position

D = Decimal
T0 = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)


def fill(fill_id: str, side: Side, qty: str, px: str, fee: str = "0", symbol: str = "AAPL") -> Fill:
    return Fill(fill_id, f"c-{fill_id}", symbol, side, D(qty), D(px), D(fee), T0)


def test_long_round_trip_with_fees() -> None:
    p = Portfolio(D("10000"))
    pos = p.apply_fill(fill("f1", Side.BUY, "10", "100.50", fee="1.25"))
    assert pos == Position("AAPL", D("10"), D("100.50"), D("0"))
    assert p.cash == D("8993.75")
    assert p.equity == D("9998.75")  # unmarked: valued at average cost

    pos = p.apply_fill(fill("f2", Side.SELL, "10", "110.25", fee="1.50"))
    assert pos.is_flat and pos.average_cost == 0
    assert pos.realized_pnl == D("97.50")
    assert p.cash == D("10094.75")
    assert p.realized_pnl == D("97.50")  # gross of fees
    assert p.fees == D("2.75")
    assert p.net_pnl == D("94.75")
    assert p.unrealized_pnl == 0
    assert p.equity == D("10094.75")
    assert p.positions() == []
    assert p.position("AAPL").realized_pnl == D("97.50")


def test_adding_to_a_long_takes_the_weighted_average() -> None:
    p = Portfolio(D("10000"))
    p.apply_fill(fill("f1", Side.BUY, "10", "100"))
    pos = p.apply_fill(fill("f2", Side.BUY, "30", "104"))
    assert pos.quantity == D("40")
    assert pos.average_cost == D("103")
    assert pos.realized_pnl == 0
    assert p.cash == D("5880")


def test_partial_close_realises_only_the_closed_part() -> None:
    p = Portfolio(D("10000"))
    p.apply_fill(fill("f1", Side.BUY, "10", "100"))
    p.apply_fill(fill("f2", Side.BUY, "30", "104"))
    pos = p.apply_fill(fill("f3", Side.SELL, "15", "110"))
    assert pos.quantity == D("25")
    assert pos.average_cost == D("103")  # unchanged by a reduction
    assert p.realized_pnl == D("105")
    assert p.cash == D("7530")
    p.mark("AAPL", D("108"))
    assert p.unrealized_pnl == D("125")
    assert p.equity == D("10230")
    assert p.net_pnl == p.equity - D("10000")


def test_flip_long_to_short_across_zero() -> None:
    p = Portfolio(D("10000"))
    p.apply_fill(fill("f1", Side.BUY, "10", "100"))
    pos = p.apply_fill(fill("f2", Side.SELL, "25", "90", fee="2"))
    assert pos.quantity == D("-15")
    assert pos.average_cost == D("90")  # the remainder opens at the fill price
    assert pos.realized_pnl == D("-100")
    assert p.cash == D("11248")
    p.mark("AAPL", D("80"))
    assert p.unrealized_pnl == D("150")
    assert p.equity == D("10048")
    assert p.net_pnl == D("48")


def test_flip_short_to_long_across_zero() -> None:
    p = Portfolio(D("1000"))
    p.apply_fill(fill("f1", Side.SELL, "5", "50"))
    pos = p.apply_fill(fill("f2", Side.BUY, "8", "40"))
    assert pos.quantity == D("3")
    assert pos.average_cost == D("40")
    assert pos.realized_pnl == D("50")
    assert p.cash == D("930")


def test_short_round_trip() -> None:
    p = Portfolio(D("5000"))
    p.apply_fill(fill("f1", Side.SELL, "20", "50", fee="1"))
    assert p.cash == D("5999")
    pos = p.apply_fill(fill("f2", Side.SELL, "20", "60"))
    assert pos.quantity == D("-40")
    assert pos.average_cost == D("55")
    p.mark("AAPL", D("52"))
    assert p.unrealized_pnl == D("120")  # (55 - 52) * 40 in the short's favour
    pos = p.apply_fill(fill("f3", Side.BUY, "40", "45", fee="1"))
    assert pos.is_flat
    assert p.realized_pnl == D("400")
    assert p.cash == D("5398")
    assert p.fees == D("2")
    assert p.net_pnl == D("398")
    assert p.equity == D("5398")


def test_unrealised_follows_marks_and_bars() -> None:
    p = Portfolio(D("10000"))
    p.apply_fill(fill("f1", Side.BUY, "10", "100"))
    assert p.last_price("AAPL") is None
    assert p.unrealized_pnl == 0
    assert p.equity == D("10000")
    p.mark("AAPL", D("105.5"))
    assert p.last_price("AAPL") == D("105.5")
    assert p.unrealized_pnl == D("55.0")
    assert p.equity == D("10055.0")
    p.mark_bar(Bar("AAPL", T0, D("100"), D("101"), D("98"), D("99"), D("1000")))
    assert p.last_price("AAPL") == D("99")
    assert p.unrealized_pnl == D("-10")
    assert p.last_price("MSFT") is None


def test_mark_refuses_bad_prices() -> None:
    p = Portfolio(D("100"))
    with pytest.raises(Invalid) as err:
        p.mark("AAPL", D("0"))
    assert err.value.field == "price"
    with pytest.raises(Invalid):
        p.mark("AAPL", D("NaN"))


def test_gross_and_net_exposure_and_sorted_positions() -> None:
    p = Portfolio(D("10000"))
    p.apply_fill(fill("f1", Side.SELL, "5", "200", symbol="MSFT"))
    p.apply_fill(fill("f2", Side.BUY, "10", "100", symbol="AAPL"))
    p.mark("AAPL", D("110"))
    p.mark("MSFT", D("190"))
    assert p.gross_exposure == D("2050")
    assert p.net_exposure == D("150")
    assert [pos.symbol for pos in p.positions()] == ["AAPL", "MSFT"]
    assert p.unrealized_pnl == D("150")  # +100 on AAPL, +50 on the MSFT short
    assert p.equity == p.cash + D("150")


def test_duplicate_fill_id_is_refused_and_changes_nothing() -> None:
    p = Portfolio(D("10000"))
    p.apply_fill(fill("f1", Side.BUY, "10", "100", fee="1"))
    with pytest.raises(Invalid) as err:
        p.apply_fill(fill("f1", Side.BUY, "10", "100", fee="1"))
    assert err.value.field == "fill_id"
    assert p.cash == D("8999")
    assert p.fees == D("1")
    assert p.position("AAPL").quantity == D("10")


@pytest.mark.parametrize("cash", [D("-0.01"), "abc", None, D("Infinity")])
def test_bad_starting_cash_is_refused(cash: object) -> None:
    with pytest.raises(Invalid) as err:
        Portfolio(cash)
    assert err.value.field == "cash"


def test_positions_refuse_inconsistent_values() -> None:
    with pytest.raises(Invalid) as err:
        Position("AAPL", D("0"), D("10"))
    assert err.value.field == "average_cost"
    with pytest.raises(Invalid) as err:
        Position("AAPL", D("5"), D("0"))
    assert err.value.field == "average_cost"
    with pytest.raises(Invalid) as err:
        Position("aapl")
    assert err.value.field == "symbol"


def test_restore_equals_the_original_state() -> None:
    p = Portfolio(D("1000"))
    p.apply_fill(fill("f1", Side.BUY, "40", "50", fee="0.5"))  # cash goes negative
    p.apply_fill(fill("f2", Side.SELL, "10", "55", fee="0.5"))
    p.apply_fill(fill("f3", Side.SELL, "4", "20", fee="0.25", symbol="MSFT"))
    p.apply_fill(fill("f4", Side.BUY, "4", "18", fee="0.25", symbol="MSFT"))  # closed
    assert p.cash < 0

    q = Portfolio.restore(p.cash, p.positions(include_flat=True), p.fees,
                          applied_fill_ids=["f1", "f2", "f3", "f4"])
    for portfolio in (p, q):
        portfolio.mark("AAPL", D("57"))
    assert q.positions(include_flat=True) == p.positions(include_flat=True)
    assert q.snapshot(T0) == p.snapshot(T0)
    assert q.realized_pnl == D("58")  # 50 on AAPL + 8 on MSFT
    with pytest.raises(Invalid) as err:
        q.apply_fill(fill("f3", Side.SELL, "1", "20", symbol="MSFT"))
    assert err.value.field == "fill_id"

    p.apply_fill(fill("f5", Side.SELL, "20", "60", fee="1"))
    q.apply_fill(fill("f5", Side.SELL, "20", "60", fee="1"))
    assert q.snapshot(T0) == p.snapshot(T0)


def test_restore_refuses_a_symbol_given_twice() -> None:
    with pytest.raises(Invalid) as err:
        Portfolio.restore(D("0"), [Position("AAPL", D("1"), D("10")), Position("AAPL")], D("0"))
    assert err.value.field == "positions"


def test_equity_curve_grows_with_record() -> None:
    p = Portfolio(D("1000"))
    assert p.equity_curve == []
    p.apply_fill(fill("f1", Side.BUY, "10", "10"))
    p.mark("AAPL", D("11"))
    snap = p.record(T0)
    assert isinstance(snap, PnlSnapshot)
    assert snap.equity == D("1010")
    p.mark("AAPL", D("9"))
    p.snapshot(T0 + timedelta(minutes=1))  # a snapshot alone is not recorded
    p.record(T0 + timedelta(minutes=2))
    assert p.equity_curve == [(T0, D("1010")), (T0 + timedelta(minutes=2), D("990"))]
    p.equity_curve.clear()  # a copy: the portfolio's curve is untouched
    assert len(p.equity_curve) == 2


def test_snapshot_needs_an_aware_timestamp() -> None:
    with pytest.raises(Invalid) as err:
        Portfolio(D("1")).snapshot(datetime(2024, 1, 1))
    assert err.value.field == "ts"


def test_a_non_terminating_average_is_rounded_to_the_decimal_context() -> None:
    p = Portfolio(D("100"))
    p.apply_fill(fill("f1", Side.BUY, "1", "1"))
    pos = p.apply_fill(fill("f2", Side.BUY, "2", "2"))
    assert pos.average_cost == D("1.666666666666666666666666667")
    assert p.cash == D("95")  # cash itself stays exact


def test_equity_always_equals_starting_cash_plus_net_pnl() -> None:
    # Exact while averages terminate; a non-terminating average (e.g. 5/3) is rounded to
    # the 28-digit decimal context, so allow that rounding and nothing more.
    tolerance = D("1e-18")
    rng = random.Random(7)
    p = Portfolio(D("100000"))
    for i in range(500):
        symbol = rng.choice(["AAPL", "MSFT", "BTC-USD"])
        side = rng.choice([Side.BUY, Side.SELL])
        qty = str(rng.randint(1, 40))
        px = f"{rng.randint(5000, 15000) / 100:.2f}"
        fee = f"{rng.randint(0, 300) / 100:.2f}"
        p.apply_fill(fill(f"f{i}", side, qty, px, fee=fee, symbol=symbol))
        if rng.random() < 0.5:
            p.mark(symbol, D(f"{rng.randint(5000, 15000) / 100:.2f}"))
        assert abs(p.equity - D("100000") - p.net_pnl) < tolerance
        assert p.gross_exposure >= abs(p.net_exposure)


def test_booked_positions_equal_validated_ones_and_equity_adds_up_as_net_exposure() -> None:
    # apply_fill builds positions without re-validating them; they must equal (and print
    # as) those Position.apply builds and checks, and equity must stay cash + net exposure.
    rng = random.Random(11)
    p = Portfolio(D("100000"))
    expected: dict[str, Position] = {}
    for i in range(300):
        symbol = rng.choice(["AAPL", "MSFT"])
        side = rng.choice([Side.BUY, Side.SELL])
        qty, px = str(rng.randint(1, 30)), f"{rng.randint(5000, 15000) / 100:.2f}"
        before = expected.get(symbol, Position(symbol))
        expected[symbol] = before.apply(D(qty) * side.sign, D(px))
        booked = p.apply_fill(fill(f"f{i}", side, qty, px, fee="0.10", symbol=symbol))
        assert booked == expected[symbol] and repr(booked) == repr(expected[symbol])
        p.mark(symbol, D(px))
        equity = p.equity
        assert equity == p.cash + p.net_exposure and str(equity) == str(p.cash + p.net_exposure)


def test_apply_still_validates_the_position_it_returns() -> None:
    with pytest.raises(Invalid) as err:
        Position("AAPL").apply(D(1), D(-5))
    assert err.value.field == "average_cost"
