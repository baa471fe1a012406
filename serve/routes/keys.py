"""The tenant's API keys (admin role)."""

from __future__ import annotations

from fastapi import APIRouter, status

from serve.deps import AdminDep, ServicesDep, tenant_of
from serve.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyOut
from tenancy import api_keys
from tenancy.roles import Role

router = APIRouter(prefix="/v1/api-keys", tags=["api keys"])


@router.get("", response_model=list[ApiKeyOut])
async def list_keys(principal: AdminDep, services: ServicesDep) -> list[ApiKeyOut]:
    """Every key of the tenant, revoked ones included (never the secrets)."""
    async with services.db.platform() as uow:
        keys = await api_keys.list_keys(uow.conn, tenant_of(principal).id)
    return keys


@router.post("", response_model=ApiKeyCreated, status_code=status.HTTP_201_CREATED)
async def create_key(body: ApiKeyCreate, principal: AdminDep, services: ServicesDep
                     ) -> ApiKeyCreated:
    """Mint a key (at most the caller's own role); the key is shown only here."""
    assert principal.role is not None
    async with services.db.platform() as uow:
        created = await api_keys.create_key(
            uow.conn, tenant_of(principal).id, name=body.name, role=Role(body.role),
            actor=principal.actor, actor_role=principal.role)
        await uow.commit()
    return ApiKeyCreated(**created.info.__dict__, key=created.plaintext)


@router.delete("/{key_id}", response_model=ApiKeyOut)
async def revoke_key(key_id: str, principal: AdminDep, services: ServicesDep) -> ApiKeyOut:
    """Revoke a key by id or prefix; another tenant's key is a 404."""
    async with services.db.platform() as uow:
        info = await api_keys.revoke_key(uow.conn, tenant_of(principal).id, key_id,
                                         actor=principal.actor)
        await uow.commit()
    return info
