"""The event-driven backtester: a live `Strategy`, unchanged, against historical bars.

`run_backtest` replays bars through a `BacktestContext` (the backtest's `StrategyContext`),
the `PaperBroker` and a `Portfolio`, exactly as a live bot would see them:

* Bars are processed in time steps: all bars sharing a ``ts`` form one step, taken in
  symbol order. Bars must arrive in (ts, symbol) order; `merge_bars` merges per-symbol
  streams into that order, and an out-of-order bar raises `Invalid` (corrupt data fails fast).
* For each bar of a step: the bar joins its symbol's history, the broker executes the open
  orders of that symbol against it (so an order placed on bar ``t`` fills on the next bar of
  its symbol at the earliest: no look-ahead), the portfolio marks the close, then the
  strategy's `on_bar` runs. After the step the equity is recorded (one curve point per bar
  time) and, with risk limits, handed to the `RiskEngine` (daily loss, drawdown kill switch).
* With `risk_limits`, every new order is checked by `RiskEngine.check` first; a refused
  order is REJECTED with the risk reason and never reaches the broker.
* After the last bar `on_stop` runs and the orders still open are canceled.

Client order ids are ``bt-<n>``, `n` counting the backtest's orders from 1.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from itertools import chain, islice
from typing import Any, NoReturn

from trading.broker import Expiry, PaperBroker
from trading.data import DEFAULT_INSTRUMENTS, DEFAULT_TICK
from trading.errors import Invalid
from trading.instruments import Bar, Instrument
from trading.orders import Fill, Order, OrderStatus
from trading.portfolio import Portfolio
from trading.risk import RiskEngine, RiskLimits
from trading.strategy import Predictions, Strategy, get_strategy
from trading.values import Money, money, non_negative

DEFAULT_LOT = Decimal("0.00000001")  # lot of a symbol without a known instrument
END_REASON = "end_of_backtest"
# Members as globals: see `trading.orders.LIMIT_TYPES` on why.
_ACCEPTED, _REJECTED, _FILLED = OrderStatus.ACCEPTED, OrderStatus.REJECTED, OrderStatus.FILLED


@dataclass(frozen=True)
class BacktestResult:
    """What a backtest produced.

    `fills` are the trades in execution order; `orders` every order placed, in placement
    order, in its final state; `equity_curve` one ``(ts, equity)`` point per bar time,
    equity marked at the step's closes; `rejections` the ``(ts, client_order_id, reason)``
    of orders refused by the risk limits; `risk_events` what the risk engine reported
    (halts, kill switch) as ``(ts, kind, message)``; `logs` the strategy's ``(ts, message)``.
    """

    strategy: str
    params: dict[str, Any]
    symbols: tuple[str, ...]
    capital: Money
    fills: list[Fill]
    orders: list[Order]
    equity_curve: list[tuple[datetime, Money]]
    final_equity: Money
    rejections: list[tuple[datetime, str, str]] = field(default_factory=list)
    risk_events: list[tuple[datetime, str, str]] = field(default_factory=list)
    logs: list[tuple[datetime, str]] = field(default_factory=list)


def default_instrument(symbol: str) -> Instrument:
    """Return the platform's default instrument for `symbol` (tick 0.01, fine lot if unknown)."""
    known = DEFAULT_INSTRUMENTS.get(symbol)
    return known if known is not None else Instrument(symbol, DEFAULT_TICK, DEFAULT_LOT)


def merge_bars(*streams: Iterable[Bar]) -> Iterable[Bar]:
    """Merge streams each in time order (e.g. one per symbol) into one ordered by (ts, symbol)."""
    return heapq.merge(*streams, key=lambda b: (b.ts, b.symbol))


class BacktestContext:
    """The `StrategyContext` of a backtest: orders go to the engine at once, time is the bar's.

    It reads the engine's state (the clock, each symbol's recent bars, the portfolio, the
    open orders), which the engine's bar loop keeps.
    """

    def __init__(self, engine: _Engine) -> None:
        self._engine = engine

    @property
    def now(self) -> datetime:
        return self._engine.now

    @property
    def cash(self) -> Decimal:
        return self._engine.portfolio.cash

    @property
    def equity(self) -> Decimal:
        return self._engine.portfolio.equity

    def buy(self, symbol: str, quantity: Decimal, *, type: str = "market",
            limit_price: Decimal | None = None, stop_price: Decimal | None = None,
            time_in_force: str = "gtc") -> str:
        return self._engine.place("buy", symbol, quantity, type, limit_price, stop_price, time_in_force)

    def sell(self, symbol: str, quantity: Decimal, *, type: str = "market",
             limit_price: Decimal | None = None, stop_price: Decimal | None = None,
             time_in_force: str = "gtc") -> str:
        return self._engine.place("sell", symbol, quantity, type, limit_price, stop_price, time_in_force)

    def cancel(self, client_order_id: str) -> None:
        """Cancel an open order; an id that is not open is logged and ignored."""
        self._engine.cancel(client_order_id)

    def position(self, symbol: str) -> Decimal:
        return self._engine.portfolio.position(symbol).quantity

    def last_price(self, symbol: str) -> Decimal | None:
        bars = self._engine.history.get(symbol)
        return bars[-1].close if bars else None

    def history(self, symbol: str, n: int) -> Sequence[Bar]:
        bars = self._engine.history.get(symbol)
        if not bars or n <= 0:
            return []
        return list(bars) if n >= len(bars) else list(islice(bars, len(bars) - n, None))

    def open_orders(self, symbol: str | None = None) -> Sequence[str]:
        orders = self._engine.open
        if not orders:
            return []
        return [cid for cid, o in orders.items() if symbol is None or o.symbol == symbol]

    def log(self, message: str) -> None:
        engine = self._engine
        engine.logs.append((engine.now, str(message)))


