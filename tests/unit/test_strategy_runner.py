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


@register
class _PlaceThenCancel(Strategy):
    """Bar 1: a resting limit buy. Bar 2: cancel it, place and at once cancel another,
    and try to cancel an id it does not own."""

    name = "test_place_then_cancel"
    description = "places a limit order, then cancels it"
    params = {}

    def __init__(self, symbols: list[str], **params: object) -> None:
        super().__init__(symbols, **params)
        self.n = 0
        self.first = ""

    def on_bar(self, ctx: StrategyContext, bar: Bar) -> None:
        self.n += 1
        if self.n == 1:
            self.first = ctx.buy(bar.symbol, Decimal("0.1"), type="limit",
                                 limit_price=Decimal(1))
        elif self.n == 2:
            ctx.cancel(self.first)
            unsent = ctx.buy(bar.symbol, Decimal("0.1"), type="limit", limit_price=Decimal(1))
            ctx.cancel(unsent)
            ctx.cancel("someone-elses-order")


class CancellingGate(FakeGate):
    def __init__(self) -> None:
        super().__init__()
        self.canceled: list[str] = []

    async def cancel(self, client_order_id: str) -> dict[str, Any]:
        self.canceled.append(client_order_id)
        return {"status": "canceled", "client_order_id": client_order_id}


async def test_a_bot_cancels_only_its_own_open_orders() -> None:
    gate = CancellingGate()
    r = StrategyRunner(uuid.UUID(int=9), "test_place_then_cancel", ["BTC-USD"], {},
                       cash=Decimal(100), positions={}, send=gate.send, cancel=gate.cancel)
    r.start()
    await r.on_bars(bars([10]))
    [(first, _)] = gate.orders
    assert r.ctx.open_orders() == [first.client_order_id]
    await r.on_bars(bars([11], start=1))
    assert gate.canceled == [first.client_order_id]  # the unsent one never left the runner
    assert len(gate.orders) == 1 and r.ctx.open_orders() == []
    assert any("someone-elses-order" in line and "ignored" in line for line in r.ctx.logs)


async def test_open_orders_survive_a_restart_and_can_be_canceled() -> None:
    gate = CancellingGate()
    r = StrategyRunner(uuid.UUID(int=9), "test_place_then_cancel", ["BTC-USD"], {},
                       cash=Decimal(100), positions={}, send=gate.send, cancel=gate.cancel)
    r.start()
    r.ctx.restore_open({"stored-1": "BTC-USD"})
    r.strategy.n, r.strategy.first = 1, "stored-1"  # type: ignore[attr-defined]
    await r.on_bars(bars([11], start=1))
    assert gate.canceled == ["stored-1"]


@register
class _BuysEverything(Strategy):
    name = "test_buys_every_bar"
    description = "buys on every bar of every symbol"
    params = {}

    def on_bar(self, ctx: StrategyContext, bar: Bar) -> None:
        ctx.buy(bar.symbol, Decimal("0.1"))


async def test_orders_of_several_symbols_at_one_bar_time_get_distinct_ids() -> None:
    gate = FakeGate()
    r = StrategyRunner(uuid.UUID(int=10), "test_buys_every_bar", ["BTC-USD", "ETH-USD"], {},
                       cash=Decimal(100), positions={}, send=gate.send)
    r.start()
    both = sorted(bars([10, 11], "BTC-USD") + bars([20, 21], "ETH-USD"),
                  key=lambda b: (b.ts, b.symbol))
    await r.on_bars(both)
    ids = [o.client_order_id for o, _ in gate.orders]
    assert len(ids) == 4 and len(set(ids)) == 4
    # the same bars again (a restart) give the same ids
    gate2 = FakeGate()
    r2 = StrategyRunner(uuid.UUID(int=10), "test_buys_every_bar", ["BTC-USD", "ETH-USD"], {},
                        cash=Decimal(100), positions={}, send=gate2.send)
    r2.start()
    await r2.on_bars(both)
    assert [o.client_order_id for o, _ in gate2.orders] == ids


class FlakyGate(FakeGate):
    """Raises on the first `failures` sends (the order is not stored), then answers."""

    def __init__(self, failures: int, status: str = "filled") -> None:
        super().__init__()
        self.failures = failures
        self.status = status

    async def send(self, order: Order, last: Decimal | None) -> dict[str, Any]:
        self.orders.append((order, last))
        if self.failures:
            self.failures -= 1
            raise ConnectionError("risk is unreachable")
        return {"status": self.status, "client_order_id": order.client_order_id}


async def test_an_order_whose_send_raised_stays_open_and_goes_again_with_its_id() -> None:
    gate = FlakyGate(failures=2)
    r = runner(gate)
    assert await r.on_bars(bars([100, 99, 98, 97, 110])) == 1  # the buy signal; the send raised
    [(order, _)] = gate.orders
    cid = order.client_order_id
    assert r.ctx.open_orders("BTC-USD") == [cid] and r.error is None
    assert any("not confirmed" in line for line in r.ctx.logs)
    await r.on_bars(bars([111], start=5))  # sent again before the hook; raises again
    await r.on_bars(bars([112], start=6))  # and again: answered, filled
    assert [o.client_order_id for o, _ in gate.orders] == [cid, cid, cid]
    assert [last for _, last in gate.orders][1:] == [Decimal(111), Decimal(112)]
    assert r.ctx.open_orders() == []
    await r.on_bars(bars([113], start=7))
    assert len(gate.orders) == 3  # confirmed: not sent again


async def test_an_unconfirmed_order_that_fills_is_confirmed_by_its_fill() -> None:
    from trading.orders import Fill, Side

    gate = FlakyGate(failures=1)
    r = runner(gate)
    await r.on_bars(bars([100, 99, 98, 97, 110]))
    cid = gate.orders[0][0].client_order_id
    fill = Fill(f"{cid}:1", cid, "BTC-USD", Side.BUY, Decimal(1), Decimal(111), Decimal(0),
                T0 + timedelta(minutes=5))
    await r.on_fill(fill, Decimal(1), Decimal(9_889), order_open=False)  # it was stored
    await r.on_bars(bars([111], start=5))
    assert len(gate.orders) == 1 and r.ctx.open_orders() == []


async def test_an_order_refused_with_a_definite_error_is_not_sent_again() -> None:
    from trading.errors import Invalid

    class RefusingGate(FakeGate):
        async def send(self, order: Order, last: Decimal | None) -> dict[str, Any]:
            self.orders.append((order, last))
            raise Invalid("quantity is below the lot size", field="quantity")

    gate = RefusingGate()
    r = runner(gate)
    await r.on_bars(bars([100, 99, 98, 97, 110]))
    await r.on_bars(bars([111], start=5))
    assert len(gate.orders) == 1 and r.ctx.open_orders() == []
    assert any("refused: invalid" in line for line in r.ctx.logs), list(r.ctx.logs)
