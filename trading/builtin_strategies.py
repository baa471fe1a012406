"""The built-in strategies and the pure signal functions they use.

Each signal function takes whole series (sequences of Decimals, or numpy arrays) and
returns one action per bar: +1 "be long", -1 "be out (or short, where allowed)", 0 "hold".
The value at bar ``t`` uses bars up to and including ``t`` only, and the arithmetic is
exact (SMA crossover, breakout) or done in a fixed decimal context (RSI), so a vectorised
backtester calling these functions on a whole series gets exactly the trades the
strategies make bar by bar. The strategies themselves keep each rule incrementally per
symbol (`SmaCross`, `RsiCross`, `Channel`: one close or bar at a time, at a cost that does
not grow with the window), each giving at every bar the value of its signal function.

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
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from trading.errors import Invalid
from trading.instruments import Bar
from trading.strategy import NAME_RE, Param, Strategy, StrategyContext, register
from trading.values import ZERO, to_decimal

Series = Sequence[Any] | npt.NDArray[Any]

_EXACT = Context(prec=80)  # wide enough that sums of prices never round
_RSI_CONTEXT = Context(prec=28, rounding=ROUND_HALF_EVEN)  # fixed, whatever the thread's context
HUNDRED = Decimal(100)
IndicatorT = TypeVar("IndicatorT")


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


class SmaCross:
    """The crossing of a fast and a slow simple moving average, one close at a time.

    `update` gives for each close what `sma_crossover_signals` gives at it, without going
    back over the window. The last `slow` closes are kept as integers, counted in units
    of the finest decimal place seen so far (recounted when a finer one comes), with the
    running sums of the last `fast` and `slow` of them: integer sums are exact, and cheaper
    than Decimal ones in a wide context. The sign of ``fast_sum * slow - slow_sum * fast``
    is compared with the one at the previous close.

    Prices recur, so the count of a close is remembered by its text (up to `MEMO` of them,
    forgotten when the unit changes): ``str`` and a dict lookup cost about half of
    `as_integer_ratio`, and hashing a new `Decimal` itself would cost more than both.
    """

    MEMO = 4096

    def __init__(self, fast: int, slow: int) -> None:
        self.fast, self.slow = _window(fast, "fast", 1), _window(slow, "slow", 2)
        if self.fast >= self.slow:
            raise Invalid("fast must be below slow", field="fast")
        self._unit = 1  # closes are counted in 1/unit; unit is a power of ten
        self._counts: dict[str, int] = {}  # str(close) -> close in 1/unit, for recent closes
        self._closes: deque[int] = deque(maxlen=self.slow)  # the last `slow` closes, in 1/unit
        self._fast_sum = 0
        self._slow_sum = 0
        self._diff: int | None = None  # at the previous close, once there were `slow` closes

    def update(self, close: Decimal) -> int:
        """Add the next close; return +1 on a cross above, -1 on a cross below, else 0."""
        text = str(close)
        units = self._counts.get(text)
        if units is None:
            units = self._count(close, text)
        closes, fast, slow = self._closes, self.fast, self.slow
        if len(closes) == slow:  # both windows slide: their oldest closes leave
            self._fast_sum += units - closes[-fast]
            self._slow_sum += units - closes[0]
            closes.append(units)  # and drops closes[0]
        else:
            closes.append(units)
            self._fast_sum += units
            self._slow_sum += units
            if len(closes) > fast:
                self._fast_sum -= closes[-fast - 1]
            if len(closes) < slow:
                return 0
        diff = self._fast_sum * slow - self._slow_sum * fast
        previous, self._diff = self._diff, diff
        if previous is None:
            return 0
        if diff > 0 >= previous:
            return 1
        if diff < 0 <= previous:
            return -1
        return 0

    def _count(self, close: Decimal, text: str) -> int:
        """Return `close` in 1/unit, refining the unit first if it is too coarse; remember it."""
        numerator, denominator = close.as_integer_ratio()
        if self._unit % denominator:
            self._refine(denominator)
        units = numerator * (self._unit // denominator)
        if len(self._counts) >= self.MEMO:
            self._counts.clear()
        self._counts[text] = units
        return units

    def _refine(self, denominator: int) -> None:
        """Count in units fine enough that ``1 / denominator`` is a whole number of them."""
        factor = 10
        while self._unit * factor % denominator:
            factor *= 10
        self._unit *= factor
        self._counts.clear()
        self._closes = deque((units * factor for units in self._closes), maxlen=self.slow)
        self._fast_sum *= factor
        self._slow_sum *= factor  # the previous diff only lends its sign: it can stay


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


class RsiCross:
    """Wilder's RSI crossing two levels, one close at a time (what `rsi_signals` gives)."""

    def __init__(self, period: int, oversold: Decimal, overbought: Decimal) -> None:
        self._rsi = WilderRsi(period)
        self._oversold, self._overbought = oversold, overbought
        self.value: Decimal | None = None  # the RSI after the last close

    def update(self, close: Decimal) -> int:
        """Add the next close; return +1 on a cross below `oversold`, -1 above `overbought`, else 0."""
        previous, self.value = self.value, self._rsi.update(close)
        return _rsi_signal(previous, self.value, self._oversold, self._overbought)


