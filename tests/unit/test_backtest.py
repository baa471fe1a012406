"""The event-driven backtester: timing of fills, costs, several symbols, risk limits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from trading.backtest import merge_bars, run_backtest
from trading.errors import Invalid
from trading.instruments import Bar
from trading.orders import OrderStatus, Side
from trading.risk import RiskLimits
from trading.strategy import Param, Strategy, StrategyContext, register

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def bars(symbol: str, opens: list[str], closes: list[str] | None = None) -> list[Bar]:
    closes = closes or opens
    out = []
    for i, (o, c) in enumerate(zip(opens, closes, strict=True)):
        lo, hi = min(Decimal(o), Decimal(c)), max(Decimal(o), Decimal(c))
        out.append(Bar(symbol, T0 + timedelta(minutes=i), Decimal(o), hi, lo, Decimal(c), Decimal(1000)))
    return out


@register
class BuyOnBar(Strategy):
    """Buy `quantity` of every symbol on bar `at` (counted per symbol from 0); sell it on bar `exit`."""

    name = "test_backtest_buy_on_bar"
    description = "buys on chosen bars (for the backtester's tests)"
    params = {"at": Param(int, 0), "exit": Param(int, -1), "quantity": Param(Decimal, Decimal(1))}

    def __init__(self, symbols: list[str], **params: object) -> None:
        super().__init__(symbols, **params)
        self.seen: dict[str, int] = {}

    def on_start(self, ctx: StrategyContext) -> None:
        ctx.log(f"context is a StrategyContext: {isinstance(ctx, StrategyContext)}")

    def on_bar(self, ctx: StrategyContext, bar: Bar) -> None:
        n = self.seen[bar.symbol] = self.seen.get(bar.symbol, -1) + 1
        if n == self.p.at:
            ctx.buy(bar.symbol, self.p.quantity)
        if n == self.p.exit:
            ctx.sell(bar.symbol, ctx.position(bar.symbol))


@register
class HistoryProbe(Strategy):
    """Log the closes of ``ctx.history(symbol, n)`` at every bar."""

    name = "test_backtest_history_probe"
    description = "logs its history (for the backtester's tests)"
    params = {"n": Param(int, 2), "warmup_bars": Param(int, 1)}

    @property
    def warmup(self) -> int:
        return int(self.p.warmup_bars)

    def on_bar(self, ctx: StrategyContext, bar: Bar) -> None:
        ctx.log(" ".join(str(b.close) for b in ctx.history(bar.symbol, self.p.n)))


def test_the_strategy_trades_through_a_strategy_context() -> None:
    result = run_backtest("test_backtest_buy_on_bar", {}, bars("AAPL", ["100"]), capital=1000)
    assert result.logs == [(T0, "context is a StrategyContext: True")]


def test_an_order_fills_at_the_next_bar_open_with_fee_and_slippage() -> None:
    result = run_backtest("test_backtest_buy_on_bar", {"at": 0, "exit": 2, "quantity": 10},
                          bars("AAPL", ["100", "101", "102", "103"], ["100.5", "101.5", "102.5", "103.5"]),
                          capital=10_000, fee_bps=10, slippage_bps=5)
    buy, sell = result.fills
    assert (buy.ts, buy.side, buy.quantity) == (T0 + timedelta(minutes=1), Side.BUY, Decimal(10))
    assert buy.price == Decimal("101.06")  # 101 * 1.0005 = 101.0505, up to the tick
    assert buy.fee == Decimal("1.01060000")
    assert (sell.ts, sell.price) == (T0 + timedelta(minutes=3), Decimal("102.94"))  # 102.9485 down
    assert sell.fee == Decimal("1.02940000")
    expected = Decimal(10_000) + (sell.price - buy.price) * 10 - buy.fee - sell.fee
    assert result.final_equity == expected
    assert [e for _, e in result.equity_curve] == [
        Decimal(10_000), Decimal(10_000) - buy.price * 10 - buy.fee + Decimal("101.5") * 10,
        Decimal(10_000) - buy.price * 10 - buy.fee + Decimal("102.5") * 10, expected]
    assert [o.status for o in result.orders] == [OrderStatus.FILLED, OrderStatus.FILLED]


def test_an_order_on_the_last_bar_is_canceled() -> None:
    result = run_backtest("test_backtest_buy_on_bar", {"at": 1}, bars("AAPL", ["100", "101"]),
                          capital=1000)
    assert result.fills == []
    assert result.orders[0].status is OrderStatus.CANCELED
    assert result.orders[0].reason == "end_of_backtest"
    assert result.final_equity == Decimal(1000)


def test_several_symbols_are_merged_in_time_order_with_one_equity_point_per_time() -> None:
    merged = list(merge_bars(bars("MSFT", ["50", "51", "52"]), bars("AAPL", ["100", "101", "102"])))
    assert [(b.ts, b.symbol) for b in merged] == sorted((b.ts, b.symbol) for b in merged)
    result = run_backtest("test_backtest_buy_on_bar", {"at": 0}, merged, capital=1000)
    assert result.symbols == ("AAPL", "MSFT")
    assert [(f.symbol, f.price) for f in result.fills] == [("AAPL", Decimal(101)), ("MSFT", Decimal(51))]
    assert len(result.equity_curve) == 3
    assert result.final_equity == Decimal(1000) + 1 + 1


@pytest.mark.parametrize("stream", [
    list(reversed(bars("AAPL", ["100", "101"]))),  # time going back
    bars("MSFT", ["50"]) + bars("AAPL", ["100"]),  # one time, symbols out of order
    bars("AAPL", ["100"]) * 2,  # a bar twice
])
def test_bars_out_of_order_are_refused(stream: list[Bar]) -> None:
    with pytest.raises(Invalid) as exc:
        run_backtest("test_backtest_buy_on_bar", {}, stream, capital=1000, symbols=["AAPL", "MSFT"])
    assert exc.value.field == "bars"


def test_risk_limits_reject_orders_with_a_reason() -> None:
    result = run_backtest("test_backtest_buy_on_bar", {"quantity": 5}, bars("AAPL", ["100", "101"]),
                          capital=1000, risk_limits=RiskLimits(max_position_per_symbol=Decimal(2)))
    assert result.fills == []
    assert result.orders[0].status is OrderStatus.REJECTED
    assert result.rejections[0][2].startswith("max_position")


def test_the_drawdown_kill_switch_halts_trading() -> None:
    result = run_backtest("test_backtest_buy_on_bar", {"at": 0, "exit": 3, "quantity": 10},
                          bars("AAPL", ["100", "100", "50", "50", "50"]), capital=1000,
                          risk_limits=RiskLimits(max_drawdown_pct=Decimal(10)))
    assert [kind for _, kind, _ in result.risk_events] == ["kill_switch"]
    assert [f.side for f in result.fills] == [Side.BUY]  # the exit was refused: halted
    assert result.orders[1].reason is not None and result.orders[1].reason.startswith("halted")


def test_unknown_parameters_and_strategies_are_invalid() -> None:
    with pytest.raises(Invalid):
        run_backtest("sma_crossover", {"nope": 1}, bars("AAPL", ["100"]), capital=1000)
    with pytest.raises(Invalid):
        run_backtest("no_such_strategy", {}, bars("AAPL", ["100"]), capital=1000)
    with pytest.raises(Invalid):
        run_backtest("sma_crossover", {}, [], capital=1000)


@pytest.mark.parametrize(("n", "last"), [(2, ["103 104", "53 54"]), (10, ["101 102 103 104", "51 52 53 54"]),
                                          (0, ["", ""])])
def test_history_is_the_last_bars_of_the_symbol_oldest_first(n: int, last: list[str]) -> None:
    merged = merge_bars(bars("AAPL", ["100", "101", "102", "103", "104"]),
                        bars("MSFT", ["50", "51", "52", "53", "54"]))
    result = run_backtest("test_backtest_history_probe", {"n": n, "warmup_bars": 3}, merged, capital=1000,
                          symbols=["AAPL", "MSFT"])
    logs = [message for _, message in result.logs]
    assert logs[-2:] == last  # the engine keeps warmup + 1 bars per symbol
    if n:
        assert logs[:4] == ["100", "50", "100 101", "50 51"]


@register
class OrderKinds(Strategy):
    """Place one order of each kind on the first bar; cancel the resting limit on the third."""

    name = "test_backtest_order_kinds"
    description = "places every kind of order (for the backtester's tests)"

    def __init__(self, symbols: list[str], **params: object) -> None:
        super().__init__(symbols, **params)
        self.n = -1
        self.placed: dict[str, str] = {}

    def on_bar(self, ctx: StrategyContext, bar: Bar) -> None:
        self.n += 1
        symbol, one = bar.symbol, Decimal(1)
        if self.n == 0:
            self.placed = {
                "rest": ctx.buy(symbol, one, type="limit", limit_price=Decimal(90)),
                "stop": ctx.buy(symbol, one, type="stop", stop_price=Decimal("101.5")),
                "stop_limit": ctx.sell(symbol, one, type="stop_limit", stop_price=Decimal(99),
                                       limit_price=Decimal("98.5")),
                "ioc": ctx.buy(symbol, one, type="limit", limit_price=Decimal(95), time_in_force="ioc"),
                "day": ctx.sell(symbol, one, type="limit", limit_price=Decimal(150), time_in_force="day"),
                "gtc": ctx.sell(symbol, one, type="limit", limit_price=Decimal(150)),
            }
        if self.n == 2:
            ctx.cancel(self.placed["rest"])
            ctx.cancel("bt-999")


def test_every_order_kind_ends_in_its_state_with_its_reason() -> None:
    day2 = Bar("AAPL", datetime(2024, 1, 2, tzinfo=UTC), *[Decimal(100)] * 4, Decimal(1000))
    stream = [*bars("AAPL", ["100", "102", "98"]), day2]
    result = run_backtest("test_backtest_order_kinds", {}, stream, capital=10_000)
    states = {o.client_order_id: (o.status, o.reason, o.filled_quantity, o.triggered) for o in result.orders}
    assert states == {
        "bt-1": (OrderStatus.CANCELED, "canceled", 0, False),
        "bt-2": (OrderStatus.FILLED, None, 1, False),  # the broker keeps the trigger to itself
        "bt-3": (OrderStatus.FILLED, None, 1, False),
        "bt-4": (OrderStatus.CANCELED, "ioc_unfilled", 0, False),
        "bt-5": (OrderStatus.EXPIRED, "end_of_day", 0, False),
        "bt-6": (OrderStatus.CANCELED, "end_of_backtest", 0, False),
    }
    # the stop-limit sell triggers at 98 (< 99) but its 98.5 limit is out of reach until day 2
    assert [(f.client_order_id, f.price) for f in result.fills] == [("bt-2", Decimal(102)),
                                                                    ("bt-3", Decimal(100))]
    assert result.orders[1].average_fill_price == Decimal(102)
    assert [message for _, message in result.logs] == ["cancel ignored: bt-999 is not an open order"]
