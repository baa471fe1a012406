"""Ray actors of one tenant, in namespace ``tenant-<slug>``: thin shells over the engines.

Each actor is detached (it outlives the caller), restarts after a crash
(``max_restarts``) and retries the calls that were in flight (``max_task_retries``);
every call is idempotent, and state is rebuilt from the tenant schema on restart.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from decimal import Decimal
from typing import Any

import ray
from redis.asyncio import Redis

from actors.execution import ExecutionEngine
from actors.store import TradingStore
from tenancy.db import Database
from tenancy.settings import Settings
from trading.broker import PaperBroker
from trading.data import DEFAULT_INSTRUMENTS
from trading.instruments import Bar
from trading.orders import Order

EXECUTION = "execution"
FEE_BPS = Decimal(10)
SLIPPAGE_BPS = Decimal(5)


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
                                     slippage_bps=SLIPPAGE_BPS)
                engine = ExecutionEngine(TradingStore(db, self._tenant_id, self._slug), broker,
                                         publish=self._publish)
                await engine.start()
                self._engine = engine
        assert self._engine is not None
        return self._engine

    async def _publish(self, event: dict[str, Any]) -> None:
        if self._redis is None:
            return
        try:
            await self._redis.publish(events_channel(self._tenant_id), json.dumps(event))
        except Exception:  # the stream is best effort; the store is the truth
            return

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

    def pid(self) -> int:
        return os.getpid()


def execution_actor(settings: Settings, tenant_id: uuid.UUID, slug: str, *,
                    num_cpus: float = 0.05, memory_bytes: int = 200 * 1024**2) -> Any:
    """Get or create the tenant's execution actor."""
    return ExecutionActor.options(  # type: ignore[attr-defined]
        name=EXECUTION, namespace=tenant_namespace(slug), lifetime="detached",
        get_if_exists=True, max_restarts=-1, max_task_retries=-1, num_cpus=num_cpus,
        memory=memory_bytes, max_concurrency=100,
    ).remote(settings, str(tenant_id), slug)