def rsi_signals(closes: Series, period: int, oversold: Any, overbought: Any) -> list[int]:
    """Return +1 where the RSI crosses below `oversold`, -1 where it crosses above `overbought`, else 0."""
    low, high = to_decimal(oversold, field="oversold"), to_decimal(overbought, field="overbought")
    values = wilder_rsi(closes, period)
    return [0] + [_rsi_signal(values[t - 1], values[t], low, high) for t in range(1, len(values))]


class _Extreme:
    """The largest (or smallest) of the last `size` values added, kept in a monotonic deque."""

    def __init__(self, size: int, *, highest: bool) -> None:
        self._size, self._highest = size, highest
        self._added = 0
        self._window: deque[tuple[int, Decimal]] = deque()  # (number, value); values fall if highest

    @property
    def value(self) -> Decimal:
        """Return the extreme of the window (which must not be empty)."""
        return self._window[0][1]

    def add(self, value: Decimal) -> None:
        """Add the next value; the one `size` values back leaves the window."""
        window, n = self._window, self._added
        while window and (window[-1][1] <= value if self._highest else window[-1][1] >= value):
            window.pop()
        window.append((n, value))
        if window[0][0] <= n - self._size:
            window.popleft()
        self._added = n + 1


class Channel:
    """The highest high and lowest low of the previous `lookback` bars, one bar at a time."""

    def __init__(self, lookback: int) -> None:
        self.lookback = _window(lookback, "lookback", 1)
        self._top = _Extreme(self.lookback, highest=True)
        self._bottom = _Extreme(self.lookback, highest=False)
        self._seen = 0  # bars added, counted up to `lookback`

    def update(self, high: Decimal, low: Decimal, close: Decimal) -> int:
        """Add the next bar; return +1 if its close is above the channel, -1 if below, else 0."""
        signal = 0
        if self._seen < self.lookback:
            self._seen += 1
        elif close > self._top.value:
            signal = 1
        elif close < self._bottom.value:
            signal = -1
        self._top.add(high)
        self._bottom.add(low)
        return signal


def breakout_signals(highs: Series, lows: Series, closes: Series, lookback: int) -> list[int]:
    """Return +1 where the close is above the highest high of the previous `lookback` bars,
    -1 where it is below their lowest low, else 0 (the first `lookback` bars are 0).
    """
    channel = Channel(lookback)
    hs, ls, cs = _decimals(highs, "highs"), _decimals(lows, "lows"), _decimals(closes, "closes")
    if not len(hs) == len(ls) == len(cs):
        raise Invalid("highs, lows and closes must have the same length", field="closes")
    return [channel.update(high, low, close) for high, low, close in zip(hs, ls, cs, strict=True)]


_COMMON = {
    "quantity": Param(Decimal, Decimal(1), min=Decimal(0), min_exclusive=True,
                      description="quantity traded per symbol"),
    "allow_short": Param(bool, False, description="go short on a sell signal instead of only exiting"),
}


class QuantityTrader(Strategy):
    """Turns a +1 / -1 signal into market orders of a fixed `quantity` (see the module's doc)."""

    def trade(self, ctx: StrategyContext, symbol: str, signal: int, why: str) -> str | None:
        """Act on `signal` for `symbol`; return the client order id, or None when nothing was placed."""
        if signal == 0 or ctx.open_orders(symbol):
            return None
        position: Decimal = ctx.position(symbol)
        size: Decimal = self.p["quantity"]  # by key: `.quantity` is a failed lookup, then __getattr__
        if signal > 0:
            if position > 0:
                return None
            ctx.log(f"{self.name} {symbol}: {why}; buying {size - position}")
            return ctx.buy(symbol, size - position)
        target = -size if self.p["allow_short"] else ZERO
        if position <= target:
            return None
        ctx.log(f"{self.name} {symbol}: {why}; selling {position - target}")
        return ctx.sell(symbol, position - target)


class FixedQuantityStrategy(QuantityTrader, Generic[IndicatorT]):
    """Shared logic of the built-ins: one indicator per symbol, fed bar by bar, and the orders.

    A subclass builds the indicator of a symbol (`indicator`), feeds it a bar (`signal`)
    and says why it trades (`why`). On its first bar for a symbol, the indicator is first
    fed the context's earlier history (up to `warmup` bars), so a live bot started with
    preloaded bars does not wait, and a backtest from the first bar gets the signal
    functions' values; a bar whose ts is not after the last one seen for its symbol is
    ignored.
    """

    def __init__(self, symbols: Sequence[str], **params: Any) -> None:
        super().__init__(symbols, **params)
        self._indicators: dict[str, IndicatorT] = {}
        self._last_ts: dict[str, datetime] = {}

    def indicator(self) -> IndicatorT:
        """Return a new indicator for one symbol."""
        raise NotImplementedError

    def signal(self, indicator: IndicatorT, bar: Bar) -> int:
        """Feed `bar` to `indicator`; return its +1 / -1 / 0."""
        raise NotImplementedError

    def why(self, indicator: IndicatorT, signal: int) -> str:
        """Say why `signal` came, for the log."""
        raise NotImplementedError

    def on_bar(self, ctx: StrategyContext, bar: Bar) -> None:
        symbol = bar.symbol
        last = self._last_ts.get(symbol)
        if last is None:
            if symbol not in self.symbols:
                return
            indicator = self._indicators[symbol] = self.indicator()
            for old in ctx.history(symbol, self.warmup):
                if old.ts < bar.ts:
                    self.signal(indicator, old)
        elif bar.ts <= last:  # a bar already seen
            return
        else:
            indicator = self._indicators[symbol]
        self._last_ts[symbol] = bar.ts
        signal = self.signal(indicator, bar)
        if signal:
            self.trade(ctx, symbol, signal, self.why(indicator, signal))


