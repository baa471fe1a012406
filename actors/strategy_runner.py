"""Run one bot's `Strategy` against live bars: the context it sees and what it may do.

`BotContext` is the `trading.strategy.StrategyContext` of a live bot: orders the strategy
places during a bar are collected and sent through the tenant's risk gate after the
hook returns. Client order ids derive from the bot, the bar's time and the order's
position within that bar, so a bar replayed after a restart produces the same ids and
the store refuses the duplicates. A strategy that raises stops *its* bot with the error;
risk and execution live in other processes and carry on.
"""

from __future__ import annotations

import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

from trading.errors import Conflict, Invalid, NotFound
from trading.instruments import Bar
from trading.orders import Fill, Order, OrderStatus
from trading.strategy import Predictions, Strategy, get_strategy

log = logging.getLogger(__name__)

SendOrder = Callable[[Order, Decimal | None], Awaitable[dict[str, Any]]]
CancelOrder = Callable[[str], Awaitable[dict[str, Any]]]


class LiveScores(Predictions, Protocol):
    """A model's scores for a live bot (`actors.model_scores.EndpointScores`): the runner
    awaits `observe` for each bar before the strategy's hook reads `score` for it."""

    async def observe(self, bar: Bar) -> None: ...


class BotContext:
    """What a live strategy can see and do (implements `StrategyContext`)."""

    def __init__(self, bot_id: uuid.UUID, cash: Decimal, positions: dict[str, Decimal],
                 history: int) -> None:
        self._bot = bot_id.hex[:12]
        self._cash = cash
        self._positions = dict(positions)
        self._bars: dict[str, deque[Bar]] = {}
        self._history = max(history, 2)
        self._open: dict[str, str] = {}  # client order id → symbol
        self._pending: list[Order] = []
        self._cancels: list[str] = []
        self._now = datetime.now(UTC)
        self._seq = 0
        self.logs: deque[str] = deque(maxlen=100)

    # -- the StrategyContext protocol ---------------------------------------------------
    @property
    def now(self) -> datetime:
        return self._now

    @property
    def cash(self) -> Decimal:
        return self._cash

    @property
    def equity(self) -> Decimal:
        return self._cash + sum((q * (self.last_price(s) or Decimal(0))
                                 for s, q in self._positions.items()), Decimal(0))

    def buy(self, symbol: str, quantity: Decimal, *, type: str = "market",
            limit_price: Decimal | None = None, stop_price: Decimal | None = None,
            time_in_force: str = "gtc") -> str:
        return self._place("buy", symbol, quantity, type, limit_price, stop_price, time_in_force)

    def sell(self, symbol: str, quantity: Decimal, *, type: str = "market",
             limit_price: Decimal | None = None, stop_price: Decimal | None = None,
             time_in_force: str = "gtc") -> str:
        return self._place("sell", symbol, quantity, type, limit_price, stop_price, time_in_force)

    def cancel(self, client_order_id: str) -> None:
        """Ask for one of this bot's open orders to be canceled after the hook returns.

        An order placed earlier in the same hook is simply not sent; an id this bot does
        not hold open (another bot's, a finished one) is logged and ignored.
        """
        if client_order_id not in self._open:
            self.log(f"cancel ignored: {client_order_id} is not an open order of this bot")
            return
        unsent = [o for o in self._pending if o.client_order_id == client_order_id]
        if unsent:
            self._pending.remove(unsent[0])
            self._open.pop(client_order_id, None)
        elif client_order_id not in self._cancels:
            self._cancels.append(client_order_id)

    def position(self, symbol: str) -> Decimal:
        return self._positions.get(symbol, Decimal(0))

    def last_price(self, symbol: str) -> Decimal | None:
        bars = self._bars.get(symbol)
        return bars[-1].close if bars else None

    def history(self, symbol: str, n: int) -> Sequence[Bar]:
        return list(self._bars.get(symbol, ()))[-n:]

    def open_orders(self, symbol: str | None = None) -> Sequence[str]:
        return [c for c, s in self._open.items() if symbol is None or s == symbol]

    def log(self, message: str) -> None:
        self.logs.append(f"{self._now.isoformat()} {message}")

    # -- the runner's side --------------------------------------------------------------
    def _place(self, side: str, symbol: str, quantity: Decimal, type_: str,
               limit_price: Decimal | None, stop_price: Decimal | None, tif: str) -> str:
        self._seq += 1
        cid = f"b{self._bot}-{int(self._now.timestamp())}-{self._seq}"
        order = Order.new(client_order_id=cid, symbol=symbol, side=side, type=type_,
                          quantity=quantity, limit_price=limit_price, stop_price=stop_price,
                          time_in_force=tif, created_at=self._now)  # decided on this bar
        self._pending.append(order)
        self._open[cid] = symbol
        return cid

    def begin_bar(self, bar: Bar) -> None:
        if bar.ts != self._now:  # numbered per bar time: several symbols share one
            self._seq = 0
        self._now = bar.ts
        self._bars.setdefault(bar.symbol, deque(maxlen=self._history)).append(bar)

    def preload(self, bars: Sequence[Bar]) -> None:
        """Fill the history with stored bars (after a restart) without running the strategy."""
        for bar in bars:
            self._bars.setdefault(bar.symbol, deque(maxlen=self._history)).append(bar)

    def take_pending(self) -> list[Order]:
        pending, self._pending = self._pending, []
        return pending

    def take_cancels(self) -> list[str]:
        cancels, self._cancels = self._cancels, []
        return cancels

    def restore_open(self, orders: dict[str, str]) -> None:
        """The bot's open orders (client order id → symbol) read from the store at a restart."""
        self._open.update(orders)

    def order_done(self, client_order_id: str) -> None:
        self._open.pop(client_order_id, None)

    def apply_fill(self, fill: Fill, position: Decimal, cash: Decimal) -> None:
        self._positions[fill.symbol] = position
        self._cash = cash


