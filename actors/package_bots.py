"""Bots whose strategy is uploaded code: a Ray job of the tenant, trading through its risk gate.

A bot with a ``package`` runs like a built-in one — the same `StrategyRunner`, the tenant's
``risk`` and ``execution`` actors, the market feed, client order ids per bar — except
that the strategy's process is started by a Ray job (kind ``bot``) instead of the
platform, so tenant code never runs in a process that holds platform credentials:

1. `start_package_bot` admits the bot (bots, CPU, memory: the tenant's actors outside
   jobs plus its jobs' reservations), starts risk and execution as for any bot, reads the
   bot's paper account (cash, positions, open orders) and submits the job with them.
2. The job's driver (`actors.job_main`) creates `PackageStrategyActor` as
   ``strategy-<bot id>`` in the tenant's namespace with the bot's ``num_cpus`` and
   ``memory``; the actor imports the package, builds the strategy (a bad parameter fails
   the job with the reason), preloads recent bars through the API with the job token, and
   then sends orders to the risk actor; execution forwards fills to it by name.
3. On the job's ``started`` event, `bot_started` subscribes the actor to the market feed
   and marks the bot running. A strategy error, or the job's end, makes the bot ``error``
   with the reason (`bot_job_ended`); stopping the bot stops the job.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import ray

from actors.bots import Bot, BotStore
from actors.jobs import RayJobs, admit_job
from actors.placement import job_entrypoint, tenant_resources
from actors.research import FINISHED, ResearchStore
from actors.store import TradingStore
from actors.strategy_runner import StrategyRunner
from actors.supervisor import ResourceQuotaExceeded, _feed, stop_bot, strategy_actor_name, subscribe_execution
from actors.tenant_runtime import (
    EXECUTION,
    HISTORY_BARS,
    RISK,
    SYSTEM_CPUS,
    SYSTEM_MEMORY,
    execution_actor,
    risk_actor,
    tenant_namespace,
)
from tenancy.db import Database
from tenancy.models import Plan
from tenancy.settings import Settings
from trading.errors import Conflict, Invalid
from trading.instruments import Bar
from trading.orders import Fill, Order, Side

DRIVER_CPUS = 0.05  # the job's driver only watches its bot's actor
DRIVER_MEMORY = 256 * 1024 * 1024


async def start_package_bot(settings: Settings, db: Database, tenant_id: uuid.UUID, slug: str, plan: Plan,
                            bot_id: uuid.UUID | str, *, jobs: RayJobs, api_url: str,
                            token_for: Callable[[uuid.UUID], str], actor: str) -> Bot:
    """Admit the bot, start risk and execution, and submit its job (see the module docstring)."""
    store = BotStore(db, tenant_id, slug)
    bot = await store.get(bot_id)
    if bot.package is None:
        raise Invalid("this bot runs a built-in strategy", field="package")
    if bot.status in ("running", "starting"):
        raise Conflict(f"bot {bot.name!r} is already {bot.status}", code="bot_running", field="status")
    research = ResearchStore(db, tenant_id, slug)
    package = await research.package(bot.package, content=True)
    found = [s for s in package["strategies"] if s["name"] == bot.strategy]
    if not found:
        raise Invalid(f"package {bot.package!r} no longer defines {bot.strategy!r}", field="strategy")
    namespace = tenant_namespace(slug)
    try:
        ray.get_actor(EXECUTION, namespace=namespace)
        system_cpus, system_memory = 0.0, 0
    except ValueError:
        system_cpus, system_memory = 2 * SYSTEM_CPUS, 2 * SYSTEM_MEMORY
    cpus = DRIVER_CPUS + bot.num_cpus
    memory = DRIVER_MEMORY + bot.memory_bytes

    async def admit() -> None:
        running = sum(1 for b in await store.list() if b.status in ("running", "starting") and b.id != bot.id)
        if plan.max_bots is not None and running + 1 > plan.max_bots:
            raise ResourceQuotaExceeded(f"the {plan.code} plan allows bots {plan.max_bots}; in use {running}",
                                        field="bots")
        load = await jobs.load(slug, await research.unfinished_jobs())
        admit_job(plan, load, cpus + system_cpus, memory + system_memory)

    portfolio = await TradingStore(db, tenant_id, slug).portfolio(bot.account)
    async with db.tenant(tenant_id, slug) as uow:
        from actors.queries import open_bot_orders

        open_orders = {o["client_order_id"]: o["symbol"] for o in await open_bot_orders(uow.conn, bot.id)}

    resources = tenant_resources(plan.worker_group)

    async def submit(job_id: uuid.UUID) -> str:
        config = {"job_id": str(job_id), "kind": "bot", "namespace": namespace,
                  "package_strategies": found, "strategy": bot.strategy,
                  "bot": {"id": str(bot.id), "symbols": list(bot.symbols), "params": dict(bot.params),
                          "num_cpus": bot.num_cpus, "memory_bytes": bot.memory_bytes,
                          "num_gpus": bot.num_gpus, "resources": resources or None,
                          "cash": str(portfolio.cash),
                          "positions": {p.symbol: str(p.quantity) for p in portfolio.positions()},
                          "open_orders": open_orders}}
        driver_cpus, driver_resources = job_entrypoint(settings, plan.worker_group, DRIVER_CPUS)
        return await jobs.submit(job_id=job_id, tenant_id=tenant_id, config=config, files=package["files"],
                                 driver_cpus=driver_cpus, driver_memory=DRIVER_MEMORY, total_cpus=cpus,
                                 total_memory=memory, api_url=api_url, token=token_for(job_id),
                                 driver_resources=driver_resources)

    execution = execution_actor(settings, tenant_id, slug, resources)
    risk = risk_actor(settings, tenant_id, slug, resources)
    await asyncio.gather(execution.open_orders.remote(), risk.state.remote())
    await subscribe_execution(settings, slug, execution, list(bot.symbols))
    bot = await store.set_status(bot.id, "starting")
    try:
        await research.launch_job("bot", cpus=cpus, memory=memory, package=package, actor=actor,
                                  admit=admit, submit=submit, bot_id=bot.id)
    except Exception as exc:
        await store.set_status(bot.id, "stopped" if isinstance(exc, ResourceQuotaExceeded) else "error",
                               None if isinstance(exc, ResourceQuotaExceeded) else f"start failed: {exc}")
        raise
    return bot


async def bot_started(settings: Settings, db: Database, tenant_id: uuid.UUID, slug: str,
                      bot_id: uuid.UUID) -> None:
    """The job's actor is ready: feed it bars and mark the bot running."""
    store = BotStore(db, tenant_id, slug)
    bot = await store.get(bot_id)
    name = strategy_actor_name(bot.id)
    handle = ray.get_actor(name, namespace=tenant_namespace(slug))
    feed = _feed(settings)
    if feed is not None:
        await feed.subscribe.remote(f"{slug}/{name}", list(bot.symbols), handle)
    if bot.status == "starting":
        await store.set_status(bot.id, "running")


