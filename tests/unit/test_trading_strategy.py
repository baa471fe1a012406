"""Strategies: parameters, the registry, the built-ins' signals and the orders they place."""

from __future__ import annotations

import json
import pickle
import random
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import trading.strategy as strategy_module
from trading.builtin_strategies import (
    BreakoutStrategy,
    RsiMeanReversion,
    SmaCross,
    SmaCrossover,
    breakout_signals,
    rsi_signals,
    sma_crossover_signals,
    wilder_rsi,
)
from trading.errors import Invalid
from trading.instruments import Bar
from trading.strategy import Param, Strategy, StrategyContext, get_strategy, register, strategies

T0 = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
ZERO = Decimal(0)


# --- a hand-written context -------------------------------------------------------------------

@dataclass(frozen=True)
class Placed:
    bar: int  # index of the bar being processed when the order was placed
    side: str
    symbol: str
    quantity: Decimal
    type: str


class FakeContext:
    """Records orders; the test decides when they fill (`fill_all`) and what the positions are."""

    def __init__(self) -> None:
        self.bars: dict[str, list[Bar]] = {}
        self.positions: dict[str, Decimal] = {}
        self.orders: list[Placed] = []
        self.open: dict[str, str] = {}  # client order id -> symbol
        self.logs: list[str] = []
        self.history_requests: list[int] = []
        self.index = -1
        self._now = T0
        self._cash = Decimal(100_000)

    @property
    def now(self) -> datetime:
        return self._now

    @property
    def cash(self) -> Decimal:
        return self._cash

    @property
    def equity(self) -> Decimal:
        return self._cash + sum((q * (self.last_price(s) or ZERO) for s, q in self.positions.items()), ZERO)

    def _place(self, side: str, symbol: str, quantity: Decimal, type: str) -> str:
        client_order_id = f"o{len(self.orders) + 1}"
        self.orders.append(Placed(self.index, side, symbol, Decimal(quantity), type))
        self.open[client_order_id] = symbol
        return client_order_id

    def buy(self, symbol: str, quantity: Decimal, *, type: str = "market",
            limit_price: Decimal | None = None, stop_price: Decimal | None = None,
            time_in_force: str = "gtc") -> str:
        return self._place("buy", symbol, quantity, type)

    def sell(self, symbol: str, quantity: Decimal, *, type: str = "market",
             limit_price: Decimal | None = None, stop_price: Decimal | None = None,
             time_in_force: str = "gtc") -> str:
        return self._place("sell", symbol, quantity, type)

    def cancel(self, client_order_id: str) -> None:
        self.open.pop(client_order_id, None)

    def position(self, symbol: str) -> Decimal:
        return self.positions.get(symbol, ZERO)

    def last_price(self, symbol: str) -> Decimal | None:
        bars = self.bars.get(symbol)
        return bars[-1].close if bars else None

    def history(self, symbol: str, n: int) -> Sequence[Bar]:
        self.history_requests.append(n)
        return self.bars.get(symbol, [])[-n:]

    def open_orders(self, symbol: str | None = None) -> Sequence[str]:
        return [c for c, s in self.open.items() if symbol is None or s == symbol]

    def log(self, message: str) -> None:
        self.logs.append(message)

    def fill_all(self) -> None:
        """Fill every open order in full (positions only; cash is not tracked)."""
        for client_order_id in list(self.open):
            order = self.orders[int(client_order_id[1:]) - 1]
            sign = 1 if order.side == "buy" else -1
            self.positions[order.symbol] = self.position(order.symbol) + sign * order.quantity
            del self.open[client_order_id]

    def preload(self, bars: Sequence[Bar]) -> None:
        for bar in bars:
            self.bars.setdefault(bar.symbol, []).append(bar)

    def feed(self, strategy: Strategy, bar: Bar) -> None:
        self.index += 1
        self._now = bar.ts
        self.bars.setdefault(bar.symbol, []).append(bar)
        strategy.on_bar(self, bar)


def run(strategy: Strategy, bars: Sequence[Bar], ctx: FakeContext | None = None,
        fill: bool = True) -> FakeContext:
    ctx = ctx or FakeContext()
    strategy.on_start(ctx)
    for bar in bars:
        ctx.feed(strategy, bar)
        if fill:
            ctx.fill_all()
    strategy.on_stop(ctx)
    return ctx


