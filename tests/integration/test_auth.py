"""Credentials against the master schema, and cache invalidation through NOTIFY."""

from __future__ import annotations

import pytest

from serve.authcache import AuthCache, asyncpg_dsn
from tenancy.api_keys import revoke_key
from tenancy.auth import Authenticator
from tenancy.credentials import api_key_prefix
from tenancy.db import Database
from tenancy.roles import Role
from tenancy.settings import Settings
from tenancy.tenants import delete_tenant, update_tenant
from tests.conftest import TenantFactory, wait_for
from trading.errors import Forbidden, Invalid, Unauthenticated


@pytest.fixture
def auth(settings: Settings) -> Authenticator:
    return Authenticator(jwt_secret=settings.secret("jwt_secret"),
                         operator_token=settings.secret("operator_token"), jwt_ttl_seconds=900)


async def _authenticate(db: Database, auth: Authenticator, credential: str):  # type: ignore[no-untyped-def]
    async with db.platform() as uow:
        principal = await auth.authenticate(uow.conn, credential)
        await uow.commit()
        return principal


async def test_api_key_and_login(db: Database, auth: Authenticator,
                                 make_tenant: TenantFactory) -> None:
    created = await make_tenant()
    p = await _authenticate(db, auth, created.api_key)
    assert p.kind == "api_key" and p.role is Role.OWNER and p.tenant.id == created.tenant.id
    async with db.platform() as uow:
        token, _, _ = await auth.login(uow.conn, email=created.owner_email,
                                       password="correct horse battery", tenant_slug=None)
    q = await _authenticate(db, auth, token)
    assert q.kind == "user" and q.email == created.owner_email and q.tenant.id == created.tenant.id


async def test_login_failures_do_not_say_which_part_was_wrong(db: Database, auth: Authenticator,
                                                              make_tenant: TenantFactory) -> None:
    created = await make_tenant()
    for email, password in ((created.owner_email, "wrong password"),
                            ("nobody@example.com", "correct horse battery")):
        async with db.platform() as uow:
            with pytest.raises(Unauthenticated) as info:
                await auth.login(uow.conn, email=email, password=password, tenant_slug=None)
        assert info.value.code == "invalid_login"


async def test_user_with_two_tenants_must_choose(db: Database, auth: Authenticator,
                                                 make_tenant: TenantFactory) -> None:
    first = await make_tenant()
    second = await make_tenant(email=first.owner_email)
    async with db.platform() as uow:
        with pytest.raises(Invalid) as info:
            await auth.login(uow.conn, email=first.owner_email, password="correct horse battery",
                             tenant_slug=None)
        assert info.value.field == "tenant"
        _, _, p = await auth.login(uow.conn, email=first.owner_email,
                                   password="correct horse battery",
                                   tenant_slug=second.tenant.slug)
    assert p.tenant.id == second.tenant.id


async def test_suspended_and_deleted_tenants(db: Database, auth: Authenticator,
                                             make_tenant: TenantFactory) -> None:
    created = await make_tenant()
    await update_tenant(db, created.tenant.slug, actor="t", status="suspended")
    with pytest.raises(Forbidden) as info:
        await _authenticate(db, auth, created.api_key)
    assert info.value.code == "tenant_suspended"
    await delete_tenant(db, created.tenant.slug, confirm=created.tenant.slug, actor="t")
    with pytest.raises(Unauthenticated):
        await _authenticate(db, auth, created.api_key)


@pytest.fixture
async def cache(db: Database, auth: Authenticator, settings: Settings):  # type: ignore[no-untyped-def]
    cache = AuthCache(auth, db, asyncpg_dsn(settings.database_url or ""), ttl_seconds=300)
    cache.start()
    await wait_for(lambda: _true(cache.listening))
    yield cache
    await cache.stop()


async def _refused(cache: AuthCache, credential: str, error: type[Exception]) -> bool:
    try:
        await cache.authenticate(credential)
    except error:
        return True
    return False


async def test_cache_forgets_a_revoked_key_when_the_revocation_commits(
        db: Database, cache: AuthCache, make_tenant: TenantFactory) -> None:
    created = await make_tenant()
    assert (await cache.authenticate(created.api_key)).tenant.id == created.tenant.id
    async with db.platform() as uow:
        await revoke_key(uow.conn, created.tenant.id, api_key_prefix(created.api_key), actor="t")
        # Not committed yet: the cached answer still stands.
        assert (await cache.authenticate(created.api_key)).tenant.id == created.tenant.id
        await uow.commit()
    await wait_for(lambda: _refused(cache, created.api_key, Unauthenticated), timeout=5)


async def test_cache_forgets_a_suspended_tenant(db: Database, cache: AuthCache,
                                                make_tenant: TenantFactory) -> None:
    created = await make_tenant()
    await cache.authenticate(created.api_key)
    await update_tenant(db, created.tenant.slug, actor="t", status="suspended")
    await wait_for(lambda: _refused(cache, created.api_key, Forbidden), timeout=5)


async def _true(value: bool) -> bool:
    return value
