"""Response bodies of the market-data routes. Prices and quantities are decimal strings."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel, Field

from trading.instruments import Bar, Instrument


def decimal_text(value: Decimal) -> str:
    """A Decimal as plain positional text (never exponent notation)."""
    return format(value, "f")


class InstrumentOut(BaseModel):
    symbol: str
    tick_size: str = Field(description="decimal string")
    lot_size: str = Field(description="decimal string")
    min_notional: str = Field(description="decimal string")

    @classmethod
    def of(cls, instrument: Instrument) -> InstrumentOut:
        return cls(symbol=instrument.symbol, tick_size=decimal_text(instrument.tick_size),
                   lot_size=decimal_text(instrument.lot_size),
                   min_notional=decimal_text(instrument.min_notional))


class BarOut(BaseModel):
    symbol: str
    ts: datetime = Field(description="the bar's open time (UTC)")
    open: str = Field(description="decimal string")
    high: str = Field(description="decimal string")
    low: str = Field(description="decimal string")
    close: str = Field(description="decimal string")
    volume: str = Field(description="decimal string")

    @classmethod
    def of(cls, bar: Bar) -> BarOut:
        return cls(symbol=bar.symbol, ts=bar.ts, open=decimal_text(bar.open),
                   high=decimal_text(bar.high), low=decimal_text(bar.low),
                   close=decimal_text(bar.close), volume=decimal_text(bar.volume))
