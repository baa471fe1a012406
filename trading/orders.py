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
        return 1 if self is Side.BUY else -1


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
        return self in (OrderStatus.ACCEPTED, OrderStatus.PARTIALLY_FILLED)


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
        if order_type in (OrderType.LIMIT, OrderType.STOP_LIMIT) and lp is None:
            raise Invalid(f"a {order_type.value} order needs limit_price", field="limit_price")
        if order_type in (OrderType.STOP, OrderType.STOP_LIMIT) and sp is None:
            raise Invalid(f"a {order_type.value} order needs stop_price", field="stop_price")
        if order_type in (OrderType.MARKET, OrderType.STOP) and lp is not None:
            raise Invalid(f"a {order_type.value} order takes no limit_price", field="limit_price")
        if order_type in (OrderType.MARKET, OrderType.LIMIT) and sp is not None:
            raise Invalid(f"a {order_type.value} order takes no stop_price", field="stop_price")
        return cls(
            client_order_id=validate_client_order_id(client_order_id),
            symbol=validate_symbol(symbol), side=_enum(Side, side, "side"), type=order_type,
            quantity=_qty(quantity), limit_price=lp, stop_price=sp,
            time_in_force=_enum(TimeInForce, time_in_force, "time_in_force"), bot_id=bot_id,
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
        if to not in TRANSITIONS[self.status]:
            raise IllegalTransition(
                f"order {self.client_order_id}: {self.status.value} → {to.value} is not allowed",
                field="status")
        event = OrderEvent(self.client_order_id, self.status, to, reason,
                           ts or datetime.now(UTC))
        self.status = to
        if reason is not None:
            self.reason = reason
        return event

    def apply_fill(self, fill: Fill) -> OrderEvent:
        """Add a fill: quantities, average price and fees; status to partially/fully filled."""
        if fill.client_order_id != self.client_order_id or fill.side is not self.side \
                or fill.symbol != self.symbol:
            raise Invalid("the fill belongs to another order", field="fill")
        if fill.quantity > self.remaining:
            raise Invalid(f"fill of {fill.quantity} exceeds the remaining {self.remaining}",
                          field="quantity")
        to = OrderStatus.FILLED if fill.quantity == self.remaining \
            else OrderStatus.PARTIALLY_FILLED
        event = self.transition(to, ts=fill.ts)
        total = self.filled_quantity + fill.quantity
        prior = (self.average_fill_price or ZERO) * self.filled_quantity
        self.average_fill_price = (prior + fill.notional) / total
        self.filled_quantity = total
        self.fees += fill.fee
        return event

    def copy(self) -> Order:
        """Return a shallow copy (its own status and quantities; the values are immutable)."""
        return Order(**vars(self))  # dataclasses.replace(self), without its slow field-by-field walk


def _qty(value: Any) -> Quantity:
    return quantity(value, field="quantity")
