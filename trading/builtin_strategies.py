"""The built-in strategies and the pure signal functions they use.

Each signal function takes whole series (sequences of Decimals, or numpy arrays) and
returns one action per bar: +1 "be long", -1 "be out (or short, where allowed)", 0 "hold".
The value at bar ``t`` uses bars up to and including ``t`` only, and the arithmetic is
exact (SMA crossover, breakout) or done in a fixed decimal context (RSI), so a vectorised
backtester calling these functions on a whole series gets exactly the trades the
strategies make bar by bar.

Every built-in trades a fixed `quantity` per symbol with market orders, long-only unless
`allow_short`. It places nothing while it has an open order for the symbol, and sizes an
exit to the current position: on -1 it sells the long position (plus `quantity` when it
may go short); on +1 it buys `quantity` plus any short position.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Context, Decimal, localcontext
from typing import Any

import numpy as np
import numpy.typing as npt

from trading.errors import Invalid
from trading.instruments import Bar
from trading.strategy import Param, Strategy, StrategyContext, register
from trading.values import ZERO, to_decimal

Series = Sequence[Any] | npt.NDArray[Any]

_EXACT = Context(prec=80)  # wide enough that sums of prices never round
_RSI_CONTEXT = Context(prec=28, rounding=ROUND_HALF_EVEN)  # fixed, whatever the thread's context
HUNDRED = Decimal(100)


def _decimals(values: Series, field: str) -> list[Decimal]:
    if isinstance(values, np.ndarray):
        if values.ndim != 1:
            raise Invalid(f"{field} must be one-dimensional", field=field)
        values = values.tolist()
    return [to_decimal(float(v) if isinstance(v, float) else v, field=field) for v in values]


def _window(value: Any, field: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise Invalid(f"{field} must be an integer of at least {minimum}", field=field)
    return int(value)


def sma_crossover_signals(closes: Series, fast: int, slow: int) -> list[int]:
    """Return +1 where the fast SMA of `closes` crosses above the slow one, -1 where below, else 0.

    A cross at bar ``t`` means fast > slow at ``t`` and fast <= slow at ``t - 1`` (or the
    reverse), so the first possible signal is at index `slow` (the ``slow + 1``-th bar).
    The comparison is exact: ``sum_fast * slow`` against ``sum_slow * fast``.
    """
    xs = _decimals(closes, "closes")
    fast, slow = _window(fast, "fast", 1), _window(slow, "slow", 2)
    if fast >= slow:
        raise Invalid("fast must be below slow", field="fast")
    signals = [0] * len(xs)
    with localcontext(_EXACT):
        prefix = [ZERO]
        for x in xs:
            prefix.append(prefix[-1] + x)
        previous: Decimal | None = None
        for t in range(slow - 1, len(xs)):
            fast_sum, slow_sum = prefix[t + 1] - prefix[t + 1 - fast], prefix[t + 1] - prefix[t + 1 - slow]
            diff = fast_sum * slow - slow_sum * fast
            if previous is not None:
                if diff > 0 >= previous:
                    signals[t] = 1
                elif diff < 0 <= previous:
                    signals[t] = -1
            previous = diff
    return signals


class WilderRsi:
    """Wilder's RSI, one close at a time.

    The first value comes with the ``period + 1``-th close: the averages start as the
    plain means of the first `period` gains and losses, then smooth as
    ``avg = (avg * (period - 1) + x) / period``. RSI is ``100 - 100 / (1 + gain / loss)``,
    100 when there were no losses, 50 when the price has not moved at all.
    """

    def __init__(self, period: int) -> None:
        self.period = _window(period, "period", 1)
        self._last: Decimal | None = None
        self._count = 0
        self._gain = ZERO  # a sum until `period` changes are seen, then the average
        self._loss = ZERO

    def update(self, close: Decimal) -> Decimal | None:
        """Add the next close; return the RSI after it, or None while warming up."""
        with localcontext(_RSI_CONTEXT):
            last, self._last = self._last, close
            if last is None:
                return None
            change = close - last
            gain, loss = max(change, ZERO), max(-change, ZERO)
            n = self.period
            if self._count < n:
                self._count += 1
                self._gain += gain
                self._loss += loss
                if self._count < n:
                    return None
                self._gain, self._loss = self._gain / n, self._loss / n
            else:
                self._gain = (self._gain * (n - 1) + gain) / n
                self._loss = (self._loss * (n - 1) + loss) / n
            if self._loss == 0:
                return HUNDRED if self._gain > 0 else Decimal(50)
            return HUNDRED - HUNDRED / (1 + self._gain / self._loss)


def wilder_rsi(closes: Series, period: int) -> list[Decimal | None]:
    """Return Wilder's RSI at every bar of `closes` (None for the first `period` bars)."""
    rsi = WilderRsi(period)
    return [rsi.update(x) for x in _decimals(closes, "closes")]


