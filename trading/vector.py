"""The vectorised fast path: signals computed on whole numpy arrays, then the same fills.

For a strategy whose decisions are a pure function of its bars (`sma_crossover` here),
the signals, the orders, their prices and fees and the equity curve are computed on whole
numpy arrays (`VectorTrades`); the `Fill` objects are built from them on first use
(`VectorResult.fills`). The result is the event-driven backtester's, trade for trade, on
the same bars of one symbol with no open-order interplay (market orders, no latency, no
volume cap):

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

Prices, fees and cash are exact: in int64 multiples of ``10**-k`` (the tick, the fee
quantum) when every product and sum is bounded below ``2**62``, which is also where the
broker's `Decimal` arithmetic is exact, and otherwise with the broker's own `Decimal`
operations, trade by trade.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal, getcontext
from functools import cached_property
from math import gcd
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
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SIDES = np.array([Side.SELL, Side.BUY], dtype=object)

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
ObjectArray = npt.NDArray[np.object_]


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
class VectorTrades:
    """The fills of a vectorised run as arrays, in time order, exact.

    Fill ``i`` is at the open of bar ``bar[i]``, a buy if ``buy[i]``, for ``quantity[i]`` at
    ``price[i]`` with the fee ``fee[i]`` (object arrays of `Decimal`, one object per
    distinct value).
    """

    bar: IntArray
    buy: BoolArray
    quantity: ObjectArray
    price: ObjectArray
    fee: ObjectArray

    def __len__(self) -> int:
        return len(self.bar)


@dataclass(frozen=True)
class VectorResult:
    """What the vectorised path produced: its trades, per-bar equity (float64), exact final equity.

    `fills` makes `Fill` objects of the trades (ids ``<prefix>-<n>:1``, `n` counting the
    orders from 1) on first use: with many trades that is most of a run's time, which a
    caller that needs only the equity or the trade arrays does not spend.
    """

    symbol: str
    capital: Money
    trades: VectorTrades
    ts: IntArray
    equity: npt.NDArray[np.float64]
    final_equity: Money
    prefix: str = "bt"

    @cached_property
    def fills(self) -> list[Fill]:
        """Return the trades as `Fill` objects, equal to `run_backtest`'s."""
        return _fills(self.symbol, self.trades, self.ts, self.prefix)

    @property
    def equity_curve(self) -> list[tuple[datetime, float]]:
        """Return the equity curve as ``(ts, equity)`` points, like `BacktestResult.equity_curve`."""
        return list(zip(_datetimes(self.ts), self.equity.tolist(), strict=True))


def _ns(ts: datetime) -> int:
    delta = ts - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1000


def _datetimes(ns: IntArray) -> list[datetime]:
    """Return the UTC datetimes of epoch nanoseconds (down to the microsecond)."""
    since = (ns // 1000).view("timedelta64[us]").astype(object).tolist()
    return list(map(_EPOCH.__add__, since))


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
    big = max(int(closes.max()), -int(closes.min())) * slow * slow >= _INT64_SAFE
    values = closes.astype(object) if big else closes.astype(np.int64, copy=False)
    prefix = np.zeros(n + 1, dtype=values.dtype)
    np.cumsum(values, out=prefix[1:])
    # diff[j] compares the averages of the windows ending at bar slow - 1 + j
    diff = prefix[slow:] - prefix[slow - fast:n + 1 - fast]
    diff *= slow
    diff -= (prefix[slow:] - prefix[:n + 1 - slow]) * fast
    above, below = diff > 0, diff < 0
    # a cross up: above now and not before; a cross down: below now and not before
    np.subtract((above[1:] > above[:-1]).view(np.int8), (below[1:] > below[:-1]).view(np.int8),
                out=signals[slow:])
    return signals


def _orders(signals: npt.NDArray[Any], allow_short: bool) -> tuple[IntArray, BoolArray,
                                                                   BoolArray]:
    """Return the bars the orders fill on, whether each buys, and whether it flips (twice the size).

    A +1 makes the position `quantity`, a -1 makes it the target (flat or short); an order
    is placed only when the target differs from the position. The position starts flat,
    which is the target of a -1 when long-only, and neither target when shorts are allowed.
    """
    placed = np.flatnonzero(signals[:-1])
    long = signals[placed] > 0
    acts = np.empty(len(long), dtype=bool)
    acts[1:] = long[1:] != long[:-1]
    if len(long):
        acts[0] = bool(long[0]) or allow_short
    flips = np.zeros(int(acts.sum()), dtype=bool)
    if allow_short:
        flips[1:] = True
    return placed[acts] + 1, long[acts], flips


def _scaled(value: Decimal) -> tuple[int, int]:
    """Return ``(m, e)`` with ``value == m * 10**-e`` exactly and ``e >= 0``."""
    sign, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int):
        raise Invalid("the value must be finite", field="value")
    m = int("".join(map(str, digits))) * (-1 if sign else 1)
    return (m * 10**exponent, 0) if exponent >= 0 else (m, -exponent)


