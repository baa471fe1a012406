"""Instruments and OHLCV bars."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from trading.errors import Invalid
from trading.values import Price, Quantity, non_negative, price, quantity, round_to_step

SYMBOL_RE = re.compile(r"^[A-Z0-9][A-Z0-9._/-]{0,31}$")


def validate_symbol(symbol: Any, *, field: str = "symbol") -> str:
    if not isinstance(symbol, str) or not SYMBOL_RE.fullmatch(symbol):
        raise Invalid("symbol must be 1-32 characters: upper-case letters, digits, . _ / -",
                      field=field)
    return symbol


@dataclass(frozen=True)
class Instrument:
    """A tradable symbol with its price tick, quantity lot and minimum order notional."""

    symbol: str
    tick_size: Decimal
    lot_size: Decimal
    min_notional: Decimal = Decimal(0)

    def __post_init__(self) -> None:
        validate_symbol(self.symbol)
        object.__setattr__(self, "tick_size", price(self.tick_size, field="tick_size"))
        object.__setattr__(self, "lot_size", quantity(self.lot_size, field="lot_size"))
        object.__setattr__(self, "min_notional",
                           non_negative(self.min_notional, field="min_notional"))

    def round_price(self, value: Price) -> Price:
        """The nearest valid price (half-even on the tick grid), never below one tick."""
        return max(self.tick_size, round_to_step(value, self.tick_size))

    def check_order(self, qty: Quantity, px: Price | None) -> None:
        """Refuse quantities off the lot grid, prices off the tick grid, tiny notionals."""
        if qty % self.lot_size != 0:
            raise Invalid(f"quantity must be a multiple of the lot size {self.lot_size}",
                          field="quantity")
        if px is not None:
            if px % self.tick_size != 0:
                raise Invalid(f"price must be a multiple of the tick size {self.tick_size}",
                              field="price")
            if qty * px < self.min_notional:
                raise Invalid(f"order notional {qty * px} is below the minimum "
                              f"{self.min_notional}", field="quantity")


@dataclass(frozen=True)
class Bar:
    """One OHLCV bar; `ts` is the bar's open time in UTC."""

    symbol: str
    ts: datetime
    open: Price
    high: Price
    low: Price
    close: Price
    volume: Quantity

    def __post_init__(self) -> None:
        validate_symbol(self.symbol)
        if not isinstance(self.ts, datetime) or self.ts.tzinfo is None:
            raise Invalid("ts must be a timezone-aware datetime", field="ts")
        object.__setattr__(self, "ts", self.ts.astimezone(UTC))
        for name in ("open", "high", "low", "close"):
            object.__setattr__(self, name, price(getattr(self, name), field=name))
        object.__setattr__(self, "volume", non_negative(self.volume, field="volume"))
        if self.high < max(self.open, self.close, self.low):
            raise Invalid("high must be at least open, close and low", field="high")
        if self.low > min(self.open, self.close):
            raise Invalid("low must be at most open and close", field="low")
