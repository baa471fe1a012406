"""The agent's runner: bots trade offline on synthetic bars, every change lands in the outbox."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from agent.config import BotConfig
from agent.outbox import CommandResult, Event, Outbox
from agent.runner import Runner
from trading.errors import Invalid
from trading.instruments import Bar
from trading.strategy import Param, Strategy, StrategyContext, register

START = datetime(2024, 3, 1, tzinfo=UTC)
SMA = BotConfig(name="sma", strategy="sma_crossover", symbols=("BTC-USD", "ETH-USD"),
                params={"fast": 2, "slow": 3, "quantity": "0.01"})


@register
class RestingBuyer(Strategy):
    """Keeps one far-below-market limit buy working per symbol: orders that stay open."""

    name = "agent_test_resting"
    description = "rests a limit order (for the agent's tests)"
    params = {"quantity": Param(Decimal, Decimal("0.01"), min=Decimal(0), min_exclusive=True)}

    def on_bar(self, ctx: StrategyContext, bar: Bar) -> None:
        if not ctx.open_orders(bar.symbol):
            ctx.buy(bar.symbol, self.p.quantity, type="limit",
                    limit_price=(bar.close / 2).quantize(Decimal("0.01")))


@register
class FailingStrategy(Strategy):
    """Raises on its third bar."""

    name = "agent_test_failing"
    description = "raises on its third bar (for the agent's tests)"

    def on_start(self, ctx: StrategyContext) -> None:
        self.bars = 0

    def on_bar(self, ctx: StrategyContext, bar: Bar) -> None:
        self.bars += 1
        if self.bars == 3:
            raise RuntimeError("bad model")


def resting(name: str, symbol: str) -> BotConfig:
    return BotConfig(name=name, strategy="agent_test_resting", symbols=(symbol,))


def runner(outbox: Outbox, bots: list[BotConfig] | None = None) -> Runner:
    r = Runner(outbox, seed=11, start=START)
    if bots:
        r.configure([(b, None) for b in bots])
    return r


def events(outbox: Outbox, kind: str | None = None) -> list[Event]:
    return [e for e in outbox.pending(after=0, limit=100_000) if kind is None or e.kind == kind]


def created_ids(outbox: Outbox) -> list[str]:
    return [e.data["client_order_id"] for e in events(outbox, "order") if e.data["status"] == "new"]


def trades(outbox: Outbox) -> list[tuple[Any, ...]]:
    """Fills and P&L without ids (which name the agent): what two equal runs must share."""
    return [(e.kind, e.data.get("side"), e.data.get("price"), e.data.get("cash"), e.data["ts"])
            for e in events(outbox) if e.kind in ("fill", "pnl")]


def test_a_bot_trades_offline_and_every_change_is_in_the_outbox(tmp_path: Path) -> None:
    with Outbox(tmp_path / "a.db") as outbox:
        r = runner(outbox, [SMA])
        steps = [r.step() for _ in range(150)]
        assert steps == [START + i * timedelta(minutes=1) for i in range(150)]
        assert [e.seq for e in events(outbox)] == list(range(1, outbox.next_seq()))
        kinds = Counter(e.kind for e in events(outbox))
        assert kinds["pnl"] == 150 and kinds["fill"] > 4

        orders: dict[str, list[str]] = {}
        for e in events(outbox, "order"):
            assert e.data["account"] == "agent:sma"
            assert {"client_order_id", "symbol", "side", "type", "quantity", "status", "filled_quantity",
                    "average_fill_price"} <= set(e.data)
            orders.setdefault(e.data["client_order_id"], []).append(e.data["status"])
        for statuses in orders.values():
            assert statuses[:2] == ["new", "accepted"]
            assert statuses[2:] in ([], ["filled"])  # market orders fill whole on the next bar
        seen = events(outbox)
        for i, e in enumerate(seen):
            if e.kind == "fill":
                assert {"fill_id", "price", "fee", "client_order_id"} <= set(e.data)
                assert seen[i + 1].kind == "order" and seen[i + 1].data["status"] == "filled"
                assert seen[i + 2].kind == "position"
                position = seen[i + 2].data
                assert {"account", "symbol", "quantity", "average_cost", "realized_pnl"} <= set(position)

        bot = r.bot("sma")
        assert bot is not None
        last_position = {e.data["symbol"]: e.data for e in events(outbox, "position")}
        for symbol, data in last_position.items():
            assert Decimal(data["quantity"]) == bot.portfolio.position(symbol).quantity
        last_pnl = events(outbox, "pnl")[-1].data
        assert set(last_pnl) >= {"account", "cash", "equity", "realized_pnl", "unrealized_pnl", "fees"}
        assert Decimal(last_pnl["cash"]) == bot.portfolio.cash
        assert Decimal(last_pnl["equity"]) == bot.portfolio.equity


def test_a_restart_continues_without_duplicating_client_order_ids(tmp_path: Path) -> None:
    with Outbox(tmp_path / "whole.db") as whole:
        r = runner(whole, [SMA])
        for _ in range(120):
            r.step()
        expected = trades(whole)
    with Outbox(tmp_path / "split.db") as split:
        r = runner(split, [SMA])
        for _ in range(60):
            r.step()
    with Outbox(tmp_path / "split.db") as split:
        r = runner(split)  # the bot's status and state come from the database
        assert r.running == ["sma"]
        for _ in range(60):
            r.step()
        ids = created_ids(split)
        assert len(ids) == len(set(ids)) > 4
        assert [e.seq for e in events(split)] == list(range(1, split.next_seq()))
        assert trades(split) == expected  # the same market, the same trades


def test_a_step_that_cannot_be_stored_is_replayed_without_duplicates(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Outbox(tmp_path / "whole.db") as whole:
        r = runner(whole, [SMA])
        for _ in range(80):
            r.step()
        expected = trades(whole)
    with Outbox(tmp_path / "a.db") as outbox:
        r = runner(outbox, [SMA])
        save = outbox.save_bot_state
        failures = iter([False] * 40 + [True] + [False] * 1000)

        def flaky(name: str, state: dict[str, Any]) -> None:
            if next(failures):
                raise OSError("disk full")
            save(name, state)

        monkeypatch.setattr(outbox, "save_bot_state", flaky)
        done = failed = 0
        while done < 80:
            try:
                r.step()
                done += 1
            except OSError:
                failed += 1
        assert failed == 1
        ids = created_ids(outbox)
        assert len(ids) == len(set(ids))
        assert [e.seq for e in events(outbox)] == list(range(1, outbox.next_seq()))
        assert trades(outbox) == expected


def test_stop_start_and_the_kill_switch_are_done_once(tmp_path: Path) -> None:
    with Outbox(tmp_path / "a.db") as outbox:
        r = runner(outbox, [resting("rest-a", "BTC-USD"), resting("rest-b", "ETH-USD")])
        for _ in range(3):
            r.step()
        assert r.running == ["rest-a", "rest-b"]

        stopped = r.execute("c-1", "stop_bot", {"bot": "rest-a"})
        assert stopped.status == "done" and "1 open order(s) canceled" in (stopped.detail or "")
        assert r.running == ["rest-b"]
        assert outbox.bot("rest-a").status == "stopped"  # type: ignore[union-attr]
        canceled = [e for e in events(outbox, "order") if e.data["status"] == "canceled"]
        assert [(e.data["account"], e.data["reason"]) for e in canceled] == [("agent:rest-a", "bot_stopped")]

        made = outbox.next_seq()
        assert r.execute("c-1", "stop_bot", {"bot": "rest-a"}) == stopped  # answered again...
        assert outbox.next_seq() == made  # ...not done again

        assert r.execute("c-2", "start_bot", {"bot": "rest-a"}).status == "done"
        r.step()
        assert r.running == ["rest-a", "rest-b"]

        killed = r.execute("c-3", "kill_switch", {"reason": "drawdown"})
        assert killed == CommandResult("done", "kill switch: 2 bot(s) stopped, 2 open order(s) canceled")
        assert r.running == []
        assert {b.status for b in outbox.bots()} == {"stopped"}
        final: dict[str, str] = {}
        for e in events(outbox, "order"):
            final[e.data["client_order_id"]] = e.data["status"]
        assert set(final.values()) == {"canceled"}  # no order left open
        assert any("kill switch: drawdown" in e.data["message"] for e in events(outbox, "log"))
        made = outbox.next_seq()
        assert r.execute("c-3", "kill_switch", {"reason": "drawdown"}) == killed
        r.step()  # nothing runs
        assert [e.kind for e in events(outbox)[made - 1:]] == []


def test_bad_commands_fail_with_a_reason(tmp_path: Path) -> None:
    with Outbox(tmp_path / "a.db") as outbox:
        r = runner(outbox, [resting("rest-a", "BTC-USD")])
        assert r.execute("x-1", "start_bot", {"bot": "nope"}) == CommandResult("failed", "unknown bot 'nope'")
        assert r.execute("x-2", "start_bot", {}).status == "failed"
        assert r.execute("x-3", "reboot", {}).detail.startswith("unknown command")  # type: ignore[union-attr]
        assert r.execute("x-4", "start_bot", {"bot": "rest-a"}) == CommandResult(
            "done", "bot rest-a is already running")
        assert outbox.command_result("x-3") == CommandResult("failed", r.execute("x-3", "reboot", {}).detail)


def test_open_orders_survive_a_restart_and_are_canceled_later(tmp_path: Path) -> None:
    with Outbox(tmp_path / "a.db") as outbox:
        r = runner(outbox, [resting("rest-a", "BTC-USD")])
        r.step()
        bot = r.bot("rest-a")
        assert bot is not None
        open_ids = list(bot.orders)
        assert len(open_ids) == 1
    with Outbox(tmp_path / "a.db") as outbox:
        r = runner(outbox)
        bot = r.bot("rest-a")
        assert bot is not None and list(bot.orders) == open_ids and bot.broker.open_orders() == open_ids
        for _ in range(3):
            r.step()
        assert list(bot.orders) == open_ids  # still the same order: no new one while it works
        r.kill_switch("test")
        last = events(outbox, "order")[-1].data
        assert (last["client_order_id"], last["status"], last["reason"]) == (open_ids[0], "canceled",
                                                                             "kill_switch")


def test_a_failing_strategy_stops_only_its_own_bot(tmp_path: Path) -> None:
    failing = BotConfig(name="bad", strategy="agent_test_failing", symbols=("AAPL",))
    with Outbox(tmp_path / "a.db") as outbox:
        r = runner(outbox, [failing, SMA])
        for _ in range(5):
            r.step()
        assert r.running == ["sma"]
        stored = outbox.bot("bad")
        assert stored is not None and stored.status == "stopped"
        assert stored.error == "RuntimeError: bad model"
        errors = [e.data for e in events(outbox, "log") if e.data["level"] == "error"]
        assert errors and all(e["account"] == "agent:bad" for e in errors)
        assert len([e for e in events(outbox, "pnl") if e.data["account"] == "agent:sma"]) == 5


def test_the_configuration_file_decides_status_when_it_names_one(tmp_path: Path) -> None:
    with Outbox(tmp_path / "a.db") as outbox:
        r = runner(outbox, [resting("rest-a", "BTC-USD")])
        r.step()
        r.configure([(resting("rest-a", "BTC-USD"), "stopped")])
        assert r.running == []
        r.configure([(resting("rest-a", "BTC-USD"), None)])  # no status: stays stopped
        assert r.running == []
        changed = BotConfig(name="rest-a", strategy="agent_test_resting", symbols=("BTC-USD",),
                            params={"quantity": "0.02"})
        r.configure([(changed, "running")])
        bot = r.bot("rest-a")
        assert bot is not None and bot.strategy.p.quantity == Decimal("0.02")


async def test_run_paces_steps_and_stops_when_told(tmp_path: Path) -> None:
    with Outbox(tmp_path / "a.db") as outbox:
        r = Runner(outbox, seed=1, start=START, speed=100)
        r.configure([(SMA, None)])
        stop = asyncio.Event()
        task = asyncio.create_task(r.run(stop))
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.wait_for(task, 2)
        pnl = events(outbox, "pnl")
        assert 5 <= len(pnl) <= 40
        assert outbox.clock() == r.clock == START + len(pnl) * timedelta(minutes=1)


def test_a_stored_bot_whose_strategy_is_unknown_is_stopped_not_fatal(tmp_path: Path) -> None:
    with Outbox(tmp_path / "a.db") as outbox:
        outbox.save_bot(BotConfig(name="old", strategy="retired_strategy", symbols=("AAPL",)), "running")
        r = runner(outbox, [SMA])
        assert r.running == ["sma"]
        stored = outbox.bot("old")
        assert stored is not None and stored.status == "stopped"
        assert stored.error is not None and "unknown strategy 'retired_strategy'" in stored.error
        assert r.execute("c-1", "start_bot", {"bot": "old"}).status == "failed"
        with pytest.raises(Invalid):
            r.configure([(BotConfig(name="new", strategy="sma_crossover", symbols=("AAPL",),
                                    params={"fast": 5, "slow": 2}), None)])
        assert outbox.bot("new") is None
