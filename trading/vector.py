"""The vectorised fast path: signals computed on whole numpy arrays, then the same fills.

For a strategy whose decisions are a pure function of its bars (`sma_crossover` here),
the signals are computed at once with numpy, and only the bars that trade are touched one
by one. The result is the event-driven backtester's, trade for trade, on the same bars of
one symbol with no open-order interplay (market orders, no latency, no volume cap):

* the signal at bar ``t`` is that of `trading.builtin_strategies.sma_crossover_signals`,
  computed exactly on integer prices (prices times ``10**decimals``), in int64 when the
  sums cannot overflow and in Python integers otherwise;
* the strategy acts on a signal only when it changes what it holds (a +1 when long, a -1
  when flat and long-only, and repeats are ignored), sizing the order as
  `FixedQuantityStrategy.trade` does: ``quantity - position`` to buy, ``position - target`` to sell;
* the order placed on bar ``t`` fills on bar ``t + 1`` at its open, moved by the slippage
  and rounded to the tick against the trader (as `PaperBroker` does), with the fee
  ``fee_bps`` of the notional rounded half-even to 8 decimal places; an order placed on
  the last bar never fills;
* equity is marked at each bar's close, as ``cash + position * close`` (float64 for the
  curve, exact `Decimal` for the final value).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal
from typing import Any

import numpy as np
import numpy.typing as npt

from trading.broker import FEE_QUANTUM
from trading.errors import Invalid
from trading.instruments import Bar, validate_symbol
from trading.orders import Fill, Side
from trading.strategy import get_strategy
from trading.values import ZERO, Money, bps, money, non_negative, price
from trading.values import quantity as to_quantity

_INT64_SAFE = 2 ** 62


@dataclass(frozen=True)
class BarArrays:
    """The bars of one symbol as arrays: `ts` in epoch nanoseconds (int64), prices float64.

    Every price must be a multiple of ``10**-decimals`` (the float is converted back to a
    Decimal through its shortest repr, which is exact for such prices).
    """

    symbol: str
    ts: npt.NDArray[np.int64]
    open: npt.NDArray[np.float64]
    close: npt.NDArray[np.float64]
    decimals: int = 2

    def __post_init__(self) -> None:
        validate_symbol(self.symbol)
        n = len(self.ts)
        if len(self.open) != n or len(self.close) != n:
            raise Invalid("ts, open and close must have the same length", field="bars")
        if n > 1 and not bool(np.all(np.diff(self.ts) > 0)):
            raise Invalid("bars must be in strictly increasing time order", field="bars")
        if self.decimals < 0:
            raise Invalid("decimals must not be negative", field="decimals")

    @classmethod
    def from_bars(cls, bars: Sequence[Bar]) -> BarArrays:
        """Convert bars of a single symbol; `decimals` is the most any of their prices has."""
        if not bars:
            raise Invalid("there are no bars to backtest", field="bars")
        symbol = bars[0].symbol
        if any(b.symbol != symbol for b in bars):
            raise Invalid("the vectorised path takes the bars of one symbol", field="bars")
        places = max(max(0, -int(p.as_tuple().exponent)) for b in bars for p in (b.open, b.close))
        return cls(symbol, np.array([_ns(b.ts) for b in bars], dtype=np.int64),
                   np.array([float(b.open) for b in bars]), np.array([float(b.close) for b in bars]),
                   decimals=places)

    def __len__(self) -> int:
        return len(self.ts)


@dataclass(frozen=True)
class VectorResult:
    """What the vectorised path produced: fills, per-bar equity (float64), exact final equity."""

    symbol: str
    capital: Money
    fills: list[Fill]
    ts: npt.NDArray[np.int64]
    equity: npt.NDArray[np.float64]
    final_equity: Money

    @property
    def equity_curve(self) -> list[tuple[datetime, float]]:
        """Return the equity curve as ``(ts, equity)`` points, like `BacktestResult.equity_curve`."""
        return [(datetime.fromtimestamp(int(t) // 10**9, UTC).replace(microsecond=int(t) % 10**9 // 1000),
                 float(e)) for t, e in zip(self.ts, self.equity, strict=True)]


def _ns(ts: datetime) -> int:
    delta = ts - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1000


def sma_crossover_signals_np(closes: npt.NDArray[Any], fast: int, slow: int) -> npt.NDArray[np.int8]:
    """Return `sma_crossover_signals` of integer `closes` (+1, -1 or 0 per bar), vectorised.

    `closes` must hold integers (prices in their smallest unit) so the comparison of
    ``sum_fast * slow`` with ``sum_slow * fast`` is exact.
    """
    if fast < 1 or slow < 2 or fast >= slow:
        raise Invalid("fast must be at least 1 and below slow (at least 2)", field="fast")
    n = len(closes)
    signals = np.zeros(n, dtype=np.int8)
    if n <= slow:
        return signals
    big = int(np.abs(closes).max()) * slow * slow >= _INT64_SAFE
    values = closes.astype(object) if big else closes.astype(np.int64)
    prefix = np.concatenate([np.zeros(1, dtype=values.dtype), np.cumsum(values)])
    t = np.arange(slow - 1, n)
    diff = (prefix[t + 1] - prefix[t + 1 - fast]) * slow - (prefix[t + 1] - prefix[t + 1 - slow]) * fast
    current, previous = diff[1:], diff[:-1]
    up = np.asarray((current > 0) & (previous <= 0), dtype=bool)
    down = np.asarray((current < 0) & (previous >= 0), dtype=bool)
    signals[slow:] = up.astype(np.int8) - down.astype(np.int8)
    return signals


def _slip(px: Decimal, buy: bool, slippage_bps: Decimal, tick: Decimal) -> Decimal:
    moved = px + bps(px, slippage_bps) if buy else px - bps(px, slippage_bps)
    units = (moved / tick).to_integral_value(rounding=ROUND_CEILING if buy else ROUND_FLOOR)
    return max(tick, units * tick)


def execute_signals(bars: BarArrays, signals: npt.NDArray[Any], *, quantity: Any, allow_short: bool,
                    capital: Any, fee_bps: Any = 0, slippage_bps: Any = 0, tick: Any = "0.01",
                    prefix: str = "bt") -> VectorResult:
    """Turn per-bar signals (+1 be long, -1 be out or short, 0 hold) into fills and equity.

    Orders follow `FixedQuantityStrategy.trade` and fill at the next bar's open (see the
    module docstring). Fill ids are ``<prefix>-<n>:1``, `n` counting the orders from 1, as
    `run_backtest` makes them.
    """
    size = to_quantity(quantity, field="quantity")
    cash0 = money(capital, field="capital")
    fee, slip = non_negative(fee_bps, field="fee_bps"), non_negative(slippage_bps, field="slippage_bps")
    step = price(tick, field="tick")
    n = len(bars)
    if len(signals) != n:
        raise Invalid("signals must have one value per bar", field="signals")
    nonzero = np.flatnonzero(np.asarray(signals[: max(n - 1, 0)]))
    fills: list[Fill] = []
    position, cash = ZERO, cash0
    target_short = -size if allow_short else ZERO
    qty_float = np.zeros(n)
    cash_float = np.zeros(n)
    for t in nonzero.tolist():
        want = int(signals[t])
        if want > 0:
            if position > 0:
                continue
            side, qty = Side.BUY, size - position
        else:
            if position <= target_short:
                continue
            side, qty = Side.SELL, position - target_short
        px = _slip(Decimal(repr(float(bars.open[t + 1]))), side is Side.BUY, slip, step)
        cost = bps(qty * px, fee).quantize(FEE_QUANTUM, rounding=ROUND_HALF_EVEN)
        cid = f"{prefix}-{len(fills) + 1}"
        ns = int(bars.ts[t + 1])
        when = datetime.fromtimestamp(ns // 10**9, UTC).replace(microsecond=ns % 10**9 // 1000)
        fills.append(Fill(fill_id=f"{cid}:1", client_order_id=cid, symbol=bars.symbol, side=side,
                          quantity=qty, price=px, fee=cost, ts=when))
        signed = qty * side.sign
        position += signed
        cash -= signed * px + cost
        qty_float[t + 1] += float(signed)
        cash_float[t + 1] -= float(signed * px + cost)
    held = np.cumsum(qty_float)
    equity = float(cash0) + np.cumsum(cash_float) + held * bars.close
    final = cash + position * Decimal(repr(float(bars.close[-1]))) if n else cash0
    return VectorResult(bars.symbol, cash0, fills, bars.ts, equity, final)


def run_vector_backtest(strategy: str, params: Mapping[str, Any], bars: BarArrays | Sequence[Bar], *,
                        capital: Any, fee_bps: Any = 0, slippage_bps: Any = 0,
                        tick: Any = "0.01") -> VectorResult:
    """Backtest `strategy` (only ``sma_crossover``) vectorised on the bars of one symbol.

    `params` are checked by the strategy class itself, so the same ones as `run_backtest`
    take; `tick` is the instrument's price tick used to round slipped prices.
    """
    arrays = bars if isinstance(bars, BarArrays) else BarArrays.from_bars(bars)
    cls = get_strategy(strategy)
    if cls.name != "sma_crossover":
        raise Invalid(f"strategy {cls.name!r} has no vectorised path; known: sma_crossover",
                      field="strategy")
    p = cls([arrays.symbol], **dict(params)).p
    scale = 10 ** arrays.decimals
    closes = np.rint(arrays.close * scale)
    if closes.size and float(np.abs(closes).max()) >= 2 ** 53:
        raise Invalid("prices are too large for exact float arithmetic", field="bars")
    signals = sma_crossover_signals_np(closes.astype(np.int64), int(p.fast), int(p.slow))
    return execute_signals(arrays, signals, quantity=p.quantity, allow_short=bool(p.allow_short),
                           capital=capital, fee_bps=fee_bps, slippage_bps=slippage_bps, tick=tick)