@register
class SmaCrossover(FixedQuantityStrategy[SmaCross]):
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

    def indicator(self) -> SmaCross:
        return SmaCross(self.p.fast, self.p.slow)

    def signal(self, indicator: SmaCross, bar: Bar) -> int:
        return indicator.update(bar.close)

    def why(self, indicator: SmaCross, signal: int) -> str:
        return "fast SMA crossed " + ("above" if signal > 0 else "below")


@register
class RsiMeanReversion(FixedQuantityStrategy[RsiCross]):
    """Wilder's RSI, kept incrementally per symbol.

    The exit is at the `overbought` crossing (not at 50), which makes the rule symmetric:
    with `allow_short` the same crossing opens a short, and the next crossing below
    `oversold` covers it and goes long.
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

    def validate(self) -> None:
        if self.p.oversold >= self.p.overbought:
            raise Invalid(f"params.oversold ({self.p.oversold}) must be below params.overbought "
                          f"({self.p.overbought})", field="params.oversold")

    @property
    def warmup(self) -> int:
        return 10 * int(self.p.period) + 1

    def indicator(self) -> RsiCross:
        return RsiCross(self.p.period, self.p.oversold, self.p.overbought)

    def signal(self, indicator: RsiCross, bar: Bar) -> int:
        return indicator.update(bar.close)

    def why(self, indicator: RsiCross, signal: int) -> str:
        return f"RSI {indicator.value:.2f} crossed " + (
            f"below {self.p.oversold}" if signal > 0 else f"above {self.p.overbought}")


@register
class BreakoutStrategy(FixedQuantityStrategy[Channel]):
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

    def indicator(self) -> Channel:
        return Channel(self.p.lookback)

    def signal(self, indicator: Channel, bar: Bar) -> int:
        return indicator.update(bar.high, bar.low, bar.close)

    def why(self, indicator: Channel, signal: int) -> str:
        return "close broke " + ("above the channel" if signal > 0 else "below the channel")


@register
class ModelSignal(QuantityTrader):
    """Trade on a tenant model's scores (`Strategy.uses_model`).

    At each bar the model's score for it decides: at or above `enter` be long, at or below
    `exit` be out (or short, with `allow_short`), in between hold. For a ``direction``
    model the score is the probability of a rise (the defaults suit it); for a ``return``
    model it is the expected log return over the label's horizon, so the thresholds are
    small numbers around zero. The scores come from the engine: computed in-process from
    the backtest's bars, or asked of the model endpoint bar by bar in a live bot. A bar
    with no score (too little history for the model) places nothing.
    """

    name = "model_signal"
    description = ("Trade on the tenant's model: be long while its score is at or above `enter`, exit "
                   "(or go short, if allowed) when it falls to `exit` or below.")
    uses_model = True
    params = {
        "model": Param(str, "", description="the name of the tenant's model"),
        "version": Param(int, 0, min=0, description="the model version; 0: the production version "
                         "(fixed when the bot starts or the backtest is submitted)"),
        "enter": Param(float, 0.55, description="be long when the score is at or above this"),
        "exit": Param(float, 0.45, description="exit (or go short) when the score is at or below this"),
        **_COMMON,
    }

    def validate(self) -> None:
        if not NAME_RE.fullmatch(self.p.model):
            raise Invalid("params.model must name a model (lower-case letters, digits and _, starting "
                          "with a letter)", field="params.model")
        if self.p.exit >= self.p.enter:
            raise Invalid(f"params.exit ({self.p.exit}) must be below params.enter ({self.p.enter})",
                          field="params.exit")

    def on_bar(self, ctx: StrategyContext, bar: Bar) -> None:
        if self.predictions is None:
            raise RuntimeError("model_signal has no predictions: it runs in the platform's backtests and "
                               "bots, which supply its model's scores")
        if bar.symbol not in self.symbols:
            return
        score = self.predictions.score(bar.symbol, bar.ts)
        if score is None:
            return
        signal = 1 if score >= self.p.enter else -1 if score <= self.p.exit else 0
        if signal:
            self.trade(ctx, bar.symbol, signal, f"model {self.p.model} scored {score:.4f}")