def _rsi_signal(previous: Decimal | None, current: Decimal | None, oversold: Decimal,
                overbought: Decimal) -> int:
    if previous is None or current is None:
        return 0
    if current < oversold <= previous:
        return 1
    if current > overbought >= previous:
        return -1
    return 0


def rsi_signals(closes: Series, period: int, oversold: Any, overbought: Any) -> list[int]:
    """Return +1 where the RSI crosses below `oversold`, -1 where it crosses above `overbought`, else 0."""
    low, high = to_decimal(oversold, field="oversold"), to_decimal(overbought, field="overbought")
    values = wilder_rsi(closes, period)
    return [0] + [_rsi_signal(values[t - 1], values[t], low, high) for t in range(1, len(values))]


def _previous_extremes(values: list[Decimal], lookback: int, highest: bool) -> list[Decimal | None]:
    """Return, for each t, the max (or min) of ``values[t - lookback:t]``; None while t < lookback."""
    result: list[Decimal | None] = [None] * len(values)
    window: deque[int] = deque()  # indices whose values are monotonic (decreasing for max)
    for t in range(len(values)):
        if t >= lookback:
            result[t] = values[window[0]]
        while window and (values[window[-1]] <= values[t] if highest else values[window[-1]] >= values[t]):
            window.pop()
        window.append(t)
        if window[0] <= t - lookback:
            window.popleft()
    return result


def breakout_signals(highs: Series, lows: Series, closes: Series, lookback: int) -> list[int]:
    """Return +1 where the close is above the highest high of the previous `lookback` bars,
    -1 where it is below their lowest low, else 0 (the first `lookback` bars are 0).
    """
    lookback = _window(lookback, "lookback", 1)
    hs, ls, cs = _decimals(highs, "highs"), _decimals(lows, "lows"), _decimals(closes, "closes")
    if not len(hs) == len(ls) == len(cs):
        raise Invalid("highs, lows and closes must have the same length", field="closes")
    top, bottom = _previous_extremes(hs, lookback, True), _previous_extremes(ls, lookback, False)
    signals = [0] * len(cs)
    for t, close in enumerate(cs):
        high, low = top[t], bottom[t]
        if high is not None and close > high:
            signals[t] = 1
        elif low is not None and close < low:
            signals[t] = -1
    return signals


_COMMON = {
    "quantity": Param(Decimal, Decimal(1), min=Decimal(0), min_exclusive=True,
                      description="quantity traded per symbol"),
    "allow_short": Param(bool, False, description="go short on a sell signal instead of only exiting"),
}


class FixedQuantityStrategy(Strategy):
    """Shared order logic of the built-ins: act on a +1 / -1 signal for one symbol."""

    def window(self, ctx: StrategyContext, bar: Bar) -> Sequence[Bar] | None:
        """The last `warmup` bars of the bar's symbol, or None (another symbol, or too few)."""
        if bar.symbol not in self.symbols:
            return None
        bars = ctx.history(bar.symbol, self.warmup)
        return bars if len(bars) >= self.warmup else None

    def trade(self, ctx: StrategyContext, symbol: str, signal: int, why: str) -> str | None:
        """Act on `signal` for `symbol`; return the client order id, or None when nothing was placed."""
        if signal == 0 or ctx.open_orders(symbol):
            return None
        position: Decimal = ctx.position(symbol)
        size: Decimal = self.p.quantity
        if signal > 0:
            if position > 0:
                return None
            ctx.log(f"{self.name} {symbol}: {why}; buying {size - position}")
            return ctx.buy(symbol, size - position)
        target = -size if self.p.allow_short else ZERO
        if position <= target:
            return None
        ctx.log(f"{self.name} {symbol}: {why}; selling {position - target}")
        return ctx.sell(symbol, position - target)