class _Engine:
    """One backtest's state (strategy, broker, portfolio, optional risk engine) and its bar loop."""

    def __init__(self, strategy: Strategy, instruments: Mapping[str, Instrument], capital: Money,
                 fee_bps: Decimal, slippage_bps: Decimal, risk_limits: RiskLimits | None) -> None:
        self.strategy = strategy
        self.instruments = dict(instruments)
        self.portfolio = Portfolio(capital)
        self.broker = PaperBroker(self.instruments, fee_bps=fee_bps, slippage_bps=slippage_bps)
        self.risk = None if risk_limits is None else RiskEngine(risk_limits)
        self.now = datetime(1970, 1, 1, tzinfo=UTC)  # the current time step
        self.history: dict[str, deque[Bar]] = {}  # each symbol's last bars, oldest first
        self.depth = max(strategy.warmup + 1, 2)  # how many bars `history` keeps per symbol
        self.ctx = BacktestContext(self)
        self.orders: list[Order] = []
        self.open: dict[str, Order] = {}
        self.fills: list[Fill] = []
        self.curve: list[tuple[datetime, Money]] = []
        self.rejections: list[tuple[datetime, str, str]] = []
        self.risk_events: list[tuple[datetime, str, str]] = []
        self.logs: list[tuple[datetime, str]] = []
        self._count = 0

    def replay(self, bars: Iterable[Bar]) -> datetime | None:
        """Run `bars` through the engine (see the module docstring); return the last step's ts.

        The per-bar work is written out in this loop rather than split into small methods:
        it runs once per bar, a million times in a long backtest, where each call saved
        shows. `on_start` runs once the clock shows the first bar's time.
        """
        stream = iter(bars)
        first = next(stream, None)
        if first is None:
            return None
        strategy, ctx, portfolio, history = self.strategy, self.ctx, self.portfolio, self.history
        curve, risk = self.curve, self.risk
        mark = portfolio.marker()
        traded = frozenset(strategy.symbols)
        now = self.now = first.ts  # the current step's ts
        strategy.on_start(ctx)
        symbol = ""  # the last bar's symbol
        for bar in chain((first,), stream):
            ts = bar.ts
            if ts > now:  # the step `now` is over: `end_step(now)`, written out
                equity = portfolio.equity
                curve.append((now, equity))
                if risk is not None:
                    self._watch(risk, equity, now)
                now = self.now = ts
            elif ts < now or bar.symbol <= symbol:
                _out_of_order(bar, now, symbol)
            symbol = bar.symbol
            recent = history.get(symbol)
            if recent is None:
                recent = history[symbol] = deque(maxlen=self.depth)
            recent.append(bar)
            if self.open:
                self._execute(bar)
            mark(symbol, bar.close)
            if symbol in traded:
                strategy.on_bar(ctx, bar)
        return now

    def end_step(self, ts: datetime) -> None:
        """Record the equity of the step `ts` and, with risk limits, hand it to the risk engine."""
        equity = self.portfolio.equity
        self.curve.append((ts, equity))
        if self.risk is not None:
            self._watch(self.risk, equity, ts)

    def _watch(self, risk: RiskEngine, equity: Money, ts: datetime) -> None:
        """Hand the step's equity to the risk engine; keep what it reports."""
        for event in risk.on_equity(equity, ts):
            self.risk_events.append((ts, event.kind, event.message))

    def place(self, side: str, symbol: str, quantity: Decimal, type_: str, limit_price: Decimal | None,
              stop_price: Decimal | None, tif: str) -> str:
        self._count += 1
        cid = f"bt-{self._count}"
        now = self.now
        order = Order.new(client_order_id=cid, symbol=symbol, side=side, type=type_, quantity=quantity,
                          limit_price=limit_price, stop_price=stop_price, time_in_force=tif,
                          created_at=now)
        self.orders.append(order)
        reason = self._refusal(order)
        if reason is not None:
            order._move(_REJECTED, reason)  # a backtest keeps no order events
            self.rejections.append((now, cid, reason))
            return cid
        order._move(_ACCEPTED)
        self.open[cid] = order
        self.broker.submit(order, now, adopt=True)  # the broker books its fills and expiries
        return cid

    def _refusal(self, order: Order) -> str | None:
        instrument = self.instruments.get(order.symbol)
        if instrument is None:
            return f"unknown symbol {order.symbol}"
        try:
            instrument.check_order(order.quantity, order.limit_price)
            if order.stop_price is not None:
                instrument.check_order(order.quantity, order.stop_price)
        except Invalid as exc:
            return exc.message
        if self.risk is None:
            return None
        decision = self.risk.check(order, position=self.portfolio.position(order.symbol).quantity,
                                   gross_exposure=self.portfolio.gross_exposure,
                                   open_orders=len(self.open),
                                   last_price=self.ctx.last_price(order.symbol), now=self.now)
        if decision.accepted:
            return None
        return f"{decision.reason}: {decision.message}" if decision.reason else decision.message

    def cancel(self, client_order_id: str) -> None:
        if client_order_id not in self.open:
            self.ctx.log(f"cancel ignored: {client_order_id} is not an open order")
            return
        expiry = self.broker.cancel(client_order_id, self.now)
        if expiry is not None:
            self._end(expiry)

    def _execute(self, bar: Bar) -> None:
        """Let the broker execute the open orders against `bar`; book what happened."""
        for event in self.broker.on_bar(bar):
            if isinstance(event, Expiry):
                self._end(event)
            else:
                self._fill(event)

    # The broker adopted the orders: a fill or an expiry it reports is on the order already.

    def _fill(self, fill: Fill) -> None:
        self.portfolio.apply_fill(fill)
        self.fills.append(fill)
        if self.open[fill.client_order_id].status is _FILLED:  # not when an IOC expiry follows
            del self.open[fill.client_order_id]
        self.strategy.on_fill(self.ctx, fill)

    def _end(self, expiry: Expiry) -> None:
        del self.open[expiry.client_order_id]