def trades(ctx: FakeContext) -> list[tuple[int, str, Decimal]]:
    return [(o.bar, o.side, o.quantity) for o in ctx.orders]


def make_bars(closes: Sequence[Any], symbol: str = "AAPL", spread: Any = 0) -> list[Bar]:
    """Bars with open = close and high/low `spread` away from the close."""
    out = []
    for i, c in enumerate(closes):
        close = Decimal(str(c))
        out.append(Bar(symbol, T0 + timedelta(minutes=i), close, close + Decimal(str(spread)),
                       close - Decimal(str(spread)), close, Decimal(100)))
    return out


def random_walk(n: int, seed: int) -> list[Decimal]:
    rng = random.Random(seed)
    price, out = Decimal(100), []
    for _ in range(n):
        price = max(Decimal(5), price + Decimal(rng.randint(-150, 150)) / 100)
        out.append(price)
    return out


def expected_trades(signals: Sequence[int], quantity: Decimal, allow_short: bool) -> list[tuple[int, str,
                                                                                                Decimal]]:
    """The orders the built-ins' rule gives for `signals`, every order filling at once."""
    position, out = ZERO, []
    for t, signal in enumerate(signals):
        if signal > 0 and position <= 0:
            out.append((t, "buy", quantity - position))
            position = quantity
        elif signal < 0:
            target = -quantity if allow_short else ZERO
            if position > target:
                out.append((t, "sell", position - target))
                position = target
    return out


def test_fake_context_satisfies_the_protocol() -> None:
    assert isinstance(FakeContext(), StrategyContext)


# --- Param -------------------------------------------------------------------------------------

FAST = Param(int, 10, min=2, max=500)
RATIO = Param(float, 0.5, min=0.0, max=1.0)
QTY = Param(Decimal, Decimal(1), min=Decimal(0), min_exclusive=True)
FLAG = Param(bool, False)
MODE = Param(str, "fast", choices=("fast", "slow"))


@pytest.mark.parametrize(("param", "value", "expected"), [
    (FAST, 20, 20), (FAST, "20", 20), (FAST, 20.0, 20), (FAST, Decimal("20"), 20), (FAST, np.int64(7), 7),
    (FAST, 2, 2), (FAST, 500, 500),
    (RATIO, 0.25, 0.25), (RATIO, "0.25", 0.25), (RATIO, 1, 1.0), (RATIO, Decimal("0.1"), 0.1),
    (RATIO, np.float64(0.75), 0.75),
    (QTY, "1.5", Decimal("1.5")), (QTY, 0.1, Decimal("0.1")), (QTY, 3, Decimal(3)),
    (FLAG, True, True), (FLAG, False, False),
    (MODE, "slow", "slow"),
])
def test_param_coerces_json_ish_values(param: Param, value: Any, expected: Any) -> None:
    result = param.coerce("x", value)
    assert result == expected
    assert type(result) is param.type


@pytest.mark.parametrize(("param", "value", "message"), [
    (FAST, True, "params.x must be an integer between 2 and 500"),  # a bool is not an int here
    (FAST, 1, "params.x must be an integer between 2 and 500"),
    (FAST, 501, "params.x must be an integer between 2 and 500"),
    (FAST, 2.5, "params.x must be an integer between 2 and 500"),
    (FAST, "2.5", "params.x must be an integer between 2 and 500"),
    (FAST, "ten", "params.x must be an integer between 2 and 500"),
    (FAST, float("nan"), "params.x must be an integer between 2 and 500"),
    (FAST, None, "params.x must be an integer between 2 and 500"),
    (RATIO, float("nan"), "params.x must be a number between 0.0 and 1.0"),
    (RATIO, float("inf"), "params.x must be a number between 0.0 and 1.0"),
    (RATIO, "nan", "params.x must be a number between 0.0 and 1.0"),
    (RATIO, True, "params.x must be a number between 0.0 and 1.0"),
    (RATIO, 1.5, "params.x must be a number between 0.0 and 1.0"),
    (RATIO, [0.5], "params.x must be a number between 0.0 and 1.0"),
    (QTY, 0, "params.x must be a number greater than 0"),
    (QTY, "-1", "params.x must be a number greater than 0"),
    (QTY, "NaN", "params.x must be a number greater than 0"),
    (QTY, True, "params.x must be a number greater than 0"),
    (FLAG, 1, "params.x must be true or false"),  # an int is not a bool
    (FLAG, "true", "params.x must be true or false"),
    (MODE, "medium", "params.x must be one of 'fast', 'slow'"),
    (MODE, 1, "params.x must be one of 'fast', 'slow'"),
])
def test_param_refuses_bad_values_naming_the_field(param: Param, value: Any, message: str) -> None:
    with pytest.raises(Invalid) as err:
        param.coerce("x", value)
    assert err.value.field == "params.x"
    assert err.value.message == message