@register
class SmaCrossover(FixedQuantityStrategy):
    name = "sma_crossover"
    description = ("Go long when the fast simple moving average of closes crosses above the slow one; "
                   "exit (or go short, if allowed) when it crosses below.")
    params = {
        "fast": Param(int, 10, min=1, max=1000, description="bars in the fast moving average"),
        "slow": Param(int, 30, min=2, max=5000, description="bars in the slow moving average"),
        **_COMMON,
    }

    def validate(self) -> None:
        if self.p.fast >= self.p.slow:
            raise Invalid(f"params.fast ({self.p.fast}) must be below params.slow ({self.p.slow})",
                          field="params.fast")

    @property
    def warmup(self) -> int:
        return int(self.p.slow) + 1

    def on_bar(self, ctx: StrategyContext, bar: Bar) -> None:
        bars = self.window(ctx, bar)
        if bars is None:
            return
        signal = sma_crossover_signals([b.close for b in bars], self.p.fast, self.p.slow)[-1]
        if signal:
            self.trade(ctx, bar.symbol, signal, "fast SMA crossed " + ("above" if signal > 0 else "below"))


@register
class RsiMeanReversion(FixedQuantityStrategy):
    """Wilder's RSI, kept incrementally per symbol.

    The exit is at the `overbought` crossing (not at 50), which makes the rule symmetric:
    with `allow_short` the same crossing opens a short, and the next crossing below
    `oversold` covers it and goes long. On its first bar for a symbol the strategy seeds
    the RSI from the context's earlier history (up to `warmup` bars), so a live bot started
    with preloaded bars does not wait; a backtest from the first bar matches `rsi_signals`.
    """

    name = "rsi_mean_reversion"
    description = ("Buy when Wilder's RSI crosses below the oversold level; exit (or go short, if allowed) "
                   "when it crosses above the overbought level.")
    params = {
        "period": Param(int, 14, min=2, max=1000, description="RSI period in bars"),
        "oversold": Param(Decimal, Decimal(30), min=Decimal(0), max=HUNDRED,
                          description="buy when the RSI crosses below this"),
        "overbought": Param(Decimal, Decimal(70), min=Decimal(0), max=HUNDRED,
                            description="exit when the RSI crosses above this"),
        **_COMMON,
    }

    def __init__(self, symbols: Sequence[str], **params: Any) -> None:
        super().__init__(symbols, **params)
        self._state: dict[str, tuple[WilderRsi, Decimal | None, datetime]] = {}  # rsi, last value, last ts

    def validate(self) -> None:
        if self.p.oversold >= self.p.overbought:
            raise Invalid(f"params.oversold ({self.p.oversold}) must be below params.overbought "
                          f"({self.p.overbought})", field="params.oversold")

    @property
    def warmup(self) -> int:
        return 10 * int(self.p.period) + 1

    def on_bar(self, ctx: StrategyContext, bar: Bar) -> None:
        if bar.symbol not in self.symbols:
            return
        if bar.symbol in self._state:
            rsi, previous, last_ts = self._state[bar.symbol]
            if bar.ts <= last_ts:  # a bar already seen
                return
        else:
            rsi, previous = WilderRsi(self.p.period), None
            for old in ctx.history(bar.symbol, self.warmup):
                if old.ts < bar.ts:
                    previous = rsi.update(old.close)
        current = rsi.update(bar.close)
        self._state[bar.symbol] = (rsi, current, bar.ts)
        signal = _rsi_signal(previous, current, self.p.oversold, self.p.overbought)
        if signal:
            self.trade(ctx, bar.symbol, signal, f"RSI {current:.2f} crossed "
                       + (f"below {self.p.oversold}" if signal > 0 else f"above {self.p.overbought}"))


@register
class BreakoutStrategy(FixedQuantityStrategy):
    name = "breakout"
    description = ("Buy when the close breaks above the highest high of the previous `lookback` bars; "
                   "exit (or go short, if allowed) when it breaks below their lowest low.")
    params = {
        "lookback": Param(int, 20, min=1, max=5000, description="bars in the channel"),
        **_COMMON,
    }

    @property
    def warmup(self) -> int:
        return int(self.p.lookback) + 1

    def on_bar(self, ctx: StrategyContext, bar: Bar) -> None:
        bars = self.window(ctx, bar)
        if bars is None:
            return
        signal = breakout_signals([b.high for b in bars], [b.low for b in bars],
                                  [b.close for b in bars], self.p.lookback)[-1]
        if signal:
            self.trade(ctx, bar.symbol, signal,
                       "close broke " + ("above the channel" if signal > 0 else "below the channel"))
