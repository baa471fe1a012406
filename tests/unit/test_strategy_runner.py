"""The live strategy runner with a hand-written fake for the risk gate."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from actors.strategy_runner import StrategyRunner
from trading.instruments import Bar
from trading.orders import Order
from trading.strategy import Strategy, StrategyContext, register

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def bars(closes: list[int], symbol: str = "BTC-USD", start: int = 0) -> list[Bar]:
    return [Bar(symbol, T0 + timedelta(minutes=start + i), c, c + 1, c - 1, c, 10)
            for i, c in enumerate(closes)]


class FakeGate:
    def __init__(self) -> None:
        self.orders: list[tuple[Order, Decimal | None]] = []

    async def send(self, order: Order, last: Decimal | None) -> dict[str, Any]:
        self.orders.append((order, last))
        return {"status": "accepted", "client_order_id": order.client_order_id}


def runner(gate: FakeGate, strategy: str = "sma_crossover", **params: Any) -> StrategyRunner:
    r = StrategyRunner(uuid.UUID(int=7), strategy, ["BTC-USD"], params or {"fast": 2, "slow": 3},
                       cash=Decimal(10_000), positions={}, send=gate.send)
    r.start()
    return r


async def test_orders_carry_the_decision_bar_and_deterministic_ids() -> None:
    gate = FakeGate()
    r = runner(gate)
    await r.on_bars(bars([100, 99, 98, 97, 110]))
    [(order, last)] = gate.orders
    assert order.side.value == "buy" and last == Decimal(110)
    assert order.created_at == T0 + timedelta(minutes=4)
    # The same bar replayed after a restart yields the same client order id.
    gate2 = FakeGate()
    await runner(gate2).on_bars(bars([100, 99, 98, 97, 110]))
    assert gate2.orders[0][0].client_order_id == order.client_order_id


async def test_preloaded_history_skips_the_warm_up() -> None:
    gate = FakeGate()
    r = runner(gate)
    r.ctx.preload(bars([100, 99, 98, 97]))  # stored bars: no orders from them
    assert gate.orders == []
    await r.on_bars(bars([110], start=4))
    assert [o.side.value for o, _ in gate.orders] == ["buy"]


@register
class _Raises(Strategy):
    name = "test_raises_on_second_bar"
    description = "raises on its second bar"
    params = {}

    def __init__(self, symbols: list[str], **params: object) -> None:
        super().__init__(symbols, **params)
        self.n = 0

    def on_bar(self, ctx: StrategyContext, bar: Bar) -> None:
        self.n += 1
        if self.n == 2:
            raise ValueError("bad things")


async def test_a_raising_strategy_records_the_error_and_stops() -> None:
    gate = FakeGate()
    r = StrategyRunner(uuid.UUID(int=8), "test_raises_on_second_bar", ["BTC-USD"], {},
                       cash=Decimal(1), positions={}, send=gate.send)
    r.start()
    await r.on_bars(bars([10, 20, 30, 40]))
    assert r.error == "ValueError: bad things"
    assert r.bars_seen == 2  # nothing after the failure
