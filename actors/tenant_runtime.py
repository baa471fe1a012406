"""Ray actors of one tenant, in namespace ``tenant-<slug>``: thin shells over the engines.

Each actor is detached (it outlives the caller), restarts after a crash
(``max_restarts``) and retries the calls that were in flight (``max_task_retries``);
every call is idempotent, and state is rebuilt from the tenant schema on restart.
A tenant of a dedicated worker group passes `resources` (``actors/placement.py``); the
actors hand them on to the actors they create themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import ray
from redis.asyncio import Redis

from actors.bots import bot_account
from actors.execution import ExecutionEngine
from actors.market import instrument_map, read_bars
from actors.model_scores import EndpointScores, endpoint_handle
from actors.queries import RiskSettings, open_bot_orders
from actors.risk_gate import RiskGate
from actors.store import TradingStore
from actors.strategy_runner import StrategyRunner
from tenancy.db import Database, short_lived
from tenancy.settings import Settings
from trading.broker import PaperBroker
from trading.data import DEFAULT_INSTRUMENTS
from trading.errors import NotFound
from trading.instruments import Bar
from trading.orders import Fill, Order, Side
from trading.risk import TradingState

log = logging.getLogger(__name__)

EXECUTION = "execution"
RISK = "risk"
HISTORY_BARS = 500  # bars per symbol preloaded into a (re)started strategy
SYSTEM_CPUS = 0.05  # what the risk and execution actors reserve, each
SYSTEM_MEMORY = 200 * 1024**2
FEE_BPS = Decimal(10)
SLIPPAGE_BPS = Decimal(5)
RECENT_BARS = 16  # bars per symbol the broker keeps for orders that arrive after them


def tenant_namespace(slug: str) -> str:
    return f"tenant-{slug}"


def events_channel(tenant_id: uuid.UUID | str) -> str:
    """The Redis channel of a tenant's live events (orders, fills, positions, risk)."""
    return f"atp:events:{tenant_id}"


@ray.remote
class ExecutionActor:
    """The tenant's execution actor (one per tenant while any bot runs)."""

    def __init__(self, settings: Settings, tenant_id: str, slug: str) -> None:
        self._settings = settings
        self._tenant_id = uuid.UUID(tenant_id)
        self._slug = slug
        self._engine: ExecutionEngine | None = None
        self._redis: Redis | None = None
        self._init_lock: asyncio.Lock | None = None
        self._forwards: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._forwarder: asyncio.Task[None] | None = None

    async def _ready(self) -> ExecutionEngine:
        if self._engine is not None:
            return self._engine
        self._init_lock = self._init_lock or asyncio.Lock()
        async with self._init_lock:
            if self._engine is None:
                db = Database.from_url(self._settings.database_url or "", pool_size=4)
                self._redis = Redis.from_url(self._settings.redis_url or "",
                                             socket_timeout=self._settings.redis_timeout_seconds)
                broker = PaperBroker(DEFAULT_INSTRUMENTS, fee_bps=FEE_BPS,
                                     slippage_bps=SLIPPAGE_BPS, recent_bars=RECENT_BARS)
                engine = ExecutionEngine(TradingStore(db, self._tenant_id, self._slug), broker,
                                         publish=self._publish,
                                         instruments=lambda: instrument_map(db))
                await engine.start()
                self._forwarder = asyncio.create_task(self._forward_forever())
                self._engine = engine
        assert self._engine is not None
        return self._engine

    async def _publish(self, event: dict[str, Any]) -> None:
        if event.get("type") == "fill":
            self._forwards.put_nowait(event)  # forwarded in order, off the engine's lock
        await _publish(self._redis, self._tenant_id, event)

    async def _forward_forever(self) -> None:
        while True:
            event = await self._forwards.get()
            try:
                await asyncio.to_thread(_forward_fill, self._slug, event)
            except Exception:  # best effort: risk and strategies rebuild from the store
                log.warning("forwarding a fill failed", exc_info=True)

    async def submit(self, order: Order, account: str, source: str,
                     bot_id: str | None = None) -> dict[str, Any]:
        engine = await self._ready()
        return await engine.submit(order, account=account, source=source,
                                   bot_id=uuid.UUID(bot_id) if bot_id else None)

    async def reject(self, order: Order, account: str, source: str, reason: str,
                     bot_id: str | None = None) -> dict[str, Any]:
        engine = await self._ready()
        return await engine.reject(order, account=account, source=source, reason=reason,
                                   bot_id=uuid.UUID(bot_id) if bot_id else None)

    async def cancel(self, client_order_id: str) -> dict[str, Any]:
        return await (await self._ready()).cancel(client_order_id)

    async def cancel_all(self) -> int:
        return await (await self._ready()).cancel_all()

    async def on_bars(self, bars: list[Bar]) -> int:
        return await (await self._ready()).on_bars(bars)

    async def open_orders(self) -> list[str]:
        return (await self._ready()).open_order_ids()

    async def open_count(self, account: str) -> int:
        return (await self._ready()).open_count(account)

    def pid(self) -> int:
        return os.getpid()


