"""`LocalContext`: the `trading.strategy.StrategyContext` of a bot running in the agent.

Unlike the platform's live context, nothing waits for a risk gate in another process:
an order the strategy places is recorded and handed to the paper broker at once (by the
`place` callback its bot supplies), and so is a cancel.

Client order ids are ``<prefix>-<bar epoch seconds>-<n>``, `n` counting the bot's orders
within one bar time from 1 (over all of the bot's symbols and hooks), so a bar replayed
after a restart makes the same ids; the count is saved with the bot's state, so an order
placed by `on_start` or `on_stop` never repeats an id either.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal

from trading.instruments import Bar
from trading.orders import Order
from trading.portfolio import Portfolio


class LocalContext:
    """What a local strategy can see and do (implements `StrategyContext`)."""

    def __init__(self, *, prefix: str, portfolio: Portfolio, history: int,
                 place: Callable[[Order], None], cancel: Callable[[str], None],
                 open_orders: Callable[[str | None], list[str]], log: Callable[[str], None]) -> None:
        """Trade through the callbacks of the bot that owns `portfolio`."""
        self._prefix = prefix
        self._portfolio = portfolio
        self._history = max(history, 2)
        self._place, self._cancel, self._open, self._log = place, cancel, open_orders, log
        self._bars: dict[str, deque[Bar]] = {}
        self._now = datetime.now(UTC)
        self._count = 0

    # -- the StrategyContext protocol ---------------------------------------------------

    @property
    def now(self) -> datetime:
        return self._now

    @property
    def cash(self) -> Decimal:
        return self._portfolio.cash

    @property
    def equity(self) -> Decimal:
        return self._portfolio.equity

    def buy(self, symbol: str, quantity: Decimal, *, type: str = "market",
            limit_price: Decimal | None = None, stop_price: Decimal | None = None,
            time_in_force: str = "gtc") -> str:
        return self._order("buy", symbol, quantity, type, limit_price, stop_price, time_in_force)

    def sell(self, symbol: str, quantity: Decimal, *, type: str = "market",
             limit_price: Decimal | None = None, stop_price: Decimal | None = None,
             time_in_force: str = "gtc") -> str:
        return self._order("sell", symbol, quantity, type, limit_price, stop_price, time_in_force)

    def cancel(self, client_order_id: str) -> None:
        """Cancel one of this bot's open orders; an id it does not hold open is logged and ignored."""
        if client_order_id not in self._open(None):
            self.log(f"cancel ignored: {client_order_id} is not an open order of this bot")
            return
        self._cancel(client_order_id)

    def position(self, symbol: str) -> Decimal:
        return self._portfolio.position(symbol).quantity

    def last_price(self, symbol: str) -> Decimal | None:
        bars = self._bars.get(symbol)
        return bars[-1].close if bars else None

    def history(self, symbol: str, n: int) -> Sequence[Bar]:
        return list(self._bars.get(symbol, ()))[-n:] if n > 0 else []

    def open_orders(self, symbol: str | None = None) -> Sequence[str]:
        return self._open(symbol)

    def log(self, message: str) -> None:
        self._log(message)

    # -- the bot's side -----------------------------------------------------------------

    def begin(self, ts: datetime) -> None:
        """Start the time step `ts`: the clock moves and the order count restarts."""
        if ts != self._now:
            self._count = 0
        self._now = ts

    def counter(self) -> tuple[datetime, int]:
        """Return the current step's time and how many orders were placed in it."""
        return self._now, self._count

    def restore_counter(self, ts: datetime, count: int) -> None:
        """Continue a saved step's order count (so that no id is made twice)."""
        self._now, self._count = ts, count

    def add_bar(self, bar: Bar) -> None:
        """Append a bar of the current step to its symbol's history."""
        self._bars.setdefault(bar.symbol, deque(maxlen=self._history)).append(bar)

    def preload(self, bars: Sequence[Bar]) -> None:
        """Fill the history with earlier bars without running the strategy."""
        for bar in bars:
            self.add_bar(bar)
            self._portfolio.mark_bar(bar)

    def _order(self, side: str, symbol: str, quantity: Decimal, type_: str,
               limit_price: Decimal | None, stop_price: Decimal | None, tif: str) -> str:
        self._count += 1
        cid = f"{self._prefix}-{int(self._now.timestamp())}-{self._count}"
        order = Order.new(client_order_id=cid, symbol=symbol, side=side, type=type_,
                          quantity=quantity, limit_price=limit_price, stop_price=stop_price,
                          time_in_force=tif, created_at=self._now)
        self._place(order)
        return cid

