"""The vectorised path's exact arithmetic: integer ticks where they fit, the broker's Decimals elsewhere."""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext
from typing import Any

import numpy as np
import pytest

from trading import vector
from trading.backtest import run_backtest
from trading.data import SyntheticSource
from trading.instruments import Bar, Instrument
from trading.orders import Fill
from trading.vector import BarArrays, VectorResult, execute_signals, run_vector_backtest

START = datetime(2024, 1, 1, tzinfo=UTC)


def _bars(seed: int, minutes: int = 3000) -> list[Bar]:
    return list(SyntheticSource(seed=seed).bars(["BTC-USD"], START, START + timedelta(minutes=minutes)))


@pytest.fixture
def decimal_path_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the runs that price their fills with `Decimal` trade by trade (the int64 path declined)."""
    calls: list[int] = []
    real = vector._exact_decimals

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(vector, "_exact_decimals", spy)
    return calls


def _same(fast: VectorResult, event_fills: list[Fill], event_final: Decimal) -> None:
    assert len(fast.fills) > 20
    assert fast.fills == event_fills
    assert fast.final_equity == event_final


@pytest.mark.parametrize(("tick", "quantity", "fee", "slip", "allow_short"), [
    ("0.05", "0.3", "2.5", "1.5", True),  # a tick coarser than the prices, fractional rates
    ("0.03", "0.0007", "7", "0.25", False),  # a tick that is no power of ten
    ("0.01", "3", "0.001", "13", True),  # fees rounded half-even at 8 places
])
def test_odd_ticks_sizes_and_rates_give_the_event_engines_fills(tick: str, quantity: str, fee: str, slip: str,
                                                               allow_short: bool,
                                                               decimal_path_calls: list[int]) -> None:
    bars = _bars(5)
    params = {"fast": 4, "slow": 13, "quantity": quantity, "allow_short": allow_short}
    instruments = {"BTC-USD": Instrument("BTC-USD", Decimal(tick), Decimal("0.0001"))}
    event = run_backtest("sma_crossover", params, bars, capital="250000.5", fee_bps=fee, slippage_bps=slip,
                         instruments=instruments)
    fast = run_vector_backtest("sma_crossover", params, bars, capital="250000.5", fee_bps=fee,
                               slippage_bps=slip, tick=tick)
    _same(fast, event.fills, event.final_equity)
    assert np.allclose(fast.equity, [float(e) for _, e in event.equity_curve], rtol=0, atol=1e-6)
    assert not decimal_path_calls


def test_rates_too_precise_for_int64_fall_back_to_the_brokers_decimals(decimal_path_calls: list[int]) -> None:
    bars = _bars(6)
    params = {"fast": 3, "slow": 9, "quantity": "0.5", "allow_short": True}
    slip = "1.0000000000000000000001"  # 10**26 ticks of slippage per price unit: no int64 path
    event = run_backtest("sma_crossover", params, bars, capital=1_000_000, fee_bps=5, slippage_bps=slip)
    fast = run_vector_backtest("sma_crossover", params, bars, capital=1_000_000, fee_bps=5, slippage_bps=slip)
    _same(fast, event.fills, event.final_equity)
    assert decimal_path_calls == [1]


def test_the_integer_and_the_decimal_paths_agree(decimal_path_calls: list[int]) -> None:
    arrays = BarArrays.from_bars(_bars(7))
    signals = np.zeros(len(arrays), dtype=np.int8)
    signals[5::40], signals[25::40] = 1, -1
    kwargs = {"quantity": "0.25", "allow_short": True, "capital": 50_000, "fee_bps": "3.3", "slippage_bps": 2,
              "tick": "0.02"}
    fast = execute_signals(arrays, signals, **kwargs)
    with localcontext() as context:
        context.prec = 27  # the integer path declines a context below 28 digits
        slow = execute_signals(arrays, signals, **kwargs)
    assert decimal_path_calls == [1]
    assert len(fast.fills) == 2 * (len(arrays) // 40) and fast.fills == slow.fills
    assert fast.final_equity == slow.final_equity
    assert np.allclose(fast.equity, slow.equity, rtol=0, atol=1e-6)


def test_fills_equal_checked_fills_field_for_field() -> None:
    result = run_vector_backtest("sma_crossover", {"fast": 5, "slow": 20}, _bars(8), capital=100_000,
                                 fee_bps=5)
    names = {f.name for f in fields(Fill)}
    for fill in result.fills:
        assert set(vars(fill)) == names
        assert Fill(**vars(fill)) == fill
        assert fill.fee == fill.fee.quantize(Decimal("1E-8")) and fill.price > 0


def test_equity_curve_times_keep_microseconds_and_times_before_1970() -> None:
    ns = np.array([-1500, 0, 1_700_000_000_123_456_789], dtype=np.int64)
    arrays = BarArrays("AAPL", ns, np.full(3, 10.0), np.full(3, 10.0))
    result = execute_signals(arrays, np.zeros(3, dtype=np.int8), quantity=1, allow_short=False, capital=100)
    epoch, us = datetime(1970, 1, 1, tzinfo=UTC), timedelta(microseconds=1)
    assert [t for t, _ in result.equity_curve] == [
        epoch - 2 * us, epoch, epoch + timedelta(seconds=1_700_000_000) + 123_456 * us]
    assert result.equity.tolist() == [100.0] * 3 and result.final_equity == 100 and not result.fills


def test_trades_are_exact_arrays_and_fills_are_built_once_from_them() -> None:
    arrays = BarArrays.from_bars(_bars(9))
    params = {"fast": 3, "slow": 11, "quantity": "0.5", "allow_short": True}
    result = run_vector_backtest("sma_crossover", params, arrays, capital=100_000, fee_bps=5, slippage_bps=3)
    trades = result.trades
    assert "fills" not in vars(result)  # not built until asked for
    fills = result.fills
    assert result.fills is fills and len(trades) == len(fills) > 20
    assert [f.side.value == "buy" for f in fills] == trades.buy.tolist()
    assert [f.quantity for f in fills] == trades.quantity.tolist() == [Decimal("0.5")] + [Decimal(1)] * (
        len(fills) - 1)
    assert [f.price for f in fills] == trades.price.tolist() and [f.fee for f in fills] == trades.fee.tolist()
    curve = result.equity_curve
    assert [f.ts for f in fills] == [curve[i][0] for i in trades.bar.tolist()]
