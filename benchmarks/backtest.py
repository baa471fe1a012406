"""Backtest throughput: the event-driven engine, the vectorised path, backtrader, vectorbt; SMA crossover.

One symbol (AAPL, one-minute synthetic bars from `SyntheticSource`, seed 7), SMA crossover
fast=10, slow=30, long-only, quantity 1, fee 5 bps, no slippage (backtrader caps and does
not round slipped prices, see tests/unit/test_backtest_parity.py). Each engine is timed on
its run alone: making the bars (and the arrays or the DataFrame each engine takes) is
not timed. Throughput is bars per second of that run.

* event: `trading.backtest.run_backtest` on `--bars` bars (the live `SmaCrossover` class);
* vector: `trading.vector.run_vector_backtest` on the same bars as arrays; its fills are
  compared with the event engine's (they must be identical);
* backtrader: the same rule with backtrader's own SMA indicators, market orders filled at
  the next bar's open, percentage commission, on the first `--bt-bars` bars (default
  200,000: a million takes minutes and several GiB); its trades (time, side, quantity,
  price) are compared with the event engine's fills over the same span;
* vectorbt: if installed (it is not a dependency: ``pip install vectorbt``),
  `Portfolio.from_signals` on the vector run's signals (the exact SMA crossings) moved one
  bar later, so the order of bar ``t`` fills at the open of bar ``t + 1``, with size
  `quantity`, fees 5 bps, long only, on `--bars` bars. It is timed after a warm-up run on
  1,000 bars that compiles its numba functions, and without the signals (the vector run's
  time includes its own); its orders (bar, side, size, price, and fee to 1e-8) are
  compared with the event engine's fills.

    .venv/bin/python benchmarks/backtest.py [--bars 1000000] [--bt-bars 200000]
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trading.backtest import run_backtest
from trading.data import SyntheticSource
from trading.instruments import Bar
from trading.vector import BarArrays, run_vector_backtest, sma_crossover_signals_np

START = datetime(2024, 1, 1, tzinfo=UTC)
PARAMS: dict[str, Any] = {"fast": 10, "slow": 30, "quantity": 1}
FEE_BPS = 5
CAPITAL = 10_000_000


def _timed(label: str, n: int, run: Any) -> tuple[Any, float]:
    began = time.perf_counter()
    result = run()
    took = time.perf_counter() - began
    print(f"{label:<11} {n:>9,} bars  {took:8.2f} s  {n / took:>12,.0f} bars/s", end="", flush=True)
    return result, n / took


def _backtrader(bars: list[Bar]) -> tuple[list[tuple[datetime, str, float, float]], float] | None:
    try:
        import backtrader as bt
        import pandas as pd
    except ImportError:
        return None

    class Cross(bt.Strategy):  # type: ignore[misc]
        def __init__(self) -> None:
            self.fast = bt.ind.SMA(self.data.close, period=PARAMS["fast"])
            self.slow = bt.ind.SMA(self.data.close, period=PARAMS["slow"])
            self.previous: float | None = None
            self.trades: list[tuple[datetime, str, float, float]] = []

        def next(self) -> None:
            diff = self.fast[0] - self.slow[0]
            diff = 0.0 if abs(diff) < 1e-9 else diff  # real differences of cent prices are >= 1e-6
            previous, self.previous = self.previous, diff
            if previous is None:
                return
            size = self.position.size
            if diff > 0 >= previous and size <= 0:
                self.buy(size=PARAMS["quantity"] - size)
            elif diff < 0 <= previous and size > 0:
                self.sell(size=size)

        def notify_order(self, order: Any) -> None:
            if order.status == order.Completed:
                self.trades.append((bt.num2date(order.executed.dt).replace(tzinfo=UTC),
                                    "buy" if order.isbuy() else "sell", abs(order.executed.size),
                                    order.executed.price))

    frame = pd.DataFrame({"open": [float(b.open) for b in bars], "high": [float(b.high) for b in bars],
                          "low": [float(b.low) for b in bars], "close": [float(b.close) for b in bars],
                          "volume": [float(b.volume) for b in bars]},
                         index=pd.DatetimeIndex([b.ts.replace(tzinfo=None) for b in bars]))
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(bt.feeds.PandasData(dataname=frame))
    cerebro.addstrategy(Cross)
    cerebro.broker.setcash(float(CAPITAL))
    cerebro.broker.setcommission(commission=FEE_BPS / 10_000)
    strategy, rate = _timed("backtrader", len(bars), lambda: cerebro.run()[0])
    return strategy.trades, rate


VbtOrder = tuple[int, str, float, float, float]  # bar index, side, size, price, fee


def _vectorbt(arrays: BarArrays, signals: npt.NDArray[Any]) -> tuple[list[VbtOrder], float, float] | None:
    try:
        import vectorbt as vbt
    except ImportError:
        return None
    entries, exits = np.zeros(len(signals), dtype=bool), np.zeros(len(signals), dtype=bool)
    entries[1:], exits[1:] = signals[:-1] > 0, signals[:-1] < 0  # an order fills on the next bar

    def run(n: int) -> Any:
        return vbt.Portfolio.from_signals(arrays.close[:n], entries[:n], exits[:n], price=arrays.open[:n],
                                          size=float(PARAMS["quantity"]), fees=FEE_BPS / 10_000,
                                          init_cash=float(CAPITAL), direction="longonly")

    run(1000)  # compiles (or loads) its numba functions: not timed
    portfolio, rate = _timed("vectorbt", len(signals), lambda: run(len(signals)))
    trades = [(int(o["idx"]), "buy" if o["side"] == 0 else "sell", float(o["size"]), float(o["price"]),
               float(o["fees"])) for o in portfolio.orders.records_arr]
    return trades, float(portfolio.final_value()), rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bars", type=int, default=1_000_000,
                        help="bars for the event, vector and vectorbt runs")
    parser.add_argument("--bt-bars", type=int, default=200_000, help="bars for backtrader (0: skip)")
    args = parser.parse_args()
    began = time.perf_counter()
    bars = list(SyntheticSource(seed=7).bars(["AAPL"], START, START + timedelta(minutes=args.bars)))
    arrays = BarArrays.from_bars(bars)
    print(f"made {len(bars):,} bars in {time.perf_counter() - began:.1f} s; "
          f"sma_crossover {PARAMS}, fee {FEE_BPS} bps")

    event, event_rate = _timed("event", len(bars), lambda: run_backtest(
        "sma_crossover", PARAMS, bars, capital=CAPITAL, fee_bps=FEE_BPS))
    print(f"  {len(event.fills):,} trades, final equity {event.final_equity}")
    vector, vector_rate = _timed("vector", len(bars), lambda: run_vector_backtest(
        "sma_crossover", PARAMS, arrays, capital=CAPITAL, fee_bps=FEE_BPS))
    same = vector.fills == event.fills and vector.final_equity == event.final_equity
    print(f"  {len(vector.fills):,} trades, identical to event: {same}")

    bt_rate: float | None = None
    if args.bt_bars > 0:
        span = bars[: args.bt_bars]
        ran = _backtrader(span)
        if ran is None:
            print("backtrader  skipped: not installed (pip install 'backtrader>=1.9')")
        else:
            trades, bt_rate = ran
            ours = [(f.ts, f.side.value, float(f.quantity), float(f.price)) for f in event.fills
                    if f.ts <= span[-1].ts]
            print(f"  {len(trades):,} trades, identical to event over its {len(span):,} bars: "
                  f"{trades == ours}")
            if len(span) < len(bars):
                print(f"  (backtrader ran {len(span):,} bars; at its rate {len(bars):,} bars would take "
                      f"{len(bars) / bt_rate:.0f} s)")
    signals = sma_crossover_signals_np(np.rint(arrays.close * 10**arrays.decimals).astype(np.int64),
                                       PARAMS["fast"], PARAMS["slow"])
    ran_vbt = _vectorbt(arrays, signals)
    vbt_rate: float | None = None
    if ran_vbt is None:
        print("vectorbt    skipped: not installed (pip install vectorbt)")
    else:
        orders, value, vbt_rate = ran_vbt
        index = {b.ts: i for i, b in enumerate(bars)}
        by_bar = [(index[f.ts], f.side.value, float(f.quantity), float(f.price)) for f in event.fills]
        same = [o[:4] for o in orders] == by_bar and all(
            abs(o[4] - float(f.fee)) <= 1e-8 for o, f in zip(orders, event.fills, strict=True))
        print(f"  {len(orders):,} trades, identical to event: {same}, final value {value:.5f}")

    print(f"vector / event: {vector_rate / event_rate:,.1f}x")
    if bt_rate is not None:
        print(f"event / backtrader: {event_rate / bt_rate:,.2f}x (goal >= 20x)")
        print(f"vector / backtrader: {vector_rate / bt_rate:,.1f}x")
    if vbt_rate is not None:
        print(f"vector / vectorbt: {vector_rate / vbt_rate:,.2f}x (goal >= 1x)")
    print(f"total {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
