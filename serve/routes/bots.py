"""The tenant's bot definitions (read: viewer, write: trader) and the strategy catalogue.

Starting and stopping bots is the runtime's business, not these routes'.
"""

from __future__ import annotations

from fastapi import APIRouter, status

from actors.bots import BotSpec, BotStore
from actors.market import known_instruments
from actors.package_bots import refresh_package_bot
from actors.supervisor import bot_model
from serve.deps import ServicesDep, TraderDep, ViewerDep, tenant_of
from serve.schemas_trading import BotCreate, BotOut, BotPatch, StrategyOut
from tenancy.auth import Principal
from trading.strategy import strategies

router = APIRouter(prefix="/v1", tags=["bots"])


def _store(principal: Principal, services: ServicesDep) -> BotStore:
    tenant = tenant_of(principal)
    return BotStore(services.db, tenant.id, tenant.slug)


@router.post("/bots", response_model=BotOut, status_code=status.HTTP_201_CREATED)
async def create_bot(body: BotCreate, principal: TraderDep, services: ServicesDep) -> BotOut:
    """Define a bot (stopped) and open its paper account with `capital` as cash. A bot trading on
    a model (`model_signal`) must name a model of the tenant with a ready version."""
    spec = BotSpec.validate(body.model_dump(exclude_unset=True))
    tenant = tenant_of(principal)
    await known_instruments(services.db, spec.symbols, field="symbols")
    await bot_model(services.db, tenant.id, tenant.slug, spec.strategy, spec.params)
    return BotOut.of(await _store(principal, services).create(spec))


@router.get("/bots", response_model=list[BotOut])
async def list_bots(principal: ViewerDep, services: ServicesDep) -> list[BotOut]:
    """Every bot of the tenant, oldest first."""
    return [BotOut.of(bot) for bot in await _store(principal, services).list()]


@router.get("/bots/{bot_id}", response_model=BotOut)
async def get_bot(bot_id: str, principal: ViewerDep, services: ServicesDep) -> BotOut:
    """One bot; an unknown id, or another tenant's, is a 404. A package bot whose job has
    ended shows as stopped or error (with the job's last log lines)."""
    tenant = tenant_of(principal)
    bot = await _store(principal, services).get(bot_id)
    return BotOut.of(await refresh_package_bot(services.settings, services.db, tenant.id, tenant.slug, bot,
                                               services.jobs))


@router.patch("/bots/{bot_id}", response_model=BotOut)
async def patch_bot(bot_id: str, body: BotPatch, principal: TraderDep, services: ServicesDep
                    ) -> BotOut:
    """Change a stopped bot (409 `bot_running` otherwise); `version` guards concurrent edits."""
    changes = body.model_dump(exclude_unset=True)
    version = changes.pop("version", None)
    if changes.get("symbols"):
        await known_instruments(services.db, changes["symbols"], field="symbols")
    return BotOut.of(await _store(principal, services).update(bot_id, changes,
                                                              expected_version=version))


@router.delete("/bots/{bot_id}", response_model=BotOut)
async def delete_bot(bot_id: str, principal: TraderDep, services: ServicesDep) -> BotOut:
    """Delete a stopped bot and return it; its orders, fills and paper account stay."""
    return BotOut.of(await _store(principal, services).delete(bot_id))


@router.get("/strategies", response_model=list[StrategyOut], tags=["strategies"])
async def list_strategies(_: ViewerDep) -> list[StrategyOut]:
    """The built-in strategies with their parameters (type, default, bounds, choices)."""
    return [StrategyOut.model_validate(cls.describe()) for cls in strategies().values()]
