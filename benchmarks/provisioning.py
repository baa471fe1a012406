"""Provisioning cost: seconds per tenant for N tenants, then `migrate` over all of them.

Each tenant is a full provisioning (tenant row, role, schema, tenant migrations, owner,
API key, data key, audit entry) in one transaction. `migrate` is measured twice: with
every tenant schema one revision behind (downgraded to base, so each is really upgraded),
and again when all are up to date (the common rerun). The baseline in the same run is a
bare ``CREATE SCHEMA`` + ``CREATE ROLE`` transaction per tenant, the floor of any
schema-per-tenant design on this machine.

    python benchmarks/provisioning.py [--tenants 100]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time

from _common import bench_database_url, recreate_database
from sqlalchemy import text

from tenancy.credentials import hash_password
from tenancy.db import Database
from tenancy.migrate import downgrade_tenant_schema, migrate_all
from tenancy.settings import load_settings
from tenancy.tenants import provision


async def run(n: int) -> None:
    url = bench_database_url("atp_bench_provisioning")
    await recreate_database(url, "tenant_bp")
    await recreate_database(url, "bare_bp")
    settings = load_settings(dev_mode=True, data_dir=tempfile.mkdtemp(prefix="atp-bench-"),
                             database_url=url)
    db = Database.from_url(settings.database_url or "", pool_size=4)
    try:
        await migrate_all(db)

        t0 = time.perf_counter()
        for i in range(n):
            async with db.platform() as uow:
                await uow.conn.execute(text(f'CREATE ROLE "bare_bp_{i}" NOLOGIN'))
                await uow.conn.execute(text(f'CREATE SCHEMA "bare_bp_{i}" AUTHORIZATION'
                                            f' "bare_bp_{i}"'))
                await uow.commit()
        bare = (time.perf_counter() - t0) / n

        each: list[float] = []
        t0 = time.perf_counter()
        for i in range(n):
            t = time.perf_counter()
            await provision(db, settings.master_key_bytes, name=f"Bench {i}", plan="starter",
                            email=f"owner{i}@bench.example.com", slug=f"bp-{i:04d}",
                            password="benchmark password")
            each.append(time.perf_counter() - t)
        total = time.perf_counter() - t0

        for i in range(n):  # one transaction per schema (locks), as migrate does
            async with db.platform() as uow:
                await downgrade_tenant_schema(uow.conn, f"bp-{i:04d}", "base")
                await uow.commit()
        t0 = time.perf_counter()
        reports = await migrate_all(db)
        migrate_behind = time.perf_counter() - t0
        assert sum(r.status == "upgraded" for r in reports) == n, reports[:3]

        t0 = time.perf_counter()
        reports = await migrate_all(db)
        migrate_current = time.perf_counter() - t0
        assert all(r.status == "up to date" for r in reports)

        t0 = time.perf_counter()
        for _ in range(10):
            hash_password("benchmark password")
        argon = (time.perf_counter() - t0) / 10

        each.sort()
        print(f"tenants                               {n}")
        print(f"baseline CREATE ROLE+SCHEMA  s/tenant {bare:.4f}")
        print(f"provision                    s/tenant {total / n:.4f}  "
              f"(p50 {statistics.median(each):.4f}, max {each[-1]:.4f}; "
              f"{total / n / bare:.1f}x the baseline)")
        print(f"  of which the owner's argon2id hash s {argon:.4f}  "
              f"(the rest: {total / n - argon:.4f} s/tenant)")
        print(f"provision total                    s {total:.2f}")
        print(f"migrate, {n} schemas behind        s {migrate_behind:.2f}  "
              f"({migrate_behind / n:.4f} s/schema)")
        print(f"migrate, all up to date            s {migrate_current:.2f}  "
              f"({migrate_current / n:.4f} s/schema)")
    finally:
        async with db.platform() as uow:
            for i in range(n):
                await uow.conn.execute(text(f'DROP SCHEMA IF EXISTS "bare_bp_{i}" CASCADE'))
                await uow.conn.execute(text(f'DROP ROLE IF EXISTS "bare_bp_{i}"'))
            await uow.commit()
        await db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=100)
    asyncio.run(run(parser.parse_args().tenants))


if __name__ == "__main__":
    main()
