"""`LocalBot`: one bot's strategy, paper broker and portfolio, driven bar by bar.

Every change becomes an event through `emit` the moment it happens, before the next
step acts on it: an order when it is created (``new``) and at each status change
(``accepted`` or ``rejected``, fills, cancels, expiries), each fill, the position after
each fill, and one P&L snapshot per bar time. The runner calls the bot inside an outbox
transaction and saves `state()` in the same transaction, so a step's events and the
state they lead to are stored together or not at all; if that transaction fails the
runner rebuilds the bot from the stored state.

A strategy that raises stops its bot: `error` is set and no hook runs again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from agent.config import BotConfig
from agent.context import LocalContext
from agent.views import account_of, fill_view, log_view, order_view, pnl_view, position_view
from trading.broker import Expiry, PaperBroker
from trading.errors import Invalid
from trading.instruments import Bar, Instrument
from trading.orders import Fill, Order, OrderStatus, OrderType, Side, TimeInForce
from trading.portfolio import Portfolio, Position
from trading.strategy import Strategy, get_strategy
from trading.values import ZERO

Emit = Callable[[str, dict[str, Any]], int]


class OutboxFailure(Exception):
    """Writing an event failed: the step must be rolled back, whatever the strategy was doing."""


def _optional(value: Any) -> Decimal | None:
    return None if value is None else Decimal(value)


def order_state(order: Order) -> dict[str, Any]:
    """Return everything needed to rebuild `order` (see `restore_order`)."""
    return {"client_order_id": order.client_order_id, "symbol": order.symbol, "side": order.side.value,
            "type": order.type.value, "quantity": str(order.quantity),
            "limit_price": None if order.limit_price is None else str(order.limit_price),
            "stop_price": None if order.stop_price is None else str(order.stop_price),
            "time_in_force": order.time_in_force.value, "status": order.status.value,
            "filled_quantity": str(order.filled_quantity),
            "average_fill_price": None if order.average_fill_price is None
            else str(order.average_fill_price),
            "fees": str(order.fees), "created_at": order.created_at.isoformat(),
            "triggered": order.triggered, "reason": order.reason}


def restore_order(raw: Mapping[str, Any]) -> Order:
    """Rebuild an order saved by `order_state`."""
    return Order(client_order_id=raw["client_order_id"], symbol=raw["symbol"], side=Side(raw["side"]),
                 type=OrderType(raw["type"]), quantity=Decimal(raw["quantity"]),
                 limit_price=_optional(raw["limit_price"]), stop_price=_optional(raw["stop_price"]),
                 time_in_force=TimeInForce(raw["time_in_force"]), status=OrderStatus(raw["status"]),
                 filled_quantity=Decimal(raw["filled_quantity"]),
                 average_fill_price=_optional(raw["average_fill_price"]), fees=Decimal(raw["fees"]),
                 created_at=datetime.fromisoformat(raw["created_at"]), triggered=bool(raw["triggered"]),
                 reason=raw["reason"])


class LocalBot:
    """One bot running in the agent (see the module docstring)."""

    def __init__(self, config: BotConfig, *, agent_id: str, instruments: Mapping[str, Instrument],
                 emit: Emit, state: Mapping[str, Any] | None = None, fee_bps: Decimal = ZERO,
                 slippage_bps: Decimal = ZERO) -> None:
        """Build the strategy (raising `Invalid` for a bad configuration) and restore `state`."""
        self.config = config
        self.name = config.name
        self.account = account_of(config.name)
        self.strategy: Strategy = get_strategy(config.strategy)(config.symbols, **config.params)
        self._instruments = dict(instruments)
        self._emit_to = emit
        self.broker = PaperBroker(self._instruments, fee_bps=fee_bps, slippage_bps=slippage_bps)
        self.orders: dict[str, Order] = {}  # open orders by client order id
        self.fills: dict[str, int] = {}  # fills so far of each open order
        self.last_bar_at: datetime | None = None
        self.error: str | None = None
        self.portfolio = Portfolio(config.capital)
        if state:
            self._restore(state)
        self.ctx = LocalContext(prefix=f"a{agent_id.replace('-', '')[:8]}-{config.name}",
                                portfolio=self.portfolio, history=self.strategy.warmup + 1,
                                place=self._place, cancel=self._cancel, open_orders=self._open,
                                log=self._log)
        if state and state.get("counter"):
            self.ctx.restore_counter(datetime.fromisoformat(state["counter"]["at"]),
                                     int(state["counter"]["n"]))

    @property
    def symbols(self) -> tuple[str, ...]:
        return self.strategy.symbols

    # -- what the runner calls ----------------------------------------------------------

    def preload(self, bars: Sequence[Bar]) -> None:
        """Give the strategy its history (and the portfolio its marks) without trading."""
        self.ctx.preload([b for b in bars if b.symbol in self.symbols])

    def start(self, ts: datetime) -> None:
        """Run the strategy's `on_start` at market time `ts`."""
        self.ctx.begin(ts)
        self._guard(lambda: self.strategy.on_start(self.ctx))

    def on_step(self, ts: datetime, bars: Sequence[Bar]) -> None:
        """Process the bars of one market time: fills first, then the strategy, then a P&L snapshot."""
        self.ctx.begin(ts)
        for bar in sorted(bars, key=lambda b: b.symbol):
            if bar.symbol not in self.symbols:
                continue
            self.ctx.add_bar(bar)
            for event in self.broker.on_bar(bar):
                self._apply(event)
            self.portfolio.mark_bar(bar)
            self._guard(lambda bar=bar: self.strategy.on_bar(self.ctx, bar))  # type: ignore[misc]
        self.last_bar_at = ts
        self._emit("pnl", pnl_view(self.portfolio.snapshot(ts), self.account))

    def stop(self, ts: datetime, reason: str) -> int:
        """Run `on_stop` (unless the strategy failed), cancel every open order; return how many."""
        self.ctx.begin(ts)
        self._guard(lambda: self.strategy.on_stop(self.ctx))
        canceled = 0
        for cid in list(self.orders):
            if self.broker.cancel(cid, ts) is not None:
                self._end(cid, OrderStatus.CANCELED, reason, ts)
                canceled += 1
        return canceled

    def state(self) -> dict[str, Any]:
        """Return the working state to save: money, positions, open orders, the last bar time."""
        at, n = self.ctx.counter()
        return {"cash": str(self.portfolio.cash), "fees": str(self.portfolio.fees),
                "positions": [{"symbol": p.symbol, "quantity": str(p.quantity),
                               "average_cost": str(p.average_cost), "realized_pnl": str(p.realized_pnl)}
                              for p in self.portfolio.positions(include_flat=True)],
                "orders": [order_state(o) for o in self.orders.values()],
                "fills": dict(self.fills),
                "last_bar_at": None if self.last_bar_at is None else self.last_bar_at.isoformat(),
                "counter": {"at": at.isoformat(), "n": n}}

    # -- internals ----------------------------------------------------------------------

    def _restore(self, state: Mapping[str, Any]) -> None:
        positions = [Position(p["symbol"], Decimal(p["quantity"]), Decimal(p["average_cost"]),
                              Decimal(p["realized_pnl"])) for p in state.get("positions", [])]
        self.portfolio = Portfolio.restore(Decimal(state["cash"]), positions, Decimal(state["fees"]))
        self.orders = {o.client_order_id: o for o in map(restore_order, state.get("orders", []))}
        self.fills = {cid: int(n) for cid, n in state.get("fills", {}).items() if cid in self.orders}
        last = state.get("last_bar_at")
        self.last_bar_at = None if last is None else datetime.fromisoformat(last)
        self.broker.restore(self.orders.values(), fills_so_far=self.fills, as_of=self.last_bar_at)

    def _emit(self, kind: str, data: dict[str, Any]) -> None:
        try:
            self._emit_to(kind, data)
        except Exception as exc:
            raise OutboxFailure(f"cannot write a {kind} event: {exc}") from exc

    def _guard(self, hook: Callable[[], None]) -> None:
        if self.error is not None:
            return
        try:
            hook()
        except OutboxFailure:
            raise
        except Exception as exc:  # the strategy's own code failed: this bot stops
            self.error = f"{type(exc).__name__}: {exc}"[:1000]
            self._emit("log", log_view(f"strategy error: {self.error}", account=self.account,
                                       level="error", ts=self.ctx.now))

    def _open(self, symbol: str | None) -> list[str]:
        return [cid for cid, o in self.orders.items() if symbol is None or o.symbol == symbol]

    def _log(self, message: str) -> None:
        self._emit("log", log_view(message, account=self.account, ts=self.ctx.now))

    def _place(self, order: Order) -> None:
        """Record a new order, then accept (and submit) or reject it."""
        now = self.ctx.now
        self._emit("order", order_view(order, self.account, self.name))
        instrument = self._instruments.get(order.symbol)
        reason: str | None = None
        if instrument is None:
            reason = f"unknown symbol {order.symbol}"
        else:
            try:
                instrument.check_order(order.quantity, order.limit_price)
                if order.stop_price is not None:
                    instrument.check_order(order.quantity, order.stop_price)
            except Invalid as exc:
                reason = exc.message
        if reason is not None:
            order.transition(OrderStatus.REJECTED, reason=reason, ts=now)
            self._emit("order", order_view(order, self.account, self.name))
            return
        order.transition(OrderStatus.ACCEPTED, ts=now)
        self._emit("order", order_view(order, self.account, self.name))
        self.orders[order.client_order_id] = order
        self.fills[order.client_order_id] = 0
        self.broker.submit(order, now)

    def _cancel(self, client_order_id: str) -> None:
        expiry = self.broker.cancel(client_order_id, self.ctx.now)
        if expiry is not None:
            self._end(client_order_id, OrderStatus.CANCELED, "canceled by the strategy", expiry.ts)

    def _apply(self, event: Fill | Expiry) -> None:
        if isinstance(event, Expiry):
            self._end(event.client_order_id, event.status, event.reason, event.ts)
            return
        fill = event
        order = self.orders[fill.client_order_id]
        order.apply_fill(fill)
        self.fills[fill.client_order_id] += 1
        position = self.portfolio.apply_fill(fill)
        self._emit("fill", fill_view(fill, self.account))
        self._emit("order", order_view(order, self.account, self.name))
        self._emit("position", position_view(position, self.account, fill.ts))
        if not order.is_open:
            del self.orders[fill.client_order_id]
            del self.fills[fill.client_order_id]
        self._guard(lambda: self.strategy.on_fill(self.ctx, fill))

    def _end(self, client_order_id: str, status: OrderStatus, reason: str, ts: datetime) -> None:
        order = self.orders.pop(client_order_id)
        self.fills.pop(client_order_id, None)
        order.transition(status, reason=reason, ts=ts)
        self._emit("order", order_view(order, self.account, self.name))
