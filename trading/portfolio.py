"""Portfolio accounting: cash, positions at average cost, realised and unrealised P&L.

Used by backtests and live bots alike. Every amount is an exact `Decimal`.

- Buying into a long (or selling into a short) moves the average cost to the
  quantity-weighted mean of the old average and the fill price.
- Reducing a position realises ``(price - average) * closed`` for a long and
  ``(average - price) * closed`` for a short; the average cost does not change.
- A fill that crosses zero closes the old position (realising its P&L) and opens the
  rest at the fill price.
- Cash changes by ``-signed notional - fee``. Fees are kept apart: `realized_pnl` is
  gross of fees and ``net_pnl = realized_pnl + unrealized_pnl - fees``.
- Unrealised P&L and equity use the last price `mark`-ed for each symbol, or the
  position's average cost where none has been recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from trading.errors import Invalid
from trading.instruments import Bar, validate_symbol
from trading.orders import Fill
from trading.values import ZERO, Money, Price, money, non_negative, price


@dataclass(frozen=True)
class Position:
    """A holding in one symbol: signed quantity (+ long, - short) at an average cost."""

    symbol: str
    quantity: Decimal = ZERO
    average_cost: Price = ZERO
    realized_pnl: Money = ZERO

    def __post_init__(self) -> None:
        validate_symbol(self.symbol)
        object.__setattr__(self, "quantity", money(self.quantity, field="quantity"))
        object.__setattr__(self, "average_cost",
                           non_negative(self.average_cost, field="average_cost"))
        object.__setattr__(self, "realized_pnl", money(self.realized_pnl, field="realized_pnl"))
        if self.quantity == 0 and self.average_cost != 0:
            raise Invalid("a flat position has no average cost", field="average_cost")
        if self.quantity != 0 and self.average_cost == 0:
            raise Invalid("an open position needs a positive average cost", field="average_cost")

    @property
    def is_flat(self) -> bool:
        """Return whether the position holds nothing."""
        return self.quantity == 0

    @classmethod
    def _trusted(cls, symbol: str, quantity: Decimal, average_cost: Price,
                 realized_pnl: Money) -> Position:
        """Build a position from fields that are valid already, skipping `__post_init__`.

        Only for `Portfolio.apply_fill`, whose fields come from `_traded` on a valid
        position and a valid `Fill` (a non-zero quantity at a positive price), which keeps
        them valid: Decimals, the average cost positive when open and zero when flat.
        """
        position = object.__new__(cls)
        position.__dict__.update(symbol=symbol, quantity=quantity, average_cost=average_cost,
                                 realized_pnl=realized_pnl)
        return position

    def apply(self, signed_quantity: Decimal, fill_price: Price) -> Position:
        """Return the position after trading `signed_quantity` (+ buy, - sell) at `fill_price`."""
        return Position(*self._traded(signed_quantity, fill_price))

    def _traded(self, signed_quantity: Decimal,
                fill_price: Price) -> tuple[str, Decimal, Price, Money]:
        """Return the fields of the position after the trade (see `apply`), not validated."""
        if signed_quantity == 0:
            raise Invalid("quantity must not be zero", field="quantity")
        held = self.quantity
        new_quantity = held + signed_quantity
        if held == 0 or (held > 0) == (signed_quantity > 0):
            cost = abs(held) * self.average_cost + abs(signed_quantity) * fill_price
            return self.symbol, new_quantity, cost / abs(new_quantity), self.realized_pnl
        closed = min(abs(held), abs(signed_quantity))
        direction = 1 if held > 0 else -1
        realized = self.realized_pnl + (fill_price - self.average_cost) * closed * direction
        if new_quantity == 0:
            average = ZERO
        elif (new_quantity > 0) != (held > 0):
            average = fill_price  # crossed zero: the remainder opens at the fill price
        else:
            average = self.average_cost
        return self.symbol, new_quantity, average, realized


@dataclass(frozen=True)
class PnlSnapshot:
    """The portfolio's money at one moment."""

    ts: datetime
    cash: Money
    equity: Money
    realized_pnl: Money
    unrealized_pnl: Money
    fees: Money
    gross_exposure: Money
    net_exposure: Money

    @property
    def net_pnl(self) -> Money:
        """Return realised plus unrealised P&L, less fees."""
        return self.realized_pnl + self.unrealized_pnl - self.fees