def test_param_bound_messages() -> None:
    assert Param(int, 5, min=1).requirement() == "an integer at least 1"
    assert Param(int, 5, max=9).requirement() == "an integer at most 9"
    assert Param(Decimal, 5, min=0, max=9, min_exclusive=True).requirement() == \
        "a number greater than 0 and at most 9"


@pytest.mark.parametrize("build", [
    lambda: Param(list, []),
    lambda: Param(bool, False, min=0),
    lambda: Param(int, 1000, max=500),
    lambda: Param(int, 5, min=10, max=1),
    lambda: Param(int, "x"),
    lambda: Param(str, "a", choices=()),
])
def test_param_refuses_bad_declarations(build: Callable[[], Param]) -> None:
    with pytest.raises((TypeError, ValueError)):
        build()


def test_param_converts_its_declaration() -> None:
    param = Param(Decimal, "1.5", min=0, max="10")
    assert (param.default, param.min, param.max) == (Decimal("1.5"), Decimal(0), Decimal(10))


# --- Strategy construction, registry, describe -------------------------------------------------

def test_params_are_coerced_defaulted_and_read_only() -> None:
    s = SmaCrossover(["AAPL", "MSFT"], fast="5", quantity="2.5")
    assert s.symbols == ("AAPL", "MSFT")
    assert dict(s.p) == {"fast": 5, "slow": 30, "quantity": Decimal("2.5"), "allow_short": False}
    assert s.p.fast == 5 and s.p["slow"] == 30
    with pytest.raises(AttributeError):
        s.p.fast = 3
    with pytest.raises(TypeError):
        s.p["fast"] = 3
    copy = pickle.loads(pickle.dumps(s))  # strategies travel to Ray actors
    assert dict(copy.p) == dict(s.p) and copy.symbols == s.symbols


