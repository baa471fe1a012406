"""Gateway overhead: authenticated ``GET /v1/me`` against a bare Serve route, same run.

Both run as Serve FastAPI ingresses with the same deployment options on the same local
Ray; the load generator (wrk, or a Python fallback) uses the same concurrency for both.
Rounds alternate bare/gateway to spread machine noise; medians are compared.

The tenant is on a plan with a very high rate limit so that the full pipeline runs
(credential check, token bucket and monthly quota in Redis, call counting) without
the benchmark itself being throttled.

    python benchmarks/gateway.py [--seconds 10] [--connections 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile

from _common import Load, bench_database_url, recreate_database, run_load

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray
from fastapi import FastAPI
from ray import serve
from sqlalchemy import text

from serve.app import build_app
from tenancy.db import Database
from tenancy.migrate import migrate_all
from tenancy.settings import load_settings
from tenancy.tenants import provision

PORT = 8765


async def prepare(url: str, master_key: bytes) -> str:
    await recreate_database(url, "tenant_bench_gw")
    db = Database.from_url(url.replace("postgresql://", "postgresql+asyncpg://"), pool_size=2)
    try:
        await migrate_all(db)
        async with db.platform() as uow:
            await uow.conn.execute(text(
                "INSERT INTO platform.plans (code, name, rate_per_second, burst,"
                " api_calls_per_month) VALUES ('loadtest', 'Load test', 1000000, 1000000,"
                " 1000000000000)"))
            await uow.commit()
        created = await provision(db, master_key, name="Bench", plan="loadtest",
                                  email="bench@example.com", slug="bench-gw")
        return created.api_key
    finally:
        await db.dispose()


def bare_app() -> serve.Application:
    app = FastAPI()

    @app.get("/")
    async def constant() -> dict[str, bool]:
        return {"ok": True}

    return serve.deployment(name="Bare", ray_actor_options={"num_cpus": 0.25},
                            max_ongoing_requests=200)(serve.ingress(app)()).bind()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    db_url = bench_database_url("atp_bench_gateway")
    settings = load_settings(
        dev_mode=True, data_dir=tempfile.mkdtemp(prefix="atp-bench-"),
        database_url=db_url,
        redis_url=os.environ.get("ATP_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"),
        usage_flush_seconds=5)
    key = asyncio.run(prepare(db_url, settings.master_key_bytes))

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": PORT},
                    logging_config={"enable_access_log": False})
        serve.run(bare_app(), name="bare", route_prefix="/bare")
        serve.run(build_app(settings, num_cpus=0.25), name="gateway", route_prefix="/")
        base = f"http://127.0.0.1:{PORT}"
        auth = {"Authorization": f"Bearer {key}"}
        run_load(f"{base}/bare", seconds=2, headers={})  # warm-up
        run_load(f"{base}/v1/me", seconds=2, headers=auth)
        bare: list[Load] = []
        gateway: list[Load] = []
        for i in range(args.rounds):
            bare.append(run_load(f"{base}/bare", seconds=args.seconds,
                                 connections=args.connections))
            gateway.append(run_load(f"{base}/v1/me", seconds=args.seconds,
                                    connections=args.connections, headers=auth))
            print(f"round {i + 1}: bare {bare[-1].requests_per_second:8.1f} req/s   "
                  f"gateway {gateway[-1].requests_per_second:8.1f} req/s")
        assert all(g.non_2xx == 0 for g in gateway), "the gateway answered errors"
        med = lambda xs, f: statistics.median(getattr(x, f) for x in xs)  # noqa: E731
        print(f"\nconcurrency {args.connections}, {args.rounds} rounds x {args.seconds}s, medians")
        print(f"{'route':<34}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
        for name, runs in (("bare Serve route (constant)", bare),
                           ("gateway GET /v1/me (API key)", gateway)):
            print(f"{name:<34}{med(runs, 'requests_per_second'):>10.1f}"
                  f"{med(runs, 'p50_ms'):>10.2f}{med(runs, 'p99_ms'):>10.2f}")
        ratio = med(gateway, "requests_per_second") / med(bare, "requests_per_second")
        print(f"\nthroughput ratio gateway/bare = {ratio:.2f} (goal >= 0.70)")
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
