"""A strategy that fails on purpose (imported through ATP_STRATEGY_MODULES in tests)."""

from __future__ import annotations

from decimal import Decimal

from trading.instruments import Bar
from trading.strategy import Param, Strategy, StrategyContext, register


@register
class Exploding(Strategy):
    name = "exploding"
    description = "Buys once, then raises on its third bar (for tests)."
    params = {}

    def __init__(self, symbols: list[str], **params: object) -> None:
        super().__init__(symbols, **params)
        self.seen = 0

    def on_bar(self, ctx: StrategyContext, bar: Bar) -> None:
        self.seen += 1
        if self.seen == 1:
            ctx.buy(bar.symbol, Decimal("0.01"))
        if self.seen == 3:
            raise RuntimeError("boom on bar 3")


@register
class MemoryHog(Strategy):
    name = "memory_hog"
    description = "Holds `mb` MiB of memory from its start (for the quota watch's tests)."
    params = {"mb": Param(int, 600, min=1)}

    def on_start(self, ctx: StrategyContext) -> None:
        self.ballast = b"\x01" * (self.p.mb * 1024 * 1024)

    def on_bar(self, ctx: StrategyContext, bar: Bar) -> None:
        return None
