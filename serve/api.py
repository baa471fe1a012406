"""The gateway's FastAPI application, built per replica from the settings.

`create_api(settings)` returns the ASGI app; its lifespan opens the database pool and the
Redis client, runs the usage flusher in the background, and closes everything on exit.
`serve.app.build_app` hands this builder to Ray Serve, so each replica builds its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from redis.asyncio import Redis

from billing.providers import make_provider
from serve.authcache import AuthCache, asyncpg_dsn
from serve.deps import Services
from serve.errors import install_error_handlers
from serve.limits import Limiter
from serve.loginguard import LoginGuard
from serve.metrics import MetricsMiddleware
from serve.metrics_store import MetricsFlusher
from serve.routes import (
    admin,
    agents,
    audit,
    auth,
    billing,
    bots,
    health,
    keys,
    market,
    metrics,
    models,
    research,
    risk,
    runtime,
    stream,
    trading,
)
from serve.usage import UsageFlusher
from tenancy.auth import Authenticator
from tenancy.db import Database
from tenancy.settings import Settings

log = logging.getLogger(__name__)

API_VERSION = "0.1.0"


def make_services(settings: Settings) -> Services:
    """Open the collaborators the routes use (pool and client connect lazily)."""
    if settings.database_url is None or settings.redis_url is None:
        raise RuntimeError("the gateway needs resolved database and Redis URLs")
    db = Database.from_url(settings.database_url, pool_size=settings.db_pool_size)
    redis = Redis.from_url(settings.redis_url, socket_timeout=settings.redis_timeout_seconds,
                           socket_connect_timeout=settings.redis_timeout_seconds,
                           health_check_interval=30)
    limiter = Limiter(redis)
    auth = Authenticator(jwt_secret=settings.secret("jwt_secret"),
                         operator_token=settings.secret("operator_token"),
                         jwt_ttl_seconds=settings.jwt_ttl_seconds)
    return Services(
        settings=settings, db=db, redis=redis, auth=auth,
        auth_cache=AuthCache(auth, db, asyncpg_dsn(settings.database_url),
                             ttl_seconds=settings.auth_cache_seconds),
        limiter=limiter, flusher=UsageFlusher(db, redis, limiter),
        login_guard=LoginGuard(redis), provider=make_provider(settings))


async def _flush_forever(services: Services) -> None:
    """Push leased-call counts to Redis often, and flush Redis to PostgreSQL less often."""
    push_every = min(1.0, services.settings.usage_flush_seconds)
    last_flush = asyncio.get_running_loop().time()
    while True:
        await asyncio.sleep(push_every)
        try:
            if asyncio.get_running_loop().time() - last_flush >= \
                    services.settings.usage_flush_seconds:
                last_flush = asyncio.get_running_loop().time()
                await services.flusher.flush()
            elif not services.limiter.degraded:
                await services.limiter.push()
        except Exception:
            log.exception("usage push/flush failed; retrying next interval")


def create_api(settings: Settings) -> FastAPI:
    """Build the gateway's ASGI app for one replica."""
    gateway_metrics = metrics.GatewayMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.import_strategy_modules()
        services = make_services(settings)
        app.state.services = services
        flusher = asyncio.create_task(_flush_forever(services))
        metrics_flusher = MetricsFlusher(services.redis, gateway_metrics.recorder)
        metrics_task = asyncio.create_task(metrics_flusher.run(settings.metrics_flush_seconds))
        services.auth_cache.start()
        try:
            yield
        finally:
            await services.auth_cache.stop()
            for task in (flusher, metrics_task):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            with contextlib.suppress(Exception):
                await services.flusher.flush()
            await metrics_flusher.close()
            await services.redis.aclose()
            await services.db.dispose()

    app = FastAPI(
        title="AI Trading Platform",
        version=API_VERSION,
        description="Multi-tenant algorithmic and AI trading on Ray. Authenticate with "
                    "`Authorization: Bearer <API key | JWT | operator token>`. Every error "
                    'body is `{"error": {"code", "message", "field"}}`.',
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.state.metrics = gateway_metrics
    app.add_middleware(MetricsMiddleware, recorder=gateway_metrics.recorder)
    for router in (health.router, auth.router, keys.router, audit.router, admin.router,
                   market.router, bots.router, trading.router, risk.router, runtime.router,
                   stream.router, billing.router, agents.router, research.router, models.router,
                   metrics.router):
        app.include_router(router)  # no prefix here: a route's own path is its metrics label
    return app
