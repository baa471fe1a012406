"""Bot lifecycle and quota admission: start and stop a tenant's actors.

A tenant with no running bot has no actors. Starting its first bot creates the tenant's
``risk`` and ``execution`` actors; each bot adds ``strategy-<bot id>``; stopping the last
bot removes risk and execution again (their state is in the tenant schema).

Admission reads what is really alive from Ray's state API (actors in the namespace
``tenant-<slug>`` and the resources they asked for) and refuses a start that would take
the tenant past its plan's bots, CPU or memory, naming the limit, its value and the
current use. Actors are created with the bot's validated ``num_cpus`` and ``memory``, so
Ray's scheduler places them honestly; these are reservations, not hard limits (the
metering collector watches what they really use).

A tenant whose plan names a ``worker_group`` gets actors that ask for that group's custom
resource (``actors/placement.py``). Ray leaves an actor no node can host pending forever,
so a start waits at most ``actor_start_seconds`` for its actors to answer and then fails
with 503 ``placement_unavailable`` (the bot is marked ``error`` and its pending actors are
removed) instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import ray

from actors.bots import Bot, BotStore
from actors.placement import placement_error, tenant_resources
from actors.tenant_runtime import (
    EXECUTION,
    RISK,
    SYSTEM_CPUS,
    SYSTEM_MEMORY,
    StrategyActor,
    execution_actor,
    risk_actor,
    tenant_namespace,
)
from tenancy.db import Database, short_lived
from tenancy.models import Plan
from tenancy.settings import Settings
from trading.errors import Conflict, Forbidden, Invalid, NotFound
from trading.strategy import get_strategy

log = logging.getLogger(__name__)



class ResourceQuotaExceeded(Forbidden):
    """Starting this would take the tenant past a limit of its plan (403)."""

    default_code = "quota_exceeded"


@dataclass(frozen=True)
class Usage:
    """What a tenant's alive actors hold, from Ray's state API."""

    bots: int
    cpus: float
    memory_bytes: int
    actors: tuple[str, ...]
    gpus: float = 0.0


def strategy_actor_name(bot_id: uuid.UUID) -> str:
    return f"strategy-{bot_id}"


def _list_alive(namespace: str) -> list[Any]:
    from ray.util.state import list_actors

    # This cluster's GCS (the state API finds its dashboard from there), never a guess
    # among the clusters running on the machine.
    address = ray.get_runtime_context().gcs_address
    return list(list_actors(address=address, filters=[("ray_namespace", "=", namespace),
                                                      ("state", "=", "ALIVE")],
                            detail=True, limit=10_000))


async def tenant_usage(slug: str, store: BotStore | None = None) -> Usage:
    """Alive actors of the tenant and their reserved resources (Ray's state API).

    Without a dashboard (no state API) it falls back to looking up the actors the
    platform names (risk, execution, the strategy of each bot in `known_bots`) one by one,
    with the resources the platform gave them (the bots are read from `store` then only).
    """
    try:
        actors = await asyncio.to_thread(_list_alive, tenant_namespace(slug))
    except Exception as exc:  # no dashboard, or it is unreachable
        log.warning("state API unavailable (%s); counting named actors", type(exc).__name__)
        return _usage_by_name(slug, await store.list() if store is not None else [])
    names = tuple(sorted(a.name for a in actors if a.name))
    cpus = sum(float((a.required_resources or {}).get("CPU", 0)) for a in actors)
    memory = sum(int((a.required_resources or {}).get("memory", 0)) for a in actors)
    gpus = sum(float((a.required_resources or {}).get("GPU", 0)) for a in actors)
    bots = sum(1 for n in names if n.startswith("strategy-"))
    return Usage(bots, cpus, memory, names, gpus)


def _usage_by_name(slug: str, bots: list[Bot]) -> Usage:
    namespace = tenant_namespace(slug)
    wanted = [(EXECUTION, SYSTEM_CPUS, SYSTEM_MEMORY, 0.0), (RISK, SYSTEM_CPUS, SYSTEM_MEMORY, 0.0)]
    wanted += [(strategy_actor_name(b.id), b.num_cpus, b.memory_bytes, b.num_gpus) for b in bots]
    alive = []
    for name, cpus, memory, gpus in wanted:
        try:
            ray.get_actor(name, namespace=namespace)
        except ValueError:
            continue
        alive.append((name, cpus, memory, gpus))
    names = tuple(sorted(a[0] for a in alive))
    return Usage(sum(1 for n in names if n.startswith("strategy-")),
                 sum(a[1] for a in alive), sum(a[2] for a in alive), names,
                 sum(a[3] for a in alive))


def admit(plan: Plan, usage: Usage, bot: Bot) -> None:
    """Raise `ResourceQuotaExceeded` unless the bot (and any system actors) fit the plan.

    Checked: bots, CPUs, memory and GPUs (a plan's NULL limit means unlimited).
    """
    new_cpus, new_memory = bot.num_cpus, bot.memory_bytes
    if EXECUTION not in usage.actors:
        new_cpus += 2 * SYSTEM_CPUS
        new_memory += 2 * SYSTEM_MEMORY
    checks = (
        ("bots", plan.max_bots, usage.bots, usage.bots + 1, ""),
        ("cpu", None if plan.cpu is None else float(plan.cpu), round(usage.cpus, 3),
         round(usage.cpus + new_cpus, 3), " CPUs"),
        ("memory", plan.memory_bytes, usage.memory_bytes, usage.memory_bytes + new_memory,
         " bytes"),
        ("gpu", None if plan.gpu is None else float(plan.gpu), usage.gpus,
         usage.gpus + bot.num_gpus, " GPUs"),
    )
    for name, limit, current, wanted, unit in checks:
        if limit is not None and wanted > limit:
            raise ResourceQuotaExceeded(
                f"the {plan.code} plan allows {name} {limit}{unit}; in use {current}{unit}, "
                f"starting this bot needs {wanted}{unit}", field=name)


async def start_bot(settings: Settings, db: Database, tenant_id: uuid.UUID, slug: str,
                    plan: Plan, bot_id: uuid.UUID | str) -> Bot:
    """Admit and start a bot: its strategy actor and, if needed, risk and execution."""
    store = BotStore(db, tenant_id, slug)
    bot = await store.get(bot_id)
    if bot.status in ("running", "starting"):
        raise Conflict(f"bot {bot.name!r} is already {bot.status}", code="bot_running",
                       field="status")
    model = await bot_model(db, tenant_id, slug, bot.strategy, bot.params)
    admit(plan, await tenant_usage(slug, store), bot)
    bot = await store.set_status(bot.id, "starting")
    resources = tenant_resources(plan.worker_group)
    try:
        execution = execution_actor(settings, tenant_id, slug, resources)
        risk = risk_actor(settings, tenant_id, slug, resources)
        strategy = StrategyActor.options(  # type: ignore[attr-defined]
            name=strategy_actor_name(bot.id), namespace=tenant_namespace(slug),
            lifetime="detached", get_if_exists=True, max_restarts=3, max_task_retries=-1,
            num_cpus=bot.num_cpus, memory=bot.memory_bytes, num_gpus=bot.num_gpus,
            resources=resources or None,
        ).remote(settings, str(tenant_id), slug, _bot_payload(bot, model, resources))
        await _placed(settings, resources, f"the actors of bot {bot.name!r}",
                      execution.open_orders.remote(), risk.state.remote(), strategy.status.remote())
        await subscribe_execution(settings, slug, execution, list(bot.symbols))
        feed = _feed(settings)
        if feed is not None:
            await feed.subscribe.remote(f"{slug}/{strategy_actor_name(bot.id)}",
                                        list(bot.symbols), strategy)
    except Exception as exc:
        await store.set_status(bot.id, "error", f"start failed: {type(exc).__name__}: {exc}")
        await _kill(slug, strategy_actor_name(bot.id))
        if not any(b.status in ("running", "starting") for b in await store.list() if b.id != bot.id):
            await _kill(slug, RISK)  # perhaps still pending: never leave them waiting for a node
            await _kill(slug, EXECUTION)
        raise
    return await store.set_status(bot.id, "running")


async def _placed(settings: Settings, resources: dict[str, float], what: str, *calls: Any) -> None:
    """Await the first calls of newly created actors, at most ``actor_start_seconds``."""
    try:
        await asyncio.wait_for(asyncio.gather(*calls), settings.actor_start_seconds)
    except TimeoutError:
        offered = await asyncio.to_thread(ray.cluster_resources)
        raise placement_error(what, resources, offered, settings.actor_start_seconds) from None


async def stop_bot(settings: Settings, db: Database, tenant_id: uuid.UUID, slug: str,
                   bot_id: uuid.UUID | str, *, status: str = "stopped",
                   error: str | None = None) -> Bot:
    """Stop a bot's strategy; remove risk and execution when no bot is left."""
    store = BotStore(db, tenant_id, slug)
    bot = await store.get(bot_id)
    name = strategy_actor_name(bot.id)
    if bot.status in ("running", "starting", "error"):
        await store.set_status(bot.id, "stopping", error)
        feed = _feed(settings)
        if feed is not None:
            await feed.unsubscribe.remote(f"{slug}/{name}")
        try:
            handle = ray.get_actor(name, namespace=tenant_namespace(slug))
            await asyncio.wait_for(handle.stop.remote(), 10)
        except (ValueError, TimeoutError, ray.exceptions.RayError):
            pass
        await _kill(slug, name)
    bot = await store.set_status(bot.id, status, error)
    if not any(b.status in ("running", "starting") for b in await store.list()):
        if feed_ := _feed(settings):
            await feed_.unsubscribe.remote(f"{slug}/{EXECUTION}")
        await _kill(slug, RISK)
        await _kill(slug, EXECUTION)
    return bot


async def stop_all_bots(settings: Settings, tenant_id: uuid.UUID, slug: str, *,
                        reason: str) -> int:
    """Stop every running bot of the tenant (the kill switch); return how many."""
    async with short_lived(settings.database_url, pool_size=1) as db:
        bots = [b for b in await BotStore(db, tenant_id, slug).list()
                if b.status in ("running", "starting")]
        for bot in bots:
            await _stop_keeping_system(settings, db, tenant_id, slug, bot, reason)
        return len(bots)


async def _stop_keeping_system(settings: Settings, db: Database, tenant_id: uuid.UUID,
                               slug: str, bot: Bot, reason: str) -> None:
    # Called from inside the risk actor: leave risk and execution alive (they are busy
    # finishing the kill switch); they go with the next stop or start cycle.
    store = BotStore(db, tenant_id, slug)
    name = strategy_actor_name(bot.id)
    feed = _feed(settings)
    if feed is not None:
        await feed.unsubscribe.remote(f"{slug}/{name}")
    await _kill(slug, name)
    await store.set_status(bot.id, "stopped", f"kill switch: {reason}")


async def bot_failed(settings: Settings, tenant_id: uuid.UUID, slug: str, bot_id: uuid.UUID,
                     error: str) -> None:
    """Record a strategy's error and take its bot out of the feed (risk/execution stay)."""
    async with short_lived(settings.database_url, pool_size=1) as db:
        await BotStore(db, tenant_id, slug).set_status(bot_id, "error", error)
    feed = _feed(settings)
    if feed is not None:
        await feed.unsubscribe.remote(f"{slug}/{strategy_actor_name(bot_id)}")


async def subscribe_execution(settings: Settings, slug: str, execution: Any,
                              symbols: list[str]) -> None:
    """Make sure the execution actor receives bars of `symbols` (adds to what it has)."""
    feed = _feed(settings)
    if feed is None:
        return
    key = f"{slug}/{EXECUTION}"
    current: dict[str, Any] = await feed.subscribers.remote()
    wanted = sorted(set(current.get(key, ())) | set(symbols))
    await feed.subscribe.remote(key, wanted, execution)


async def _kill(slug: str, name: str) -> None:
    with contextlib.suppress(ValueError):  # not running
        ray.kill(ray.get_actor(name, namespace=tenant_namespace(slug)), no_restart=True)


def _feed(settings: Settings) -> Any:
    """The market-data feed actor if it runs (bars reach bots only through it)."""
    from actors.feed import FEED_NAME, FEED_NAMESPACE

    try:
        return ray.get_actor(FEED_NAME, namespace=FEED_NAMESPACE)
    except ValueError:
        return None


def _bot_payload(bot: Bot, model: dict[str, Any] | None = None,
                 resources: dict[str, float] | None = None) -> dict[str, Any]:
    return {"id": str(bot.id), "name": bot.name, "strategy": bot.strategy,
            "symbols": list(bot.symbols), "params": dict(bot.params),
            "capital": str(Decimal(bot.capital)), "model": model, "resources": resources or None}


async def bot_model(db: Database, tenant_id: uuid.UUID, slug: str, strategy: str,
                    params: Mapping[str, Any]) -> dict[str, Any] | None:
    """The model a strategy that `uses_model` trades on: its name and the version to use (the
    production one for version 0), checked to be ready; None for other strategies.

    A model the tenant does not have is bad input (422 on ``params.model``); a version that
    is not ready or is marked bad is a conflict (409).
    """
    from models.registry import ModelRegistry

    try:
        uses_model = get_strategy(strategy).uses_model
    except Invalid:
        return None  # a package strategy: it reads no model
    if not uses_model:
        return None
    name, asked = str(params["model"]), int(params["version"])
    try:
        version = await ModelRegistry(db, tenant_id, slug).resolve(name, asked or None)
    except NotFound as exc:
        field = "params.model" if exc.code == "model_not_found" else "params.version"
        raise Invalid(exc.message, field=field) from None
    return {"name": name, "version": version}


async def reconcile(settings: Settings, db: Database, slugs: Collection[str] | None = None) -> list[str]:
    """After a cluster (re)start, restart the bots the store says are running.

    Detached actors die with their cluster; the bots' desired state is in PostgreSQL.
    Returns one line per bot touched; a bot that cannot be admitted is marked ``error``.
    With `slugs`, only those tenants' bots (an unknown slug is `NotFound`).
    """
    from tenancy.plans import get_plan
    from tenancy.tenants import list_tenants

    report = []
    async with db.platform() as uow:
        tenants = await list_tenants(uow.conn, status="active")
        if slugs is not None:
            missing = sorted(set(slugs) - {t.slug for t in tenants})
            if missing:
                raise NotFound(f"no active tenant {missing[0]!r}", code="tenant_not_found", field="tenant")
            tenants = [t for t in tenants if t.slug in slugs]
        plans = {t.plan: await get_plan(uow.conn, t.plan) for t in tenants}
    for tenant in tenants:
        store = BotStore(db, tenant.id, tenant.slug)
        for bot in await store.list():
            if bot.status not in ("running", "starting", "stopping"):
                continue
            try:
                ray.get_actor(strategy_actor_name(bot.id), namespace=tenant_namespace(tenant.slug))
                continue  # alive: nothing to do
            except ValueError:
                pass
            await store.set_status(bot.id, "stopped")
            try:
                if bot.package is not None:  # its job ended with the cluster: a new one
                    await _restart_package_bot(settings, db, tenant.id, tenant.slug, plans[tenant.plan], bot)
                else:
                    await start_bot(settings, db, tenant.id, tenant.slug, plans[tenant.plan], bot.id)
                report.append(f"{tenant.slug}/{bot.name}: restarted")
            except Exception as exc:
                await store.set_status(bot.id, "error", f"restart failed: {exc}")
                report.append(f"{tenant.slug}/{bot.name}: {exc}")
    return report


async def _restart_package_bot(settings: Settings, db: Database, tenant_id: uuid.UUID, slug: str, plan: Plan,
                               bot: Bot) -> None:
    """Start a package bot's job again at platform start (its token signed here)."""
    from actors.jobs import RayJobs
    from actors.package_bots import start_package_bot
    from tenancy.credentials import issue_job_token

    secret = settings.secret("jwt_secret")
    api_url = settings.internal_api_url or f"http://{settings.http_host}:{settings.http_port}/"
    await start_package_bot(
        settings, db, tenant_id, slug, plan, bot.id, jobs=RayJobs(), api_url=api_url,
        token_for=lambda job_id: issue_job_token(secret, job_id=job_id, tenant_id=tenant_id,
                                                 ttl_seconds=settings.job_max_seconds)[0],
        actor="operator:reconcile")
