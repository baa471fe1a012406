"""Orders, their status transition table, and fills.

An order's status changes only through `Order.transition` (or `Order.apply_fill`, which
uses it); every change returns an `OrderEvent` for the caller to persist, and a change
the table does not allow raises `IllegalTransition`.

    NEW ──▶ ACCEPTED ──▶ PARTIALLY_FILLED ──▶ FILLED
     │         │  │            │   ▲ │
     │         │  │            └───┘ ├──▶ CANCELED
     ├─▶ REJECTED ◀┘  (ACCEPTED) ────┼──▶ CANCELED / EXPIRED
     └─▶ CANCELED                    └──▶ EXPIRED
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from trading.errors import Conflict, Invalid
from trading.instruments import validate_symbol
from trading.values import ZERO, Money, Price, Quantity, non_negative, price, quantity

CLIENT_ORDER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"

    @property
    def sign(self) -> int:
        return 1 if self is _BUY else -1


class OrderType(StrEnum):
    MARKET = "market"
    LIMIT = "limit"
    STOP = "stop"
    STOP_LIMIT = "stop_limit"


class TimeInForce(StrEnum):
    GTC = "gtc"  # good till canceled
    IOC = "ioc"  # immediate or cancel: what does not fill at once is canceled
    DAY = "day"  # expires at the end of the trading day (UTC)


class OrderStatus(StrEnum):
    NEW = "new"
    ACCEPTED = "accepted"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELED = "canceled"
    REJECTED = "rejected"
    EXPIRED = "expired"

    @property
    def is_terminal(self) -> bool:
        return not TRANSITIONS[self]

    @property
    def is_open(self) -> bool:
        return self in OPEN_STATUSES


# Members gathered once. On Python 3.11 reading a member off its class (`OrderType.LIMIT`)
# runs a Python-level descriptor, some ten times the cost of a global or a set lookup, and
# calling the class (`Side("buy")`) more still: the order and fill paths use these instead.
LIMIT_TYPES = frozenset({OrderType.LIMIT, OrderType.STOP_LIMIT})  # the types with a limit price
STOP_TYPES = frozenset({OrderType.STOP, OrderType.STOP_LIMIT})  # the types with a stop price
OPEN_STATUSES = frozenset({OrderStatus.ACCEPTED, OrderStatus.PARTIALLY_FILLED})
_BUY = Side.BUY
_FILLED, _PARTIALLY_FILLED = OrderStatus.FILLED, OrderStatus.PARTIALLY_FILLED
_MEMBERS: dict[type[StrEnum], dict[str, StrEnum]] = {
    cls: {member.value: member for member in cls} for cls in (Side, OrderType, TimeInForce)}

S = OrderStatus
TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    S.NEW: frozenset({S.ACCEPTED, S.REJECTED, S.CANCELED}),
    S.ACCEPTED: frozenset({S.PARTIALLY_FILLED, S.FILLED, S.CANCELED, S.EXPIRED, S.REJECTED}),
    S.PARTIALLY_FILLED: frozenset({S.PARTIALLY_FILLED, S.FILLED, S.CANCELED, S.EXPIRED}),
    S.FILLED: frozenset(),
    S.CANCELED: frozenset(),
    S.REJECTED: frozenset(),
    S.EXPIRED: frozenset(),
}


class IllegalTransition(Conflict):
    """A status change the transition table does not allow."""

    default_code = "illegal_transition"


def validate_client_order_id(value: Any, *, field: str = "client_order_id") -> str:
    if not isinstance(value, str) or not CLIENT_ORDER_ID_RE.fullmatch(value):
        raise Invalid("client_order_id must be 1-64 characters: letters, digits, . _ : -",
                      field=field)
    return value


def _enum(cls: type[StrEnum], value: Any, field: str) -> Any:
    member = _MEMBERS[cls].get(value) if isinstance(value, str) else None
    if member is not None:  # a dict lookup: calling the enum class is ten times slower
        return member
    try:
        return cls(value)
    except ValueError:
        raise Invalid(f"{field} must be one of {', '.join(m.value for m in cls)}",
                      field=field) from None


@dataclass(frozen=True)
class OrderEvent:
    """One status change, to be stored as a row."""

    client_order_id: str
    from_status: OrderStatus | None
    to_status: OrderStatus
    reason: str | None
    ts: datetime


@dataclass(frozen=True)
class Fill:
    """An execution of (part of) an order. `fill_id` is unique per tenant."""

    fill_id: str
    client_order_id: str
    symbol: str
    side: Side
    quantity: Quantity
    price: Price
    fee: Money
    ts: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "quantity", quantity(self.quantity))
        object.__setattr__(self, "price", price(self.price))
        object.__setattr__(self, "fee", non_negative(self.fee, field="fee"))

    @classmethod
    def _trusted(cls, fill_id: str, client_order_id: str, symbol: str, side: Side,
                 quantity: Quantity, price: Price, fee: Money, ts: datetime) -> Fill:
        """Build a fill from values that are valid already, skipping `__post_init__`.

        Only for the engine's own fills (the paper broker's), whose quantity and price are
        positive Decimals and fee a non-negative Decimal by construction; everything else
        builds a `Fill` normally, which validates.
        """
        fill = object.__new__(cls)
        fill.__dict__.update(fill_id=fill_id, client_order_id=client_order_id, symbol=symbol,
                             side=side, quantity=quantity, price=price, fee=fee, ts=ts)
        return fill

    @property
    def notional(self) -> Money:
        return self.quantity * self.price


@dataclass
class Order:
    """A request to trade, with its lifecycle. Build with `Order.new` to validate."""

    client_order_id: str
    symbol: str
    side: Side
    type: OrderType
    quantity: Quantity
    limit_price: Price | None = None
    stop_price: Price | None = None
    time_in_force: TimeInForce = TimeInForce.GTC
    bot_id: str | None = None
    status: OrderStatus = OrderStatus.NEW
    filled_quantity: Quantity = ZERO
    average_fill_price: Price | None = None
    fees: Money = ZERO
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    triggered: bool = False  # a stop or stop-limit whose stop price was reached
    reason: str | None = None

    @classmethod
    def new(cls, *, client_order_id: Any, symbol: Any, side: Any, type: Any = "market",
            quantity: Any, limit_price: Any = None, stop_price: Any = None,
            time_in_force: Any = "gtc", bot_id: str | None = None,
            created_at: datetime | None = None) -> Order:
        """Validate every field (naming the one at fault) and return a NEW order."""
        order_type = _enum(OrderType, type, "type")
        lp = None if limit_price is None else price(limit_price, field="limit_price")
        sp = None if stop_price is None else price(stop_price, field="stop_price")
        has_limit, has_stop = order_type in LIMIT_TYPES, order_type in STOP_TYPES
        if has_limit and lp is None:
            raise Invalid(f"a {order_type.value} order needs limit_price", field="limit_price")
        if has_stop and sp is None:
            raise Invalid(f"a {order_type.value} order needs stop_price", field="stop_price")
        if not has_limit and lp is not None:
            raise Invalid(f"a {order_type.value} order takes no limit_price", field="limit_price")
        if not has_stop and sp is not None:
            raise Invalid(f"a {order_type.value} order takes no stop_price", field="stop_price")
        return cls(validate_client_order_id(client_order_id), validate_symbol(symbol),
                   _enum(Side, side, "side"), order_type, _qty(quantity), lp, sp,
                   _enum(TimeInForce, time_in_force, "time_in_force"), bot_id,
                   created_at=created_at or datetime.now(UTC))

    @property
    def remaining(self) -> Quantity:
        return self.quantity - self.filled_quantity

    @property
    def is_open(self) -> bool:
        return self.status.is_open

    @property
    def signed_remaining(self) -> Decimal:
        return self.remaining * self.side.sign

    def transition(self, to: OrderStatus, *, reason: str | None = None,
                   ts: datetime | None = None) -> OrderEvent:
        """Move to `to` if the table allows it; return the event, or raise."""
        before = self._move(to, reason)
        return OrderEvent(self.client_order_id, before, to, reason, ts or datetime.now(UTC))

    def apply_fill(self, fill: Fill) -> OrderEvent:
        """Add a fill: quantities, average price and fees; status to partially/fully filled."""
        before = self._book(fill)
        return OrderEvent(self.client_order_id, before, self.status, None, fill.ts)

    # `_move` and `_book` are `transition` and `apply_fill` without the event, for callers
    # that keep no events (the paper broker's working copies, the backtester): the same
    # table, the same checks, the same state afterwards.

    def _move(self, to: OrderStatus, reason: str | None = None) -> OrderStatus:
        """Move to `to` if the table allows it, or raise; return the status before."""
        before = self.status
        if to not in TRANSITIONS[before]:
            raise IllegalTransition(
                f"order {self.client_order_id}: {before.value} → {to.value} is not allowed",
                field="status")
        self.status = to
        if reason is not None:
            self.reason = reason
        return before

    def _book(self, fill: Fill) -> OrderStatus:
        """Add `fill` as `apply_fill` does, or raise; return the status before."""
        if fill.client_order_id != self.client_order_id or fill.side is not self.side \
                or fill.symbol != self.symbol:
            raise Invalid("the fill belongs to another order", field="fill")
        filled, qty = self.filled_quantity, fill.quantity
        remaining = self.quantity - filled
        if qty > remaining:
            raise Invalid(f"fill of {qty} exceeds the remaining {remaining}", field="quantity")
        before = self._move(_FILLED if qty == remaining else _PARTIALLY_FILLED)
        total = filled + qty
        prior = (self.average_fill_price or ZERO) * filled
        self.average_fill_price = (prior + qty * fill.price) / total  # fill.notional
        self.filled_quantity = total
        self.fees += fill.fee
        return before

    def copy(self) -> Order:
        """Return a shallow copy (its own status and quantities; the values are immutable)."""
        twin = object.__new__(Order)  # no __init__: the fields are copied as they are
        twin.__dict__.update(self.__dict__)
        return twin


def _qty(value: Any) -> Quantity:
    return quantity(value, field="quantity")
