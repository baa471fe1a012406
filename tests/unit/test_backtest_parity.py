"""Parity with backtrader: the same SMA-crossover rules, bars, fees and fill timing give the same trades.

Both engines run the rule of `sma_crossover_signals` (an exact crossing of the fast and
slow simple moving averages of closes, compared as ``sum_fast * slow`` against
``sum_slow * fast`` on integer cents), go long on a cross above and exit on a cross
below (or go short, with `allow_short`), and fill the market order placed on bar ``t``
at the open of bar ``t + 1`` (backtrader's default, without cheat-on-open). Fees are
``fee_bps`` of the notional in both (backtrader's percentage commission).

With slippage the fill models cannot be made identical, for two reasons:

* the `PaperBroker` rounds a slipped price to the instrument's tick against the trader
  (up for buys, down for sells); backtrader's `set_slippage_perc` does not round at all;
* backtrader with ``slip_match=True`` (its default) caps a slipped price at the bar's high
  (buys) or low (sells), the `PaperBroker` does not cap.

So without slippage the test asserts identical trades (time, side, quantity, price,
fee to 1e-8) and final equity to 1e-6; with slippage it asserts identical times, sides and
quantities, and prices that differ by less than one tick or sit at backtrader's cap.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from trading.backtest import run_backtest
from trading.data import SyntheticSource
from trading.instruments import Bar

bt = pytest.importorskip("backtrader")
pd = pytest.importorskip("pandas")

START = datetime(2024, 1, 1, tzinfo=UTC)
CAPITAL = Decimal(1_000_000)


def _bars(seed: int, n: int) -> list[Bar]:
    return list(SyntheticSource(seed=seed).bars(["AAPL"], START, START + timedelta(minutes=n)))


class _ExactCross(bt.Strategy):  # type: ignore[misc]
    params = (("fast", 10), ("slow", 30), ("quantity", 1), ("allow_short", False))

    def __init__(self) -> None:
        self.trades: list[tuple[datetime, str, float, float, float]] = []
        self.previous: int | None = None

    def next(self) -> None:
        fast, slow = self.p.fast, self.p.slow
        closes = [round(c * 100) for c in self.data.close.get(size=slow)]
        if len(closes) < slow:
            return
        diff = sum(closes[-fast:]) * slow - sum(closes) * fast
        previous, self.previous = self.previous, diff
        if previous is None:
            return
        position, size = self.position.size, self.p.quantity
        if diff > 0 >= previous and position <= 0:
            self.buy(size=size - position)
        elif diff < 0 <= previous:
            target = -size if self.p.allow_short else 0
            if position > target:
                self.sell(size=position - target)

    def notify_order(self, order: Any) -> None:
        if order.status == order.Completed:
            when = bt.num2date(order.executed.dt).replace(tzinfo=UTC)
            side = "buy" if order.isbuy() else "sell"
            self.trades.append((when, side, abs(order.executed.size), order.executed.price,
                                order.executed.comm))


def _backtrader(bars: list[Bar], params: dict[str, Any], fee_bps: float,
                slippage_bps: float) -> tuple[list[tuple[datetime, str, float, float, float]], float]:
    frame = pd.DataFrame({"open": [float(b.open) for b in bars], "high": [float(b.high) for b in bars],
                          "low": [float(b.low) for b in bars], "close": [float(b.close) for b in bars],
                          "volume": [float(b.volume) for b in bars]},
                         index=pd.DatetimeIndex([b.ts.replace(tzinfo=None) for b in bars]))
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(bt.feeds.PandasData(dataname=frame))
    cerebro.addstrategy(_ExactCross, **params)
    cerebro.broker.setcash(float(CAPITAL))
    cerebro.broker.setcommission(commission=fee_bps / 10_000)
    if slippage_bps:
        cerebro.broker.set_slippage_perc(slippage_bps / 10_000)
    strategy = cerebro.run()[0]
    return strategy.trades, cerebro.broker.getvalue()


@pytest.mark.parametrize(("seed", "allow_short"), [(1, False), (2, True), (3, False)])
def test_same_trades_and_equity_as_backtrader_without_slippage(seed: int, allow_short: bool) -> None:
    bars = _bars(seed, 4000)
    params = {"fast": 5, "slow": 20, "quantity": 3, "allow_short": allow_short}
    ours = run_backtest("sma_crossover", params, bars, capital=CAPITAL, fee_bps=5, slippage_bps=0)
    theirs, value = _backtrader(bars, params, 5.0, 0.0)
    assert len(ours.fills) == len(theirs) > 50
    for fill, (when, side, qty, px, fee) in zip(ours.fills, theirs, strict=True):
        assert (fill.ts, fill.side.value, float(fill.quantity)) == (when, side, qty)
        assert float(fill.price) == pytest.approx(px, abs=1e-9)
        assert float(fill.fee) == pytest.approx(fee, abs=1e-8)
    assert float(ours.final_equity) == pytest.approx(value, abs=1e-6)


def test_same_trade_times_with_slippage_prices_within_a_tick_or_capped() -> None:
    bars = _bars(4, 4000)
    by_ts = {b.ts: b for b in bars}
    params = {"fast": 5, "slow": 20, "quantity": 2}
    ours = run_backtest("sma_crossover", params, bars, capital=CAPITAL, fee_bps=5, slippage_bps=3)
    theirs, _ = _backtrader(bars, params, 5.0, 3.0)
    assert len(ours.fills) == len(theirs) > 50
    for fill, (when, side, qty, px, _fee) in zip(ours.fills, theirs, strict=True):
        assert (fill.ts, fill.side.value, float(fill.quantity)) == (when, side, qty)
        bar = by_ts[fill.ts]
        capped = px == pytest.approx(float(bar.high if side == "buy" else bar.low))
        assert capped or abs(float(fill.price) - px) < 0.01