def run_backtest(strategy: str, params: Mapping[str, Any], bars: Iterable[Bar], *, capital: Any,
                 fee_bps: Any = 0, slippage_bps: Any = 0, risk_limits: RiskLimits | None = None,
                 symbols: Sequence[str] | None = None,
                 instruments: Mapping[str, Instrument] | None = None,
                 predictions: Predictions | None = None) -> BacktestResult:
    """Run the registered `strategy` with `params` over `bars`; return its `BacktestResult`.

    `bars` must be in (ts, symbol) order (see `merge_bars`). The strategy trades `symbols`
    (default: every symbol of `bars`, sorted); `instruments` defaults to `default_instrument`.
    `capital` is the starting cash; `fee_bps` and `slippage_bps` go to the `PaperBroker`.
    A strategy that `uses_model` needs the model's `predictions` for these bars.
    Raise `Invalid` for a bad strategy, parameters or settings, or bars out of order.
    """
    cost = money(capital, field="capital")
    if cost <= 0:
        raise Invalid("capital must be positive", field="capital")
    fee, slip = non_negative(fee_bps, field="fee_bps"), non_negative(slippage_bps, field="slippage_bps")
    cls = get_strategy(strategy)
    stream: Iterable[Bar] = bars
    if symbols is None:
        stream = list(bars)
        symbols = sorted({b.symbol for b in stream})
        if not symbols:
            raise Invalid("there are no bars to backtest", field="bars")
    live = cls(list(symbols), **dict(params))
    if cls.uses_model:
        if predictions is None:
            raise Invalid(f"strategy {cls.name} needs its model's predictions", field="strategy")
        live.use_predictions(predictions)
    known = dict(instruments or {})
    for symbol in symbols:
        known.setdefault(symbol, default_instrument(symbol))
    engine = _Engine(live, known, cost, fee, slip, risk_limits)
    now = engine.replay(stream)
    if now is None:
        raise Invalid("there are no bars to backtest", field="bars")
    engine.end_step(now)
    live.on_stop(engine.ctx)
    for cid in list(engine.open):
        if engine.broker.cancel(cid, now, reason=END_REASON) is not None:
            del engine.open[cid]
    return BacktestResult(strategy=cls.name, params=dict(live.p), symbols=live.symbols, capital=cost,
                          fills=engine.fills, orders=engine.orders, equity_curve=engine.curve,
                          final_equity=engine.portfolio.equity, rejections=engine.rejections,
                          risk_events=engine.risk_events, logs=engine.logs)


def _out_of_order(bar: Bar, now: datetime, symbol: str) -> NoReturn:
    raise Invalid(f"bars must be in (ts, symbol) order: {bar.symbol} at {bar.ts.isoformat()} "
                  f"comes after {symbol} at {now.isoformat()}", field="bars")