async def _publish(redis: Redis | None, tenant_id: uuid.UUID, event: dict[str, Any]) -> None:
    if redis is None:
        return
    try:
        await redis.publish(events_channel(tenant_id), json.dumps(event, default=str))
    except Exception:  # the stream is best effort; the store is the truth
        return


def _forward_fill(slug: str, event: dict[str, Any]) -> None:
    """Tell the risk gate and the bot's strategy about a stored fill (fire and forget)."""
    namespace = tenant_namespace(slug)
    fill, position = event["fill"], event["position"]
    for name, method, args in (
            (RISK, "on_fill", (event["account"], fill["symbol"], position["quantity"],
                               event["cash"], fill["price"])),
            (strategy_name(event["account"]), "on_fill", (event,))):
        if name is None:
            continue
        try:
            handle = ray.get_actor(name, namespace=namespace)
        except ValueError:  # no such actor (bot stopped, or a manual order)
            continue
        getattr(handle, method).remote(*args)


def strategy_name(account: str) -> str | None:
    """The strategy actor of a bot account ('bot:<id>' → 'strategy-<id>')."""
    return f"strategy-{account[4:]}" if account.startswith("bot:") else None


def execution_actor(settings: Settings, tenant_id: uuid.UUID, slug: str,
                    resources: dict[str, float] | None = None) -> Any:
    """Get or create the tenant's execution actor (`resources`: custom ones to ask for)."""
    return ExecutionActor.options(  # type: ignore[attr-defined]
        name=EXECUTION, namespace=tenant_namespace(slug), lifetime="detached",
        get_if_exists=True, max_restarts=-1, max_task_retries=-1, num_cpus=SYSTEM_CPUS,
        memory=SYSTEM_MEMORY, max_concurrency=100, resources=resources or None,
    ).remote(settings, str(tenant_id), slug)


class _ExecutionHandle:
    """`ExecutionPort` over the execution actor's handle."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    async def submit(self, order: Order, account: str, source: str,
                     bot_id: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = await self._handle.submit.remote(order, account, source, bot_id)
        return result

    async def reject(self, order: Order, account: str, source: str, reason: str,
                     bot_id: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = await self._handle.reject.remote(order, account, source, reason,
                                                                   bot_id)
        return result

    async def cancel_all(self) -> int:
        return int(await self._handle.cancel_all.remote())

    async def open_count(self, account: str) -> int:
        return int(await self._handle.open_count.remote(account))


@ray.remote
class RiskActor:
    """The tenant's risk gate (one per tenant while any bot runs)."""

    def __init__(self, settings: Settings, tenant_id: str, slug: str,
                 resources: dict[str, float] | None = None) -> None:
        self._settings = settings
        self._tenant_id = uuid.UUID(tenant_id)
        self._slug = slug
        self._resources = resources
        self._gate: RiskGate | None = None
        self._redis: Redis | None = None
        self._init_lock: asyncio.Lock | None = None

    async def _ready(self) -> RiskGate:
        if self._gate is not None:
            return self._gate
        self._init_lock = self._init_lock or asyncio.Lock()
        async with self._init_lock:
            if self._gate is None:
                db = Database.from_url(self._settings.database_url or "", pool_size=2)
                self._redis = Redis.from_url(self._settings.redis_url or "",
                                             socket_timeout=self._settings.redis_timeout_seconds)
                execution = execution_actor(self._settings, self._tenant_id, self._slug,
                                            self._resources)
                gate = RiskGate(db, self._tenant_id, self._slug, _ExecutionHandle(execution),
                                publish=lambda e: _publish(self._redis, self._tenant_id, e),
                                stop_bots=self._stop_bots)
                await gate.start()
                self._gate = gate
        assert self._gate is not None
        return self._gate

    async def _stop_bots(self, reason: str) -> None:
        from actors.supervisor import stop_all_bots

        await stop_all_bots(self._settings, self._tenant_id, self._slug, reason=reason)

    async def submit(self, order: Order, account: str, source: str, bot_id: str | None = None,
                     last_price: Decimal | None = None) -> dict[str, Any]:
        gate = await self._ready()
        return await gate.submit(order, account=account, source=source, bot_id=bot_id,
                                 last_price=last_price)

    async def on_fill(self, account: str, symbol: str, quantity: str, cash: str,
                      price: str) -> None:
        await (await self._ready()).on_fill(account, symbol, Decimal(quantity), Decimal(cash),
                                            Decimal(price))

    async def kill_switch(self, reason: str, actor: str = "risk") -> dict[str, Any]:
        return await (await self._ready()).kill_switch(reason, actor)

    async def set_state(self, state: str, actor: str, reason: str) -> RiskSettings:
        gate = await self._ready()
        return await gate.set_state(TradingState(state), actor=actor, reason=reason)

    async def reload(self) -> str:
        gate = await self._ready()
        await gate.reload()
        return gate.state.value

    async def state(self) -> str:
        return (await self._ready()).state.value

    def pid(self) -> int:
        return os.getpid()