async def bot_job_ended(settings: Settings, db: Database, tenant_id: uuid.UUID, slug: str, bot_id: uuid.UUID,
                        status: str, message: str | None) -> None:
    """The bot's job ended on its own: stop the bot, as ``error`` unless the job was stopped."""
    bot = await BotStore(db, tenant_id, slug).get(bot_id)
    if bot.status in ("running", "starting"):
        failed = status == "failed"
        await stop_bot(settings, db, tenant_id, slug, bot_id, status="error" if failed else "stopped",
                       error=message if failed else None)


async def stop_package_bot(settings: Settings, db: Database, tenant_id: uuid.UUID, slug: str,
                           bot_id: uuid.UUID | str, jobs: RayJobs, actor: str) -> Bot:
    """Stop the bot's job, then the bot as any other (its actor, feed, risk and execution)."""
    store = BotStore(db, tenant_id, slug)
    bot = await store.get(bot_id)
    research = ResearchStore(db, tenant_id, slug)
    job = await research.bot_job(bot.id)
    if job is not None and job["status"] not in FINISHED:
        await jobs.stop(job["submission_id"])
        await research.finish(job["id"], "stopped", f"stopped by {actor}")
    return await stop_bot(settings, db, tenant_id, slug, bot.id)


async def refresh_package_bot(settings: Settings, db: Database, tenant_id: uuid.UUID, slug: str, bot: Bot,
                              jobs: RayJobs) -> Bot:
    """A running package bot whose job has died becomes ``error`` with the job's last words."""
    if bot.package is None or bot.status not in ("running", "starting"):
        return bot
    research = ResearchStore(db, tenant_id, slug)
    job = await research.bot_job(bot.id)
    if job is None:
        return bot
    if job["status"] not in FINISHED:
        state = await jobs.status(job["submission_id"])
        if state is None or state[0] not in ("SUCCEEDED", "FAILED", "STOPPED"):
            return bot
        from actors.jobs import log_tail

        tail = log_tail(await jobs.logs(job["submission_id"]))
        message = f"{state[1] or 'the job ended'}\n--- last log lines ---\n{tail}"
        await research.finish(job["id"], "failed", message)
        job = await research.job(job["id"])
    await bot_job_ended(settings, db, tenant_id, slug, bot.id, job["status"], job["message"])
    return await BotStore(db, tenant_id, slug).get(bot.id)