@pytest.mark.parametrize(("kwargs", "field", "words"), [
    ({"fsat": 3}, "params.fsat", "fast"),
    ({"fast": True}, "params.fast", "integer"),
    ({"fast": 0}, "params.fast", "integer"),
    ({"quantity": 0}, "params.quantity", "greater than 0"),
    ({"quantity": "abc"}, "params.quantity", "number"),
    ({"allow_short": "yes"}, "params.allow_short", "true or false"),
    ({"fast": 30, "slow": 30}, "params.fast", "below"),
    ({"fast": 40}, "params.fast", "below"),
])
def test_bad_strategy_params_name_the_field(kwargs: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(Invalid) as err:
        SmaCrossover(["AAPL"], **kwargs)
    assert err.value.field == field
    assert words in err.value.message


def test_rsi_thresholds_must_be_ordered() -> None:
    with pytest.raises(Invalid) as err:
        RsiMeanReversion(["AAPL"], oversold=70, overbought="30")
    assert err.value.field == "params.oversold"
    assert RsiMeanReversion(["AAPL"], oversold=25.5).p.oversold == Decimal("25.5")


@pytest.mark.parametrize("symbols", [[], (), "AAPL", ["aapl"], ["AAPL", "AAPL"], [1], None])
def test_bad_symbols_are_refused(symbols: Any) -> None:
    with pytest.raises(Invalid) as err:
        BreakoutStrategy(symbols)
    assert err.value.field == "symbols"


def test_registry_lists_and_finds_the_builtins() -> None:
    assert set(strategies()) >= {"sma_crossover", "rsi_mean_reversion", "breakout"}
    assert get_strategy("sma_crossover") is SmaCrossover
    assert get_strategy("rsi_mean_reversion") is RsiMeanReversion
    assert get_strategy("breakout") is BreakoutStrategy


@pytest.mark.parametrize("name", ["nope", "", None, 3])
def test_unknown_strategy_names_the_field_and_the_known_ones(name: Any) -> None:
    with pytest.raises(Invalid) as err:
        get_strategy(name)
    assert err.value.field == "strategy"
    assert "sma_crossover" in err.value.message and "breakout" in err.value.message


def test_register(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(strategy_module, "_REGISTRY", dict(strategy_module._REGISTRY))

    @register
    class Dummy(Strategy):
        name = "dummy_test"
        description = "Does nothing."
        params = {"n": Param(int, 3, min=1)}

    assert get_strategy("dummy_test") is Dummy
    assert register(Dummy) is Dummy  # registering the same class again is harmless
    assert Dummy(["X"]).p.n == 3

    class Impostor(Strategy):
        name = "dummy_test"

    with pytest.raises(ValueError, match="taken"):
        register(Impostor)

    class Nameless(Strategy):
        pass

    with pytest.raises(TypeError):
        register(Nameless)
    with pytest.raises(TypeError):
        register(int)  # type: ignore[type-var]


def test_params_must_be_declared_as_params() -> None:
    with pytest.raises(TypeError):
        type("Bad", (Strategy,), {"params": {"n": 3}})
    with pytest.raises(TypeError):
        type("Bad", (Strategy,), {"params": {"symbols": Param(int, 1)}})


def test_base_strategy_hooks_do_nothing() -> None:
    s = Strategy(["AAPL"])
    ctx = run(s, make_bars([10, 11, 12]))
    assert ctx.orders == [] and dict(s.p) == {}
    with pytest.raises(Invalid) as err:
        Strategy(["AAPL"], x=1)
    assert err.value.field == "params.x"


@pytest.mark.parametrize("first", ["trading.strategy", "trading.builtin_strategies"])
def test_the_builtins_register_whichever_module_is_imported_first(first: str) -> None:
    code = (f"import {first}; from trading.strategy import strategies; "
            "print(','.join(strategies()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "breakout,model_signal,rsi_mean_reversion,sma_crossover"


def test_describe_is_json_friendly() -> None:
    for name, cls in strategies().items():
        described = json.loads(json.dumps(cls.describe()))
        assert described["name"] == name and described["description"]
        assert set(described["params"]) == set(cls.params)
    sma = SmaCrossover.describe()["params"]
    assert sma["fast"] == {"type": "int", "default": 10, "min": 1, "max": 1000, "min_exclusive": False,
                           "choices": None, "description": "bars in the fast moving average"}
    assert sma["quantity"]["type"] == "decimal" and sma["quantity"]["default"] == "1"
    assert sma["quantity"]["min"] == "0" and sma["quantity"]["min_exclusive"] is True
    assert sma["allow_short"]["type"] == "bool" and sma["allow_short"]["default"] is False
    assert RsiMeanReversion.describe()["params"]["oversold"]["default"] == "30"


# --- SMA crossover -----------------------------------------------------------------------------

SMA_CLOSES = [10, 10, 10, 10, 10, 12, 14, 14, 10, 8, 8, 8]  # fast 2 / slow 4: up at 5, down at 8


def test_sma_signals_on_a_crafted_series() -> None:
    expected = [0] * 12
    expected[5], expected[8] = 1, -1
    assert sma_crossover_signals([Decimal(c) for c in SMA_CLOSES], 2, 4) == expected
    assert sma_crossover_signals(np.array(SMA_CLOSES, dtype=float), 2, 4) == expected


def test_sma_signals_match_a_brute_force_reference_and_never_look_ahead() -> None:
    closes = random_walk(300, seed=1)
    got = sma_crossover_signals(closes, 5, 20)
    # fast SMA - slow SMA; dividing by 5 and 20 is exact for these two-decimal prices
    gap: list[Decimal | None] = [
        None if t < 19 else sum(closes[t - 4:t + 1], ZERO) / 5 - sum(closes[t - 19:t + 1], ZERO) / 20
        for t in range(300)]
    for t in range(300):
        before, now = (gap[t - 1], gap[t]) if t else (None, None)
        want = 0
        if before is not None and now is not None:
            want = 1 if now > 0 >= before else -1 if now < 0 <= before else 0
        assert got[t] == want, t
    assert any(got)
    for end in (20, 57, 150, 299):
        assert sma_crossover_signals(closes[:end], 5, 20) == got[:end]


@pytest.mark.parametrize(("args", "field"), [
    ((5, 5), "fast"), ((0, 5), "fast"), ((True, 5), "fast"), ((2, 1), "slow")])
def test_sma_signal_arguments_are_checked(args: tuple[Any, Any], field: str) -> None:
    with pytest.raises(Invalid) as err:
        sma_crossover_signals(SMA_CLOSES, *args)
    assert err.value.field == field
    with pytest.raises(Invalid):
        sma_crossover_signals([1.0, float("nan"), 2.0], 1, 2)


FINER = [Decimal("0.005"), Decimal("0.0001"), Decimal("5E-9")]  # more decimal places than cents


@pytest.mark.parametrize("seed", range(8))
def test_the_incremental_sma_cross_gives_the_signals_of_sma_crossover_signals(seed: int) -> None:
    rng = random.Random(seed)
    fast = rng.randint(1, 9)
    slow = rng.randint(fast + 1, 30)
    walk = random_walk(600, seed)
    finer = [c + rng.choice(FINER) if rng.random() < 0.03 else c for c in walk]  # units refined mid-way
    ties = [Decimal(rng.choice([10, 11, 12])) for _ in range(600)]  # the averages are often equal
    for closes in (walk, finer, ties):
        cross = SmaCross(fast, slow)
        got = [cross.update(c) for c in closes]
        assert got == sma_crossover_signals(closes, fast, slow)
        assert got.count(1) and got.count(-1)
    with pytest.raises(Invalid):
        SmaCross(5, 5)


def test_the_sma_cross_remembers_a_bounded_number_of_closes_by_their_text() -> None:
    rng = random.Random(3)
    walk = random_walk(400, 3)
    spelled = [Decimal(f"{c:.4f}") if rng.random() < 0.2 else c for c in walk]  # 100.5000 and 100.50
    spelled += [Decimal("1E+2"), Decimal("100"), Decimal("100.125"), Decimal("100.12")]  # a finer unit
    small = SmaCross(3, 7)
    small.MEMO = 5  # forgets all the time
    usual = SmaCross(3, 7)
    assert [small.update(c) for c in spelled] == [usual.update(c) for c in spelled] \
        == sma_crossover_signals(spelled, 3, 7)
    assert len(small._counts) <= 5 and len(usual._counts) <= SmaCross.MEMO


def test_sma_crossover_buys_then_sells_at_the_crosses() -> None:
    ctx = run(SmaCrossover(["AAPL"], fast=2, slow=4, quantity=5), make_bars(SMA_CLOSES))
    assert trades(ctx) == [(5, "buy", Decimal(5)), (8, "sell", Decimal(5))]
    assert all(o.type == "market" for o in ctx.orders)
    assert ctx.positions["AAPL"] == 0
    assert set(ctx.history_requests) == {5}
    assert "crossed above" in ctx.logs[0]


def test_sma_crossover_goes_short_when_allowed() -> None:
    ctx = run(SmaCrossover(["AAPL"], fast=2, slow=4, allow_short=True), make_bars(SMA_CLOSES))
    assert trades(ctx) == [(5, "buy", Decimal(1)), (8, "sell", Decimal(2))]
    assert ctx.positions["AAPL"] == -1


def test_no_trades_before_enough_history() -> None:
    # rising from the second bar: fast > slow at once, but no cross can be seen before bar `slow`
    closes = [10, 10, 11, 12, 13, 14, 15]
    ctx = run(SmaCrossover(["AAPL"], fast=2, slow=4), make_bars(closes[:4]))
    assert ctx.orders == []
    ctx = run(SmaCrossover(["AAPL"], fast=2, slow=4), make_bars(closes))
    assert ctx.orders == []  # the cross happened at bar 2, before the strategy could see it
    ctx = run(BreakoutStrategy(["AAPL"], lookback=3), make_bars([10, 20, 30], spread=1))
    assert ctx.orders == []
    ctx = run(RsiMeanReversion(["AAPL"], period=3), make_bars([50, 40, 30, 20]))
    assert ctx.orders == []


@pytest.mark.parametrize("allow_short", [False, True])
@pytest.mark.parametrize(("make", "signals"), [
    (lambda short: SmaCrossover(["AAPL"], fast=3, slow=8, quantity=2, allow_short=short),
     lambda cl: sma_crossover_signals(cl, 3, 8)),
    (lambda short: RsiMeanReversion(["AAPL"], period=5, quantity=2, allow_short=short),
     lambda cl: rsi_signals(cl, 5, 30, 70)),
    (lambda short: BreakoutStrategy(["AAPL"], lookback=6, quantity=2, allow_short=short),
     lambda cl: breakout_signals([c + 1 for c in cl], [c - 1 for c in cl], cl, 6)),
])
def test_bar_by_bar_trades_equal_the_vectorised_signals(
        make: Callable[[bool], Strategy], signals: Callable[[list[Decimal]], list[int]],
        allow_short: bool) -> None:
    closes = random_walk(400, seed=11)
    ctx = run(make(allow_short), make_bars(closes, spread=1))
    want = expected_trades(signals(closes), Decimal(2), allow_short)
    assert len(want) > 4
    assert trades(ctx) == want


@pytest.mark.parametrize(("make", "signals", "warmup"), [
    (lambda: SmaCrossover(["AAPL"], fast=3, slow=8), lambda cl: sma_crossover_signals(cl, 3, 8), 9),
    (lambda: BreakoutStrategy(["AAPL"], lookback=6),
     lambda cl: breakout_signals([c + 1 for c in cl], [c - 1 for c in cl], cl, 6), 7),
])
def test_a_live_start_seeds_from_preloaded_history_and_ignores_repeated_bars(
        make: Callable[[], Strategy], signals: Callable[[list[Decimal]], list[int]], warmup: int) -> None:
    closes = random_walk(400, seed=17)
    bars = make_bars(closes, spread=1)
    every = signals(closes)
    start = next(t for t in range(100, 400) if every[t] > 0)  # a bar where the full series buys
    ctx = FakeContext()
    ctx.preload(bars[:start])  # a live bot started with `start` bars of history
    ctx.index = start - 1
    strategy = make()
    for bar in bars[start:]:
        ctx.feed(strategy, bar)
        strategy.on_bar(ctx, bar)  # the same bar again changes nothing
        ctx.fill_all()
    want = [(t + start, side, qty) for t, side, qty in expected_trades(every[start:], Decimal(1), False)]
    assert trades(ctx)[0] == (start, "buy", Decimal(1))  # seeded: it trades on its first bar
    assert trades(ctx) == want
    assert ctx.history_requests == [warmup]  # read once, on the first bar


# --- RSI ---------------------------------------------------------------------------------------

def reference_rsi(closes: Sequence[float], period: int) -> list[float | None]:
    """Wilder's RSI written out plainly in floats."""
    out: list[float | None] = [None] * len(closes)
    changes = [closes[i] - closes[i - 1] for i in range(1, len(closes))]
    if len(changes) < period:
        return out
    gain = sum(max(c, 0.0) for c in changes[:period]) / period
    loss = sum(max(-c, 0.0) for c in changes[:period]) / period
    for i in range(period, len(closes)):
        if i > period:
            c = changes[i - 1]
            gain = (gain * (period - 1) + max(c, 0.0)) / period
            loss = (loss * (period - 1) + max(-c, 0.0)) / period
        out[i] = 50.0 if gain == loss == 0 else 100.0 if loss == 0 else 100 - 100 / (1 + gain / loss)
    return out


# The closes of the classic StockCharts RSI(14) example (its table rounds the averages, giving 70.53).
CLASSIC = [44.34, 44.09, 44.15, 43.61, 44.33, 44.83, 45.10, 45.42, 45.84, 46.08, 45.89, 46.03, 45.61,
           46.28, 46.28, 46.00, 46.03, 46.41, 46.22, 45.64, 46.21, 46.25, 45.71, 46.45, 45.78, 45.35,
           44.03, 44.18, 44.22, 44.57, 43.42, 42.66, 43.13]
RSI_CLOSES = [50, 51, 52, 53, 52, 50, 47, 44, 42, 43, 46, 50, 55, 57, 56, 52, 48, 45, 46, 50]


@pytest.mark.parametrize(("closes", "period"), [
    (CLASSIC, 14), (RSI_CLOSES, 3), ([float(c) for c in random_walk(200, seed=3)], 9),
    ([10.0] * 6, 3)])
def test_rsi_matches_the_reference(closes: list[float], period: int) -> None:
    got = wilder_rsi([Decimal(str(c)) for c in closes], period)
    want = reference_rsi(closes, period)
    assert [g is None for g in got] == [w is None for w in want]
    for g, w in zip(got, want, strict=True):
        if g is not None and w is not None:
            assert float(g) == pytest.approx(w, abs=1e-9)


def test_rsi_known_values() -> None:
    got = wilder_rsi(CLASSIC, 14)
    assert got[:14] == [None] * 14
    assert round(got[14], 2) == Decimal("70.46")  # type: ignore[arg-type]
    assert round(got[15], 2) == Decimal("66.25")  # type: ignore[arg-type]
    assert wilder_rsi([10, 11, 12, 13], 3)[3] == 100
    assert wilder_rsi(np.array([10.0, 10.0, 10.0, 10.0]), 3)[3] == 50


def test_rsi_signals_on_a_crafted_series() -> None:
    # RSI(3): ... 33.33, 15.69 (crosses below 30 at 6) ... 58.54, 78.34 (above 70 at 11) ... 42.18, 24.96 (16)
    expected = [0] * 20
    expected[6], expected[11], expected[16] = 1, -1, 1
    assert rsi_signals(RSI_CLOSES, 3, 30, 70) == expected
    # 20 / 90: 33.33 -> 15.69 crosses 20 (6), 88.57 -> 91.10 crosses 90 (13), 24.96 -> 17.10 (17)
    expected = [0] * 20
    expected[6], expected[13], expected[17] = 1, -1, 1
    assert rsi_signals(RSI_CLOSES, 3, Decimal(20), 90.0) == expected


def test_rsi_strategy_trades() -> None:
    ctx = run(RsiMeanReversion(["AAPL"], period=3), make_bars(RSI_CLOSES))
    assert trades(ctx) == [(6, "buy", Decimal(1)), (11, "sell", Decimal(1)), (16, "buy", Decimal(1))]
    ctx = run(RsiMeanReversion(["AAPL"], period=3, allow_short=True, quantity=3), make_bars(RSI_CLOSES))
    assert trades(ctx) == [(6, "buy", Decimal(3)), (11, "sell", Decimal(6)), (16, "buy", Decimal(6))]


def test_rsi_strategy_seeds_from_preloaded_history_and_ignores_repeated_bars() -> None:
    bars = make_bars(RSI_CLOSES)
    for position, want in [(ZERO, [(16, "buy", Decimal(1))]),
                           (Decimal(1), [(11, "sell", Decimal(1)), (16, "buy", Decimal(1))])]:
        ctx = FakeContext()
        ctx.preload(bars[:10])  # a live bot started with ten bars of history
        ctx.positions["AAPL"] = position
        ctx.index = 9
        strategy = RsiMeanReversion(["AAPL"], period=3)
        for bar in bars[10:]:
            ctx.feed(strategy, bar)
            strategy.on_bar(ctx, bar)  # the same bar again changes nothing
            ctx.fill_all()
        assert trades(ctx) == want


# --- breakout ----------------------------------------------------------------------------------

BREAKOUT_CLOSES = [10, 11, 10, 11, 13, 12, 12, 11, 9, 8, 10]  # high = close + 1, low = close - 1


def test_breakout_signals_on_a_crafted_series() -> None:
    cl = [Decimal(c) for c in BREAKOUT_CLOSES]
    highs, lows = [c + 1 for c in cl], [c - 1 for c in cl]
    expected = [0] * 11
    expected[4], expected[8] = 1, -1  # 13 > max(12, 11, 12); 9 < min(11, 11, 10)
    assert breakout_signals(highs, lows, cl, 3) == expected
    assert breakout_signals(np.array(highs, dtype=float), np.array(lows, dtype=float),
                            np.array(cl, dtype=float), 3) == expected
    with pytest.raises(Invalid):
        breakout_signals(highs, lows, cl[:-1], 3)
    with pytest.raises(Invalid):
        breakout_signals(highs, lows, cl, 0)


def test_breakout_signals_match_a_brute_force_reference() -> None:
    cl = random_walk(300, seed=5)
    highs, lows = [c + Decimal("0.5") for c in cl], [c - Decimal("0.7") for c in cl]
    got = breakout_signals(highs, lows, cl, 10)
    for t in range(300):
        want = 0
        if t >= 10:
            want = 1 if cl[t] > max(highs[t - 10:t]) else -1 if cl[t] < min(lows[t - 10:t]) else 0
        assert got[t] == want, t
    assert got.count(1) and got.count(-1)
    assert breakout_signals(highs[:100], lows[:100], cl[:100], 10) == got[:100]


def test_breakout_strategy_enters_and_exits() -> None:
    ctx = run(BreakoutStrategy(["AAPL"], lookback=3, quantity="0.5"), make_bars(BREAKOUT_CLOSES, spread=1))
    assert trades(ctx) == [(4, "buy", Decimal("0.5")), (8, "sell", Decimal("0.5"))]
    ctx = run(BreakoutStrategy(["AAPL"], lookback=3, allow_short=True), make_bars(BREAKOUT_CLOSES, spread=1))
    assert trades(ctx) == [(4, "buy", Decimal(1)), (8, "sell", Decimal(2))]


# --- order discipline --------------------------------------------------------------------------

def test_no_duplicate_entry_while_an_order_is_open() -> None:
    rising = make_bars([10, 11, 12, 13, 14, 15, 16, 17], spread=Decimal("0.5"))  # a new high every bar
    strategy = BreakoutStrategy(["AAPL"], lookback=2)
    ctx = run(strategy, rising, fill=False)
    assert trades(ctx) == [(2, "buy", Decimal(1))]  # the order stays open: no second buy
    ctx.fill_all()
    for bar in make_bars([18, 19], spread=Decimal("0.5")):
        ctx.feed(strategy, bar)
    assert len(ctx.orders) == 1  # already long: no more buys


def test_an_open_order_blocks_exits_too_but_only_for_its_symbol() -> None:
    strategy = SmaCrossover(["AAPL", "MSFT"], fast=2, slow=4)
    ctx = FakeContext()
    ctx.positions["AAPL"] = Decimal(1)
    ctx.open["manual"] = "AAPL"
    msft = make_bars(SMA_CLOSES, symbol="MSFT")
    for a, m in zip(make_bars(SMA_CLOSES), msft, strict=True):
        ctx.feed(strategy, a)
        ctx.feed(strategy, m)
    assert [(o.symbol, o.side) for o in ctx.orders] == [("MSFT", "buy")]  # the MSFT sell waits on its buy


def test_exits_are_sized_to_the_position() -> None:
    strategy = SmaCrossover(["AAPL"], fast=2, slow=4, quantity=5)
    ctx = FakeContext()
    bars = make_bars(SMA_CLOSES)
    for i, bar in enumerate(bars):
        ctx.feed(strategy, bar)
        ctx.fill_all()
        if i == 6:
            ctx.positions["AAPL"] = Decimal(3)  # partly sold elsewhere
    assert trades(ctx) == [(5, "buy", Decimal(5)), (8, "sell", Decimal(3))]


def test_a_short_position_is_covered_on_entry() -> None:
    ctx = FakeContext()
    ctx.positions["AAPL"] = Decimal(-4)
    run(SmaCrossover(["AAPL"], fast=2, slow=4, quantity=5), make_bars(SMA_CLOSES), ctx)
    assert trades(ctx) == [(5, "buy", Decimal(9)), (8, "sell", Decimal(5))]


def test_bars_of_other_symbols_are_ignored() -> None:
    ctx = run(SmaCrossover(["AAPL"], fast=2, slow=4), make_bars(SMA_CLOSES, symbol="MSFT"))
    assert ctx.orders == [] and ctx.history_requests == []