def risk_actor(settings: Settings, tenant_id: uuid.UUID, slug: str,
               resources: dict[str, float] | None = None) -> Any:
    """Get or create the tenant's risk actor (`resources`: custom ones to ask for)."""
    return RiskActor.options(  # type: ignore[attr-defined]
        name=RISK, namespace=tenant_namespace(slug), lifetime="detached", get_if_exists=True,
        max_restarts=-1, max_task_retries=-1, num_cpus=SYSTEM_CPUS, memory=SYSTEM_MEMORY,
        max_concurrency=100, resources=resources or None,
    ).remote(settings, str(tenant_id), slug, resources)


@ray.remote
class StrategyActor:
    """One running bot: its strategy, fed bars, sending orders to the risk gate."""

    def __init__(self, settings: Settings, tenant_id: str, slug: str, bot: dict[str, Any]) -> None:
        self._settings = settings
        self._tenant_id = uuid.UUID(tenant_id)
        self._slug = slug
        self._bot = bot
        self._runner: StrategyRunner | None = None
        self._init_lock: asyncio.Lock | None = None
        self._reported_error = False

    async def _ready(self) -> StrategyRunner:
        if self._runner is not None:
            return self._runner
        self._init_lock = self._init_lock or asyncio.Lock()
        async with self._init_lock:
            if self._runner is None:
                self._settings.import_strategy_modules()
                bot_id = uuid.UUID(self._bot["id"])
                account = bot_account(bot_id)
                history: list[Bar] = []
                scores, keep = None, HISTORY_BARS
                if self._bot.get("model"):  # a strategy trading on a model: its endpoint, its window
                    name, version = self._bot["model"]["name"], int(self._bot["model"]["version"])
                    scores = EndpointScores(endpoint_handle(self._tenant_id, name, version))
                    keep = max(keep, await scores.prepare())
                async with short_lived(self._settings.database_url, pool_size=1) as db:
                    portfolio = await TradingStore(db, self._tenant_id, self._slug
                                                   ).portfolio(account)
                    # Rebuild the strategy's recent history from the shared bars table (bars
                    # up to now), so a restarted bot does not wait for a new warm-up.
                    async with db.tenant(self._tenant_id, self._slug) as uow:
                        for symbol in self._bot["symbols"]:
                            with contextlib.suppress(NotFound):  # no bars for it yet
                                history += await read_bars(uow.conn, symbol,
                                                           end=datetime.now(UTC), limit=keep)
                    async with db.tenant(self._tenant_id, self._slug) as uow:
                        open_orders = {o["client_order_id"]: o["symbol"]
                                       for o in await open_bot_orders(uow.conn, bot_id)}
                resources = self._bot.get("resources")
                risk = risk_actor(self._settings, self._tenant_id, self._slug, resources)
                execution = execution_actor(self._settings, self._tenant_id, self._slug, resources)

                async def send(order: Order, last: Decimal | None) -> dict[str, Any]:
                    reply: dict[str, Any] = await risk.submit.remote(
                        order, account, "bot", str(bot_id), last)
                    return reply

                async def cancel(client_order_id: str) -> dict[str, Any]:
                    reply: dict[str, Any] = await execution.cancel.remote(client_order_id)
                    return reply

                runner = StrategyRunner(
                    bot_id, self._bot["strategy"], self._bot["symbols"], self._bot["params"],
                    cash=portfolio.cash,
                    positions={p.symbol: p.quantity for p in portfolio.positions()}, send=send,
                    cancel=cancel, scores=scores)
                history.sort(key=lambda b: (b.ts, b.symbol))
                runner.ctx.preload(history)
                if scores is not None:
                    scores.preload(history)
                runner.ctx.restore_open(open_orders)
                runner.start()
                self._runner = runner
        assert self._runner is not None
        return self._runner

    async def on_bars(self, bars: list[Bar]) -> int:
        runner = await self._ready()
        sent = await runner.on_bars(bars)
        await self._report_error(runner)
        return sent

    async def on_fill(self, event: dict[str, Any]) -> None:
        runner = await self._ready()
        f = event["fill"]
        fill = Fill(f["fill_id"], f["client_order_id"], f["symbol"], Side(f["side"]),
                    Decimal(f["quantity"]), Decimal(f["price"]), Decimal(f["fee"]),
                    datetime.fromisoformat(f["ts"]))
        await runner.on_fill(fill, Decimal(event["position"]["quantity"]),
                             Decimal(event["cash"]), order_open=bool(event.get("order_open")))
        await self._report_error(runner)

    async def _report_error(self, runner: StrategyRunner) -> None:
        if runner.error is None or self._reported_error:
            return
        self._reported_error = True
        from actors.supervisor import bot_failed

        await bot_failed(self._settings, self._tenant_id, self._slug, uuid.UUID(self._bot["id"]),
                         runner.error)

    async def stop(self) -> None:
        if self._runner is not None:
            self._runner.stop()

    async def status(self) -> dict[str, Any]:
        runner = await self._ready()
        return {"bars_seen": runner.bars_seen, "error": runner.error, "model": self._bot.get("model"),
                "open_orders": list(runner.ctx.open_orders()), "logs": list(runner.ctx.logs)[-20:]}

    def pid(self) -> int:
        return os.getpid()
