"""Backtest throughput: the event-driven engine, the vectorised path, backtrader, vectorbt; SMA crossover.

One symbol (AAPL, one-minute synthetic bars from `SyntheticSource`, seed 7), SMA crossover
fast=10, slow=30, long-only, quantity 1, fee 5 bps, no slippage (backtrader caps and does
not round slipped prices, see tests/unit/test_backtest_parity.py). Making the bars (and
the arrays or the DataFrame each engine takes) is not timed. Throughput is bars per
second of the timed scope:

* event: `trading.backtest.run_backtest` on `--bars` bars (the live `SmaCrossover` class),
  one run: bars to fills, equity curve and final equity;
* vector: `trading.vector.run_vector_backtest` on the same bars as arrays (float64 open
  and close, int64 times), best of `--repeat` runs: from those arrays to the exact
  signals (integer cents), the trades as arrays (`VectorTrades`: bar, side, and exact
  `Decimal` quantity, price and fee), the per-bar equity curve (float64) and the exact
  final equity; its `Fill` objects are built on first use of `.fills`, which is timed on
  its own line ("vector + Fill objects": the same run, then `.fills`); its fills and
  final equity are compared with the event engine's (they must be identical);
* backtrader: the same rule with backtrader's own SMA indicators, market orders filled at
  the next bar's open, percentage commission, on the first `--bt-bars` bars (default
  200,000: a million takes minutes and several GiB), one run; its trades (time, side,
  quantity, price) are compared with the event engine's fills over the same span;
* vectorbt: if installed (it is not a dependency: ``pip install vectorbt``), the same
  scope as vector, best of `--repeat` runs after a warm-up on 1,000 bars that compiles its
  numba functions: from the same arrays to the same exact signals (`sma_crossover_signals_np`
  on integer cents, moved one bar later so the order of bar ``t`` fills at the open of bar
  ``t + 1``), `Portfolio.from_signals` with size `quantity`, fees 5 bps, long only, and its
  per-bar equity curve `value()`; its orders (bar, side, size, price, and fee to 1e-8) are
  compared with the event engine's fills;
* from signals: the narrower scope, both given the signals already computed: vector's
  `execute_signals` (trades, equity curve and final equity; then again with its `Fill`
  objects built) and vectorbt's `from_signals` alone (its orders; no equity curve), best
  of `--repeat` runs each.

    .venv/bin/python benchmarks/backtest.py [--bars 1000000] [--bt-bars 200000] [--repeat 3]
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
from trading.vector import (
    BarArrays,
    VectorResult,
    execute_signals,
    run_vector_backtest,
    sma_crossover_signals_np,
)

START = datetime(2024, 1, 1, tzinfo=UTC)
PARAMS: dict[str, Any] = {"fast": 10, "slow": 30, "quantity": 1}
FEE_BPS = 5
CAPITAL = 10_000_000


def _with_fills(result: VectorResult) -> VectorResult:
    """Build the result's `Fill` objects (cached on it) and return it."""
    _ = result.fills
    return result


def _timed(label: str, n: int, run: Any, repeat: int = 1) -> tuple[Any, float]:
    """Run `run` `repeat` times; print and return the last result and the best rate."""
    took = float("inf")
    for _ in range(repeat):
        began = time.perf_counter()
        result = run()
        took = min(took, time.perf_counter() - began)
    best = f" (best of {repeat})" if repeat > 1 else ""
    print(f"{label:<21} {n:>9,} bars  {took:8.3f} s  {n / took:>12,.0f} bars/s{best}", end="", flush=True)
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


def _cents(arrays: BarArrays) -> npt.NDArray[np.int64]:
    return np.rint(arrays.close * 10**arrays.decimals).astype(np.int64)


def _entries_exits(arrays: BarArrays) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Return vectorbt's entries and exits: the exact signals, one bar later (fills at the next open)."""
    signals = sma_crossover_signals_np(_cents(arrays), PARAMS["fast"], PARAMS["slow"])
    entries, exits = np.zeros(len(signals), dtype=bool), np.zeros(len(signals), dtype=bool)
    entries[1:], exits[1:] = signals[:-1] > 0, signals[:-1] < 0
    return entries, exits


def _portfolio(vbt: Any, a: BarArrays, entries: npt.NDArray[np.bool_], exits: npt.NDArray[np.bool_]) -> Any:
    return vbt.Portfolio.from_signals(a.close, entries, exits, price=a.open, size=float(PARAMS["quantity"]),
                                      fees=FEE_BPS / 10_000, init_cash=float(CAPITAL), direction="longonly")