def _still_open(reply: dict[str, Any]) -> bool:
    """Whether the order a reply describes can still fill (its status is not terminal)."""
    try:
        return not OrderStatus(str(reply.get("status"))).is_terminal
    except ValueError:  # no status (an error reply): nothing is working
        return False


class StrategyRunner:
    """Feed bars to one bot's strategy and send its orders through risk."""

    def __init__(self, bot_id: uuid.UUID, strategy: str, symbols: Sequence[str],
                 params: dict[str, Any], *, cash: Decimal, positions: dict[str, Decimal],
                 send: SendOrder, cancel: CancelOrder | None = None,
                 scores: LiveScores | None = None) -> None:
        self.strategy: Strategy = get_strategy(strategy)(symbols, **params)
        if self.strategy.uses_model:
            if scores is None:
                raise Invalid(f"strategy {strategy} needs its model's scores", field="strategy")
            self.strategy.use_predictions(scores)
        self._scores = scores if self.strategy.uses_model else None
        self.ctx = BotContext(bot_id, cash, positions, self.strategy.warmup + 1)
        self._send = send
        self._cancel = cancel
        self.error: str | None = None
        self.started = False
        self.bars_seen = 0
        self._unconfirmed: dict[str, Order] = {}  # sent, but the send raised: sent again

    def start(self) -> None:
        self._guard(lambda: self.strategy.on_start(self.ctx))
        self.started = True

    async def on_bars(self, bars: Sequence[Bar]) -> int:
        """Run the strategy on each of its bars; return how many orders it sent."""
        sent = 0
        for bar in bars:
            if self.error is not None:
                break
            if bar.symbol not in self.strategy.symbols:
                continue
            self.ctx.begin_bar(bar)
            self.bars_seen += 1
            if self._unconfirmed:
                sent += await self._resend()
            if self._scores is not None:
                await self._score(self._scores, bar)
                if self.error is not None:
                    break
            self._guard(lambda bar=bar: self.strategy.on_bar(self.ctx, bar))  # type: ignore[misc]
            sent += await self._dispatch(bar.close)
        return sent

    async def _score(self, scores: LiveScores, bar: Bar) -> None:
        """Ask for the model's score at `bar`: a model gone or corrupt stops the bot; a failed
        call costs this bar its score (logged)."""
        try:
            await scores.observe(bar)
        except (NotFound, Conflict) as exc:
            self.error = f"{exc.code}: {exc.message}"[:1000]
            log.warning("model error: %s", self.error)
        except Exception as exc:
            self.ctx.log(f"no model score for {bar.symbol}: {type(exc).__name__}: {exc}"[:500])

    async def _dispatch(self, last: Decimal | None) -> int:
        """Send what the last hook asked for: cancels first, then new orders."""
        for cid in self.ctx.take_cancels():
            if self._cancel is None:
                self.ctx.log(f"cancel of {cid} not sent: this runner cannot cancel")
                continue
            try:
                reply = await self._cancel(cid)
            except Exception as exc:  # the order stays open in the bot's view; it may ask again
                self.ctx.log(f"cancel of {cid} failed: {type(exc).__name__}: {exc}"[:500])
                continue
            if not _still_open(reply):
                self._unconfirmed.pop(cid, None)
                self.ctx.order_done(cid)
        sent = 0
        for order in self.ctx.take_pending():
            sent += 1
            await self._submit(order, last)
        return sent

    async def _submit(self, order: Order, last: Decimal | None) -> None:
        """Send one order through risk; a send that raises leaves it open, to be sent again.

        A failed call (risk or the database unreachable) does not say whether the order
        was stored, so it stays open in the bot's view and goes again, with the same client
        order id, before the strategy's next bar: the store answers with the order it
        holds or writes it then. Until an answer comes the bot's strategies see the order
        open (the built-ins then place nothing more for its symbol).
        """
        cid = order.client_order_id
        try:
            reply = await self._send(order, last)
        except (Invalid, NotFound, Conflict) as exc:  # a definite answer: refused, not stored
            self._unconfirmed.pop(cid, None)
            self.ctx.order_done(cid)
            self.ctx.log(f"order {cid} refused: {exc.code}: {exc.message}"[:500])
            return
        except Exception as exc:
            if cid not in self._unconfirmed:
                self.ctx.log(f"order {cid} not confirmed, sent again on the next bar:"
                             f" {type(exc).__name__}: {exc}"[:500])
                log.warning("order %s not confirmed: %r", cid, exc)
            self._unconfirmed[cid] = order
            return
        self._unconfirmed.pop(cid, None)
        if not _still_open(reply):
            self.ctx.order_done(cid)

    async def _resend(self) -> int:
        """Send the unconfirmed orders again (oldest first); return how many were sent."""
        orders = list(self._unconfirmed.values())
        for order in orders:
            await self._submit(order, self.ctx.last_price(order.symbol))
        return len(orders)

    async def on_fill(self, fill: Fill, position: Decimal, cash: Decimal,
                      order_open: bool) -> int:
        """Apply a stored fill, run the strategy's `on_fill`, send what it asked for."""
        self.ctx.apply_fill(fill, position, cash)
        self._unconfirmed.pop(fill.client_order_id, None)  # it was stored after all
        if not order_open:
            self.ctx.order_done(fill.client_order_id)
        self._guard(lambda: self.strategy.on_fill(self.ctx, fill))
        return await self._dispatch(self.ctx.last_price(fill.symbol))

    def stop(self) -> None:
        if self.error is None:
            self._guard(lambda: self.strategy.on_stop(self.ctx))

    def _guard(self, hook: Callable[[], None]) -> None:
        if self.error is not None:
            return
        try:
            hook()
        except Exception as exc:  # the bot's own code failed: record it, stop this bot only
            self.error = f"{type(exc).__name__}: {exc}"[:1000]
            log.warning("strategy error: %s", self.error)