@ray.remote(max_restarts=0)
class PackageStrategyActor:
    """A package bot's strategy (created by its job; holds no platform credentials)."""

    def __init__(self, config: Mapping[str, Any], api_url: str, token: str) -> None:
        self._config = dict(config)
        self._api = (api_url, token)
        self._runner: StrategyRunner | None = None

    async def start(self) -> dict[str, Any]:
        """Import the package, build the strategy (Invalid for bad parameters), preload bars."""
        from actors.job_main import Reporter, load_package

        load_package(self._config)
        bot = self._config["bot"]
        bot_id = uuid.UUID(bot["id"])
        namespace = self._config["namespace"]
        risk = ray.get_actor(RISK, namespace=namespace)
        execution = ray.get_actor(EXECUTION, namespace=namespace)
        account = f"bot:{bot_id}"

        async def send(order: Order, last: Decimal | None) -> dict[str, Any]:
            reply: dict[str, Any] = await risk.submit.remote(order, account, "bot", str(bot_id), last)
            return reply

        async def cancel(client_order_id: str) -> dict[str, Any]:
            reply: dict[str, Any] = await execution.cancel.remote(client_order_id)
            return reply

        runner = StrategyRunner(bot_id, self._config["strategy"], bot["symbols"], bot["params"],
                                cash=Decimal(bot["cash"]),
                                positions={s: Decimal(q) for s, q in bot["positions"].items()},
                                send=send, cancel=cancel)
        reporter = Reporter(*self._api, self._config["job_id"])
        history: list[Bar] = []
        for symbol in bot["symbols"]:
            rows = await asyncio.to_thread(reporter.get, "/v1/market/bars", {
                "symbol": symbol, "end": datetime.now(UTC).isoformat(), "limit": HISTORY_BARS}) or []
            history += [Bar(symbol, datetime.fromisoformat(r["ts"]), Decimal(r["open"]), Decimal(r["high"]),
                            Decimal(r["low"]), Decimal(r["close"]), Decimal(r["volume"])) for r in rows]
        runner.ctx.preload(sorted(history, key=lambda b: (b.ts, b.symbol)))
        runner.ctx.restore_open(bot["open_orders"])
        runner.start()
        self._runner = runner
        return await self.status()

    async def on_bars(self, bars: list[Bar]) -> int:
        if self._runner is None:
            return 0
        return await self._runner.on_bars(bars)

    async def on_fill(self, event: dict[str, Any]) -> None:
        if self._runner is None:
            return
        f = event["fill"]
        fill = Fill(f["fill_id"], f["client_order_id"], f["symbol"], Side(f["side"]), Decimal(f["quantity"]),
                    Decimal(f["price"]), Decimal(f["fee"]), datetime.fromisoformat(f["ts"]))
        await self._runner.on_fill(fill, Decimal(event["position"]["quantity"]), Decimal(event["cash"]),
                                   order_open=bool(event.get("order_open")))

    async def stop(self) -> None:
        if self._runner is not None:
            self._runner.stop()

    async def status(self) -> dict[str, Any]:
        runner = self._runner
        if runner is None:
            return {"bars_seen": 0, "error": None, "open_orders": [], "logs": []}
        return {"bars_seen": runner.bars_seen, "error": runner.error,
                "open_orders": list(runner.ctx.open_orders()), "logs": list(runner.ctx.logs)[-20:]}

    def pid(self) -> int:
        return os.getpid()