class Portfolio:
    """Cash and positions, updated by fills and valued at the last marked prices."""

    def __init__(self, cash: Any) -> None:
        amount = money(cash, field="cash")
        if amount < 0:
            raise Invalid("cash must not be negative", field="cash")
        self._cash: Money = amount
        self._fees: Money = ZERO
        self._positions: dict[str, Position] = {}
        self._marks: dict[str, Price] = {}
        self._applied: set[str] = set()
        self._curve: list[tuple[datetime, Money]] = []

    @classmethod
    def restore(cls, cash: Any, positions: Iterable[Position], fees: Any,
                applied_fill_ids: Iterable[str] = ()) -> Portfolio:
        """Rebuild a portfolio from stored state (cash may be negative after trading)."""
        portfolio = cls(ZERO)
        portfolio._cash = money(cash, field="cash")
        portfolio._fees = non_negative(fees, field="fees")
        for position in positions:
            if not isinstance(position, Position):
                raise Invalid("positions must be Position objects", field="positions")
            if position.symbol in portfolio._positions:
                raise Invalid(f"position {position.symbol} is given twice", field="positions")
            portfolio._positions[position.symbol] = position
        for fill_id in applied_fill_ids:
            if not isinstance(fill_id, str) or not fill_id:
                raise Invalid("fill ids must be non-empty strings", field="applied_fill_ids")
            portfolio._applied.add(fill_id)
        return portfolio

    # -- updates ---------------------------------------------------------------------

    def apply_fill(self, fill: Fill) -> Position:
        """Book `fill` into cash, fees and its position; return the new position."""
        if fill.fill_id in self._applied:
            raise Invalid(f"fill {fill.fill_id} was already applied", field="fill_id")
        signed = fill.quantity * fill.side.sign
        # A Fill holds a positive quantity and price, so the traded fields are valid.
        position = Position._trusted(*self.position(fill.symbol)._traded(signed, fill.price))
        self._positions[fill.symbol] = position
        self._cash -= signed * fill.price + fill.fee
        self._fees += fill.fee
        self._applied.add(fill.fill_id)
        return position

    def mark(self, symbol: str, last: Any) -> None:
        """Record `last` as the price at which to value `symbol`."""
        self._marks[validate_symbol(symbol)] = price(last)

    def mark_bar(self, bar: Bar) -> None:
        """Record the bar's close as the price of its symbol."""
        self._marks[bar.symbol] = bar.close

    def marker(self) -> Callable[[str, Price], None]:
        """Return a function ``mark(symbol, price)`` recording marks as `mark_bar` does.

        For a feed whose symbols and prices are valid already (the backtester's bars): a
        mark then costs no Python call, which shows over a million bars.
        """
        return self._marks.__setitem__

    def last_price(self, symbol: str) -> Price | None:
        """Return the last marked price of `symbol`, or None if it was never marked."""
        return self._marks.get(symbol)

    # -- state -----------------------------------------------------------------------

    @property
    def cash(self) -> Money:
        """Return the cash balance."""
        return self._cash

    @property
    def fees(self) -> Money:
        """Return the total fees paid."""
        return self._fees

    def has_applied(self, fill_id: str) -> bool:
        """Return whether the fill with `fill_id` was already booked."""
        return fill_id in self._applied

    def position(self, symbol: str) -> Position:
        """Return the position in `symbol` (a flat one if there is none)."""
        found = self._positions.get(symbol)
        return found if found is not None else Position(symbol)

    def positions(self, *, include_flat: bool = False) -> list[Position]:
        """Return the open positions sorted by symbol (with closed ones, to store them)."""
        return sorted((p for p in self._positions.values() if include_flat or not p.is_flat),
                      key=lambda p: p.symbol)

    def _value_price(self, position: Position) -> Price:
        return self._marks.get(position.symbol, position.average_cost)

    @property
    def realized_pnl(self) -> Money:
        """Return the realised P&L over every symbol, gross of fees."""
        return sum((p.realized_pnl for p in self._positions.values()), ZERO)

    @property
    def unrealized_pnl(self) -> Money:
        """Return the open positions' P&L at the last marks (average cost if unmarked)."""
        return sum(((self._value_price(p) - p.average_cost) * p.quantity
                    for p in self._positions.values()), ZERO)

    @property
    def net_exposure(self) -> Money:
        """Return the signed market value of the positions."""
        total = ZERO
        marks = self._marks
        for p in self._positions.values():
            total += p.quantity * marks.get(p.symbol, p.average_cost)
        return total

    @property
    def gross_exposure(self) -> Money:
        """Return the market value of the positions, longs and shorts both counted positive."""
        return sum((abs(p.quantity) * self._value_price(p) for p in self._positions.values()),
                   ZERO)

    @property
    def equity(self) -> Money:
        """Return cash plus the signed market value of the positions."""
        total = ZERO  # `net_exposure` written out: the backtester asks for this at every bar time
        marks = self._marks
        for p in self._positions.values():
            total += p.quantity * marks.get(p.symbol, p.average_cost)
        return self._cash + total

    @property
    def net_pnl(self) -> Money:
        """Return realised plus unrealised P&L, less fees."""
        return self.realized_pnl + self.unrealized_pnl - self._fees

    # -- reporting -------------------------------------------------------------------

    def snapshot(self, ts: datetime) -> PnlSnapshot:
        """Return the portfolio's money at `ts`."""
        if not isinstance(ts, datetime) or ts.tzinfo is None:
            raise Invalid("ts must be a timezone-aware datetime", field="ts")
        return PnlSnapshot(ts=ts, cash=self._cash, equity=self.equity,
                           realized_pnl=self.realized_pnl, unrealized_pnl=self.unrealized_pnl,
                           fees=self._fees, gross_exposure=self.gross_exposure,
                           net_exposure=self.net_exposure)

    def record(self, ts: datetime) -> PnlSnapshot:
        """Take a snapshot at `ts` and append its equity to the equity curve."""
        snap = self.snapshot(ts)
        self._curve.append((snap.ts, snap.equity))
        return snap

    @property
    def equity_curve(self) -> list[tuple[datetime, Money]]:
        """Return a copy of the recorded ``(ts, equity)`` points, oldest first."""
        return list(self._curve)