def _vectorbt(arrays: BarArrays, repeat: int) -> tuple[list[VbtOrder], float, float] | None:
    """Time vectorbt from the arrays to its orders and its equity curve; None if it is not installed."""
    try:
        import vectorbt as vbt
    except ImportError:
        return None

    def run(a: BarArrays) -> tuple[Any, Any]:
        made = _portfolio(vbt, a, *_entries_exits(a))
        return made, made.value()

    small = BarArrays(arrays.symbol, arrays.ts[:1000], arrays.open[:1000], arrays.close[:1000],
                      arrays.decimals)
    run(small)  # compiles (or loads) its numba functions: not timed
    (made, _), rate = _timed("vectorbt", len(arrays), lambda: run(arrays), repeat)
    trades = [(int(o["idx"]), "buy" if o["side"] == 0 else "sell", float(o["size"]), float(o["price"]),
               float(o["fees"])) for o in made.orders.records_arr]
    return trades, float(made.final_value()), rate


def _vectorbt_from_signals(arrays: BarArrays, repeat: int) -> float:
    """Time `from_signals` alone on signals made beforehand (after `_vectorbt` compiled it)."""
    import vectorbt as vbt

    entries, exits = _entries_exits(arrays)
    _, rate = _timed("vectorbt from signals", len(arrays), lambda: _portfolio(vbt, arrays, entries, exits),
                     repeat)
    print()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bars", type=int, default=1_000_000,
                        help="bars for the event, vector and vectorbt runs")
    parser.add_argument("--bt-bars", type=int, default=200_000, help="bars for backtrader (0: skip)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of vector and vectorbt (best taken)")
    args = parser.parse_args()
    began = time.perf_counter()
    bars = list(SyntheticSource(seed=7).bars(["AAPL"], START, START + timedelta(minutes=args.bars)))
    arrays = BarArrays.from_bars(bars)
    print(f"made {len(bars):,} bars in {time.perf_counter() - began:.1f} s; "
          f"sma_crossover {PARAMS}, fee {FEE_BPS} bps")

    event, event_rate = _timed("event", len(bars), lambda: run_backtest(
        "sma_crossover", PARAMS, bars, capital=CAPITAL, fee_bps=FEE_BPS))
    print(f"  {len(event.fills):,} trades, final equity {event.final_equity}")

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

    def vector_run() -> VectorResult:
        return run_vector_backtest("sma_crossover", PARAMS, arrays, capital=CAPITAL, fee_bps=FEE_BPS)

    vector, vector_rate = _timed("vector", len(bars), vector_run, args.repeat)
    print(f"  {len(vector.trades):,} trades")
    vector, with_fills = _timed("vector + Fill objects", len(bars), lambda: _with_fills(vector_run()),
                                args.repeat)
    same = vector.fills == event.fills and vector.final_equity == event.final_equity
    print(f"  {len(vector.fills):,} fills, identical to event: {same}")
    signals = sma_crossover_signals_np(_cents(arrays), PARAMS["fast"], PARAMS["slow"])

    def vector_from_signals() -> VectorResult:
        return execute_signals(arrays, signals, quantity=PARAMS["quantity"], allow_short=False,
                               capital=CAPITAL, fee_bps=FEE_BPS)

    _, vector_narrow = _timed("vector from signals", len(bars), vector_from_signals, args.repeat)
    print()
    _, narrow_with_fills = _timed("  + Fill objects", len(bars), lambda: _with_fills(vector_from_signals()),
                                  args.repeat)
    print()

    ran_vbt = _vectorbt(arrays, args.repeat)
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
        vbt_narrow = _vectorbt_from_signals(arrays, args.repeat)

    print(f"vector / event: {vector_rate / event_rate:,.1f}x")
    if bt_rate is not None:
        print(f"event / backtrader: {event_rate / bt_rate:,.2f}x (goal >= 20x)")
        print(f"vector / backtrader: {vector_rate / bt_rate:,.1f}x")
    if vbt_rate is not None:
        print(f"vector / vectorbt, arrays to trades and equity curve: {vector_rate / vbt_rate:,.2f}x "
              "(goal >= 1x)")
        print(f"vector + Fill objects / vectorbt, the same: {with_fills / vbt_rate:,.2f}x")
        print(f"vector / vectorbt from signals (vector's with its equity curve, vectorbt's without): "
              f"{vector_narrow / vbt_narrow:,.2f}x")
        print(f"vector + Fill objects / vectorbt from signals, the same: "
              f"{narrow_with_fills / vbt_narrow:,.2f}x")
    print(f"total {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
