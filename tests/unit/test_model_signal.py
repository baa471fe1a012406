"""The `model_signal` strategy: thresholds on a model's scores, in the backtester and the live runner.

The scores are a hand-written table (the `Predictions` port); `test_models_signals.py`
scores bars with a real network.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from actors.strategy_runner import StrategyRunner
from agent.config import BotConfig
from trading.backtest import run_backtest
from trading.errors import Conflict, Invalid, NotFound
from trading.instruments import Bar
from trading.orders import Order
from trading.strategy import get_strategy

T0 = datetime(2030, 1, 1, tzinfo=UTC)
SYMBOL = "BTC-USD"


def bars(n: int, symbol: str = SYMBOL) -> list[Bar]:
    return [Bar(symbol, T0 + timedelta(minutes=i), 100 + i, 101 + i, 99 + i, 100 + i, 10) for i in range(n)]


class Table:
    """Scores by bar index (None: no score at that bar)."""

    def __init__(self, scores: list[float | None], symbol: str = SYMBOL) -> None:
        self.by_ts = {(symbol, T0 + timedelta(minutes=i)): s for i, s in enumerate(scores) if s is not None}

    def score(self, symbol: str, ts: datetime) -> float | None:
        return self.by_ts.get((symbol, ts))


def backtest(scores: list[float | None], **params: Any) -> list[tuple[int, str, Decimal]]:
    """(bar index of the fill, side, quantity) of a backtest on `scores`."""
    result = run_backtest("model_signal", {"model": "trend", **params}, bars(len(scores)), capital=100_000,
                          predictions=Table(scores))
    return [(int((f.ts - T0) / timedelta(minutes=1)), f.side.value, f.quantity) for f in result.fills]


def test_it_is_long_at_or_above_enter_and_out_at_or_below_exit() -> None:
    # Decided on bar t, filled at bar t + 1's open.
    scores = [None, 0.5, 0.55, 0.9, 0.5, 0.46, 0.45, 0.2, 0.6, 0.54, 0.56, None]
    assert backtest(scores) == [(3, "buy", Decimal(1)), (7, "sell", Decimal(1)),
                                (9, "buy", Decimal(1))]


def test_thresholds_quantity_and_shorting_are_parameters() -> None:
    scores = [0.1, 0.9, 0.1, 0.0]
    assert backtest(scores, enter=0.8, exit=0.2, quantity="2.5", allow_short=True) == [
        (1, "sell", Decimal("2.5")), (2, "buy", Decimal(5)), (3, "sell", Decimal(5))]
    # A return model: scores are expected log returns around zero.
    assert backtest([0.0, 0.002, -0.001], enter=0.001, exit=-0.0005) == [(2, "buy", Decimal(1))]


def test_no_score_places_nothing() -> None:
    assert backtest([None] * 5) == []


@pytest.mark.parametrize(("params", "field"), [
    ({}, "params.model"),
    ({"model": "Not A Name"}, "params.model"),
    ({"model": "trend", "enter": 0.4, "exit": 0.6}, "params.exit"),
    ({"model": "trend", "enter": 0.5, "exit": 0.5}, "params.exit"),
    ({"model": "trend", "version": -1}, "params.version"),
    ({"model": "trend", "quantity": 0}, "params.quantity"),
])
def test_bad_parameters_name_the_field(params: dict[str, Any], field: str) -> None:
    with pytest.raises(Invalid) as caught:
        get_strategy("model_signal")([SYMBOL], **params)
    assert caught.value.field == field


def test_engines_must_supply_the_scores() -> None:
    cls = get_strategy("model_signal")
    assert cls.uses_model and not get_strategy("sma_crossover").uses_model
    with pytest.raises(Invalid) as caught:
        run_backtest("model_signal", {"model": "trend"}, bars(3), capital=1000)
    assert caught.value.field == "strategy"
    strategy = cls([SYMBOL], model="trend")
    with pytest.raises(RuntimeError, match="no predictions"):
        strategy.on_bar(None, bars(1)[0])  # type: ignore[arg-type]
    # The agent, offline, has no model to ask: it refuses such a bot up front.
    config = BotConfig(name="m", strategy="model_signal", symbols=(SYMBOL,), params={"model": "trend"})
    with pytest.raises(Invalid, match="platform") as refused:
        config.validate()
    assert refused.value.field == "strategy"


# -- the live runner: scores asked for before each bar's hook -------------------------------


class LiveTable(Table):
    """A live bot's scores (the `LiveScores` port): `observe` is awaited before the hook, and
    only the bar last observed has a score (as with the endpoint)."""

    def __init__(self, scores: list[float | None], fail_at: dict[int, Exception] | None = None) -> None:
        super().__init__(scores)
        self.fail_at = fail_at or {}
        self.events: list[tuple[str, int]] = []
        self._current: datetime | None = None

    async def observe(self, bar: Bar) -> None:
        index = int((bar.ts - T0) / timedelta(minutes=1))
        if index in self.fail_at:
            raise self.fail_at[index]
        self.events.append(("observe", index))
        self._current = bar.ts

    def score(self, symbol: str, ts: datetime) -> float | None:
        self.events.append(("score", int((ts - T0) / timedelta(minutes=1))))
        return super().score(symbol, ts) if ts == self._current else None


class Gate:
    def __init__(self) -> None:
        self.orders: list[Order] = []

    async def send(self, order: Order, last: Decimal | None) -> dict[str, Any]:
        self.orders.append(order)
        return {"status": "filled"}


def live(gate: Gate, scores: LiveTable | None) -> StrategyRunner:
    runner = StrategyRunner(uuid.UUID(int=9), "model_signal", [SYMBOL], {"model": "trend"},
                            cash=Decimal(10_000), positions={}, send=gate.send, scores=scores)
    runner.start()
    return runner


async def test_the_runner_observes_each_bar_before_the_strategy_reads_its_score() -> None:
    gate, scores = Gate(), LiveTable([0.5, 0.7, 0.5])
    runner = live(gate, scores)
    assert await runner.on_bars(bars(3)) == 1
    assert scores.events == [("observe", 0), ("score", 0), ("observe", 1), ("score", 1),
                             ("observe", 2), ("score", 2)]
    assert [(o.side.value, o.created_at) for o in gate.orders] == [("buy", T0 + timedelta(minutes=1))]
    with pytest.raises(Invalid):
        live(gate, None)  # a model strategy without scores is refused when the runner is built


async def test_a_failed_call_costs_the_bar_a_model_gone_stops_the_bot() -> None:
    gate = Gate()
    scores = LiveTable([0.9, 0.9, 0.9, 0.9], fail_at={0: TimeoutError("replica restarting")})
    runner = live(gate, scores)
    await runner.on_bars(bars(2))
    assert runner.error is None and "no model score" in runner.ctx.logs[0]
    assert [o.created_at for o in gate.orders] == [T0 + timedelta(minutes=1)]  # bar 0 had no score

    for error, code in [(Conflict("trend@1 is corrupt", code="model_corrupt"), "model_corrupt"),
                        (NotFound("no model 'trend'", code="model_not_found"), "model_not_found")]:
        runner = live(Gate(), LiveTable([0.9] * 3, fail_at={1: error}))
        await runner.on_bars(bars(3))
        assert runner.error is not None and runner.error.startswith(code)
        assert runner.bars_seen == 2  # it stopped at the bar that failed


def test_the_demo_model_request_and_bot_are_valid() -> None:
    import json
    import re

    from actors.bots import BotSpec
    from actors.training import parse_training
    from serve.demo import DEMO_MODEL, demo_model_request, demo_model_steps

    spec = parse_training(demo_model_request(datetime(2026, 11, 27, 15, tzinfo=UTC)))
    assert spec.name == DEMO_MODEL and spec.run.symbols == ("BTC-USD",)
    assert spec.run.data["interval_seconds"] == 60  # the demo feed's bars
    steps = demo_model_steps("http://h:1", "atp_k", 3)
    assert f"/v1/models/{DEMO_MODEL}/versions/3/promote" in steps[1]
    (body,) = re.findall(r"/v1/bots -d '(.*)'", "\n".join(steps))
    bot = BotSpec.validate(json.loads(body))
    assert bot.strategy == "model_signal" and bot.params["model"] == DEMO_MODEL