@dataclass(frozen=True)
class _Exact:
    """Prices in ticks, fees in ``FEE_QUANTUM`` and cash in ``10**-scale``: int64, exact."""

    ticks: IntArray
    fees: IntArray
    cash: IntArray  # cash after each bar's fill, before marking the position
    scale: int


def _half_even(x: IntArray, d: int) -> IntArray:
    if d == 1:
        return x
    q, r = np.divmod(x, d)
    return q + ((2 * r > d) | ((2 * r == d) & (q % 2 == 1)))


def _exact_ints(bars: BarArrays, at: IntArray, buy: BoolArray, flips: BoolArray, *,
                size: Decimal, cash0: Decimal, fee: Decimal, slip: Decimal,
                tick: Decimal) -> _Exact | None:
    """Compute the fills' prices, fees and the cash exactly in int64; None where that could overflow.

    It also declines opens off the ``10**-decimals`` grid and a `Decimal` context of
    fewer than 28 digits, where `_exact_decimals` (the broker's own arithmetic) applies.
    """
    scale = 10 ** bars.decimals
    opens_f = bars.open[at]
    if getcontext().prec < 28 or bars.decimals > 15 or (
            len(at) and float(np.abs(opens_f).max()) * scale >= 1e15):
        return None
    opens = np.rint(opens_f * scale).astype(np.int64)
    if not np.array_equal(opens / scale, opens_f):
        return None
    (s, s_e), (t, t_e), (q, q_e), (f, f_e), (c, c_e) = map(_scaled, (slip, tick, size, fee, cash0))
    # the slipped price in ticks: open * (10**(s_e + 4) +- s) * 10**shift / t, rounded against the trader
    shift = t_e - bars.decimals - s_e - 4
    up = (10 ** (s_e + 4) + s) * 10 ** max(shift, 0)
    down = (10 ** (s_e + 4) - s) * 10 ** max(shift, 0)
    den = t * 10 ** max(-shift, 0)
    g = gcd(up, down, den)
    up, down, den = up // g, down // g, den // g
    most = int(np.abs(opens).max()) if len(at) else 0
    if max(max(most, 1) * max(abs(up), abs(down)), den) >= _INT64_SAFE:
        return None
    moved = opens * np.where(buy, up, down)
    ticks = np.maximum(np.where(buy, -(-moved // den), moved // den), 1)
    # the fee in FEE_QUANTUM: (1 or 2) * ticks * q * t * f * 10**places, rounded half-even
    places = 8 - q_e - t_e - f_e - 4
    per_tick, fee_den = q * t * f * 10 ** max(places, 0), 10 ** max(-places, 0)
    g = gcd(per_tick, fee_den)
    per_tick, fee_den = per_tick // g, fee_den // g
    # the cash in 10**-cash_e: the capital, less each fill's signed notional and its fee
    cash_e = max(q_e + t_e, 8, c_e)
    notional_per_tick, fee_scale = q * t * 10 ** (cash_e - q_e - t_e), 10 ** (cash_e - 8)
    cash_units = c * 10 ** (cash_e - c_e)
    top = int(ticks.max()) if len(at) else 1
    largest_fee = 2 * per_tick * top // fee_den + 1
    if max(2 * per_tick * top, fee_den, abs(cash_units) + max(len(at), 1) * (
            2 * notional_per_tick * top + largest_fee * fee_scale)) >= _INT64_SAFE:
        return None
    times = np.where(flips, 2, 1)
    fees = _half_even(ticks * times * per_tick, fee_den)
    flows = np.zeros(len(bars), dtype=np.int64)
    flows[at] = -(np.where(buy, times, -times) * ticks * notional_per_tick + fees * fee_scale)
    np.cumsum(flows, out=flows)
    flows += cash_units
    return _Exact(ticks, fees, flows, cash_e)


def _slip(px: Decimal, buy: bool, slippage_bps: Decimal, tick: Decimal) -> Decimal:
    moved = px + bps(px, slippage_bps) if buy else px - bps(px, slippage_bps)
    units = (moved / tick).to_integral_value(rounding=ROUND_CEILING if buy else ROUND_FLOOR)
    return max(tick, units * tick)


def _fills(symbol: str, trades: VectorTrades, ts: IntArray, prefix: str) -> list[Fill]:
    """Build the `Fill` objects of `trades`, ids ``<prefix>-<n>:1``.

    Each `Fill` is filled in directly, without its one-by-one checks: what they check holds
    by construction here (exact finite `Decimal` values, the quantity positive as checked
    by `execute_signals`, prices at least one tick, fees of non-negative rates).
    """
    new, put = object.__new__, object.__setattr__
    out: list[Fill] = []
    add = out.append
    for n, side, qty, px, cost, when in zip(
            range(1, len(trades) + 1), _SIDES[trades.buy.view(np.int8)].tolist(), trades.quantity.tolist(),
            trades.price.tolist(), trades.fee.tolist(), _datetimes(ts[trades.bar]), strict=True):
        fill = new(Fill)
        cid = f"{prefix}-{n}"
        put(fill, "__dict__", {"fill_id": f"{cid}:1", "client_order_id": cid, "symbol": symbol, "side": side,
                               "quantity": qty, "price": px, "fee": cost, "ts": when})
        add(fill)
    return out


def execute_signals(bars: BarArrays, signals: npt.NDArray[Any], *, quantity: Any, allow_short: bool,
                    capital: Any, fee_bps: Any = 0, slippage_bps: Any = 0, tick: Any = "0.01",
                    prefix: str = "bt") -> VectorResult:
    """Turn per-bar signals (+1 be long, -1 be out or short, 0 hold) into trades and equity.

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
    at, buy, flips = _orders(np.asarray(signals), allow_short)
    quantities = _objects([size, size + size])[flips.view(np.int8)]
    exact = _exact_ints(bars, at, buy, flips, size=size, cash0=cash0, fee=fee, slip=slip, tick=step)
    if exact is not None:
        # one Decimal per distinct price and fee; with no flips the fee follows from the price
        ticks, first, at_tick = np.unique(exact.ticks, return_index=True, return_inverse=True)
        prices = _objects([Decimal(v) * step for v in ticks.tolist()])[at_tick]
        quanta, at_fee = (exact.fees[first], at_tick) if not flips.any() else np.unique(
            exact.fees, return_inverse=True)
        fees = _objects([FEE_QUANTUM * v for v in quanta.tolist()])[at_fee]
        cash_curve = exact.cash.astype(np.float64)
        cash_curve /= 10.0**exact.scale
        cash = Decimal(int(exact.cash[-1])).scaleb(-exact.scale) if n else cash0
    else:
        prices, fees, cash, cash_curve = _exact_decimals(bars, at, buy, quantities.tolist(), cash0=cash0,
                                                         fee=fee, slip=slip, tick=step)
    equity = np.zeros(n)  # the position, in units of `size`, then marked to the close
    equity[at] = np.where(buy, 1.0, -1.0) * np.where(flips, 2.0, 1.0)
    np.cumsum(equity, out=equity)
    position = size * int(equity[-1]) if n else ZERO
    equity *= float(size)
    equity *= bars.close
    equity += cash_curve
    final = cash + position * Decimal(repr(float(bars.close[-1]))) if n else cash0
    trades = VectorTrades(at, buy, quantities, prices, fees)
    return VectorResult(bars.symbol, cash0, trades, bars.ts, equity, final, prefix)


def _exact_decimals(bars: BarArrays, at: IntArray, buy: BoolArray, quantities: list[Decimal], *,
                    cash0: Decimal, fee: Decimal, slip: Decimal,
                    tick: Decimal) -> tuple[ObjectArray, ObjectArray, Decimal, npt.NDArray[np.float64]]:
    """Price the fills trade by trade with the broker's `Decimal` operations; return the cash too."""
    prices: list[Decimal] = []
    fees: list[Decimal] = []
    flows = np.zeros(len(bars))
    cash = cash0
    for bar, is_buy, qty in zip(at.tolist(), buy.tolist(), quantities, strict=True):
        px = _slip(Decimal(repr(float(bars.open[bar]))), is_buy, slip, tick)
        cost = bps(qty * px, fee).quantize(FEE_QUANTUM, rounding=ROUND_HALF_EVEN)
        flow = (qty * px if is_buy else -qty * px) + cost
        cash -= flow
        flows[bar] = -float(flow)
        prices.append(px)
        fees.append(cost)
    return _objects(prices), _objects(fees), cash, float(cash0) + np.cumsum(flows)


def _objects(values: Sequence[Any]) -> ObjectArray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


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
    closes = arrays.close * 10**arrays.decimals
    np.rint(closes, out=closes)
    if closes.size and max(float(closes.max()), -float(closes.min())) >= 2 ** 53:
        raise Invalid("prices are too large for exact float arithmetic", field="bars")
    signals = sma_crossover_signals_np(closes.astype(np.int64), int(p.fast), int(p.slow))
    return execute_signals(arrays, signals, quantity=p.quantity, allow_short=bool(p.allow_short),
                           capital=capital, fee_bps=fee_bps, slippage_bps=slippage_bps, tick=tick)
