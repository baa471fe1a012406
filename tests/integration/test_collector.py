"""The collector against real Ray (state API + the dashboard's reporter) and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, date, datetime
from decimal import Decimal

import psutil
import pytest
import ray
from sqlalchemy import text

from billing.collector import Collector
from billing.ray_source import RayRuntime, crosscheck
from tenancy.db import Database
from tests.conftest import TenantFactory


@ray.remote(num_cpus=0)
class Burner:
    """Burns CPU on request and says how much its process has used (process_time)."""

    def burn(self, seconds: float) -> float:
        start = time.process_time()
        while time.process_time() - start < seconds:
            pass
        return time.process_time()

    def used(self) -> float:
        return time.process_time()

    def pid(self) -> int:
        return os.getpid()


async def _metered(db: Database, tenant_id: object, meter: str) -> Decimal:
    async with db.platform() as uow:
        value = (await uow.conn.execute(text(
            "SELECT coalesce(sum(quantity), 0) FROM platform.usage_events"
            " WHERE tenant_id = :t AND meter = :m"), {"t": tenant_id, "m": meter})).scalar_one()
    return Decimal(value)


async def _tick_until(collector: Collector, done: object, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await asyncio.sleep(collector.interval.total_seconds() + 0.05)
        await collector.tick()
        if await done():  # type: ignore[operator]
            return
    raise AssertionError("the collector did not get there in time")


@pytest.mark.timeout(300)
async def test_cpu_burned_in_a_tenant_actor_is_metered_within_5_percent(
        ray_session: None, db: Database, make_tenant: TenantFactory) -> None:
    t = (await make_tenant()).tenant
    collector = Collector(db, RayRuntime(), interval=1.0)
    await asyncio.sleep(1.05)
    await collector.tick()  # watching from here: a new process counts from zero
    burner = Burner.options(name="burner", namespace=f"tenant-{t.slug}").remote()
    used = Decimal(str(await burner.burn.remote(4.0)))  # the whole process, measured inside

    async def caught_up() -> bool:
        return await _metered(db, t.id, "cpu_seconds") >= used * Decimal("0.97")
    await _tick_until(collector, caught_up)
    metered = await _metered(db, t.id, "cpu_seconds")
    after = Decimal(str(await burner.used.remote()))
    error = abs(metered - used) / used
    assert error <= Decimal("0.05"), (metered, used, after)
    assert metered <= after * Decimal("1.001")  # never more than the process used
    assert await _metered(db, t.id, "memory_gb_seconds") > 0

    # The cross-check on this node: psutil reads the same pid no lower than the reporter.
    pid = await burner.pid.remote()
    stats = await RayRuntime().node_stats({ray.get_runtime_context().get_node_id()})
    checks = crosscheck(stats, ray.get_runtime_context().get_node_id())
    reporter, direct = checks[pid]
    assert direct >= reporter and direct == pytest.approx(
        Decimal(str(sum(psutil.Process(pid).cpu_times()[:2]))), abs=0.5)

    # A restarted collector resumes from the stored cursors: nothing counted twice.
    restarted = Collector(db, RayRuntime(), interval=1.0)
    before = await _metered(db, t.id, "cpu_seconds")
    await asyncio.sleep(1.05)
    await restarted.tick()
    assert await _metered(db, t.id, "cpu_seconds") - before < Decimal("0.5")
    ray.kill(burner)


async def test_api_calls_and_storage_become_samples(
        ray_session: None, db: Database, make_tenant: TenantFactory) -> None:
    t = (await make_tenant()).tenant
    today = datetime.now(UTC).date()
    async with db.platform() as uow:  # what the gateway's flusher writes
        await uow.conn.execute(text(
            "INSERT INTO platform.api_usage (tenant_id, day, calls) VALUES (:t, :d, 40),"
            " (:t, :y, 2)"), {"t": t.id, "d": today, "y": date.fromordinal(today.toordinal() - 1)})
        await uow.commit()
    collector = Collector(db, RayRuntime(), interval=1.0)
    await asyncio.sleep(1.05)
    await collector.tick()
    assert await _metered(db, t.id, "api_calls") == 42  # yesterday's late count included
    async with db.platform() as uow:
        await uow.conn.execute(text(
            "UPDATE platform.api_usage SET calls = calls + 8 WHERE tenant_id = :t AND day = :d"),
            {"t": t.id, "d": today})
        await uow.commit()
    await asyncio.sleep(1.05)
    await collector.tick()
    assert await _metered(db, t.id, "api_calls") == 50  # only the difference was added
    assert await _metered(db, t.id, "storage_gb_seconds") > 0


@pytest.mark.timeout(300)
async def test_a_tenant_jobs_driver_is_metered_and_token_auth_is_on(
        ray_session: None, db: Database, make_tenant: TenantFactory) -> None:
    import sys
    from pathlib import Path

    import httpx
    from ray.job_submission import JobStatus, JobSubmissionClient

    from actors.jobs import dashboard_url

    t = (await make_tenant()).tenant
    url = dashboard_url(ray.get_runtime_context().gcs_address)
    node = ray.get_runtime_context().get_node_id()
    async with httpx.AsyncClient() as client:  # Ray 2.60's token auth is on in this cluster
        assert (await client.get(f"{url}/nodes/{node}")).status_code == 401
    collector = Collector(db, RayRuntime(), interval=1.0)
    await asyncio.sleep(1.05)
    await collector.tick()
    script = Path(__file__).with_name("job_burn.py")
    jobs = JobSubmissionClient(url)
    deadline = time.monotonic() + 60
    while True:  # the dashboard's job agent may still be starting on a busy machine
        try:
            job = jobs.submit_job(entrypoint=f"{sys.executable} {script} 3 40",
                                  metadata={"atp_tenant_id": str(t.id)}, entrypoint_num_cpus=0)
            break
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(2)
    try:
        async def metered_enough() -> bool:
            return await _metered(db, t.id, "cpu_seconds") >= Decimal(3)
        await _tick_until(collector, metered_enough, timeout=120)
        assert jobs.get_job_status(job) == JobStatus.RUNNING
        procs = await RayRuntime().processes({t.slug: t.id})
        assert [p.kind for p in procs] == ["driver"] and procs[0].name == f"job:{job}"
    finally:
        jobs.stop_job(job)
