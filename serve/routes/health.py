"""Liveness and readiness."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from serve.deps import ServicesDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


_CHECK_SECONDS = 2.0


async def _check(coro: object) -> str:
    try:
        await asyncio.wait_for(coro, _CHECK_SECONDS)  # type: ignore[arg-type]
    except Exception as exc:
        return f"down: {type(exc).__name__}"
    return "ok"


async def _ray_ok() -> None:
    import ray

    if not ray.is_initialized():
        raise RuntimeError("ray is not initialised in this process")
    await asyncio.to_thread(ray.cluster_resources)


@router.get("/readyz")
async def readyz(services: ServicesDep) -> JSONResponse:
    """PostgreSQL, Redis and Ray reachable?

    503 when PostgreSQL or Ray is down. Redis down gives 200 with status ``degraded``:
    the gateway keeps serving on its local rate-limit fallback (see `serve.limits`).
    """
    postgres, redis, ray_ = await asyncio.gather(
        _check(services.db.ping()), _check(services.redis.ping()), _check(_ray_ok()))
    checks = {"postgres": postgres, "redis": redis, "ray": ray_}
    essential_ok = postgres == "ok" and ray_ == "ok"
    status = "ok" if essential_ok and redis == "ok" else "degraded" if essential_ok else "down"
    return JSONResponse({"status": status, "checks": checks},
                        status_code=200 if essential_ok else 503)
