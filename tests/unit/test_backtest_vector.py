"""The vectorised path makes exactly the event-driven backtester's trades."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
import pytest

from trading.backtest import run_backtest
from trading.builtin_strategies import sma_crossover_signals
from trading.data import SyntheticSource
from trading.errors import Invalid
from trading.vector import BarArrays, run_vector_backtest, sma_crossover_signals_np

START = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(("seed", "fast", "slow", "allow_short", "fee", "slip"), [
    (1, 5, 20, False, 5, 2), (2, 3, 8, True, 10, 0), (3, 10, 30, True, 0, 7), (4, 2, 3, False, 1, 1),
])
def test_same_trades_and_equity_as_the_event_path(seed: int, fast: int, slow: int, allow_short: bool,
                                                  fee: int, slip: int) -> None:
    bars = list(SyntheticSource(seed=seed).bars(["BTC-USD"], START, START + timedelta(minutes=3000)))
    params = {"fast": fast, "slow": slow, "quantity": "0.5", "allow_short": allow_short}
    event = run_backtest("sma_crossover", params, bars, capital=1_000_000, fee_bps=fee, slippage_bps=slip)
    fast_path = run_vector_backtest("sma_crossover", params, bars, capital=1_000_000, fee_bps=fee,
                                    slippage_bps=slip)
    assert len(event.fills) > 20
    assert fast_path.fills == event.fills  # ids, times, sides, quantities, prices, fees
    assert fast_path.final_equity == event.final_equity
    assert np.allclose(fast_path.equity, [float(e) for _, e in event.equity_curve], rtol=0, atol=1e-6)
    assert [t for t, _ in fast_path.equity_curve] == [t for t, _ in event.equity_curve]


def test_numpy_signals_equal_the_pure_function_including_ties() -> None:
    closes = [100, 100, 100, 101, 100, 100, 99, 100, 100, 101, 101, 100, 99, 99, 100]
    expected = sma_crossover_signals([Decimal(c) for c in closes], 2, 4)
    assert sma_crossover_signals_np(np.array(closes), 2, 4).tolist() == expected
    huge = np.array([c * 10**14 for c in closes], dtype=np.int64)  # falls back to Python integers
    assert sma_crossover_signals_np(huge, 2, 4).tolist() == expected


def test_bad_input_is_refused() -> None:
    bars = list(SyntheticSource(seed=1).bars(["AAPL", "MSFT"], START, START + timedelta(minutes=5)))
    with pytest.raises(Invalid):
        BarArrays.from_bars(bars)
    one = [b for b in bars if b.symbol == "AAPL"]
    with pytest.raises(Invalid):
        run_vector_backtest("breakout", {}, one, capital=1000)
    with pytest.raises(Invalid):
        run_vector_backtest("sma_crossover", {"fast": 5, "slow": 3}, one, capital=1000)
