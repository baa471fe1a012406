"""The usage ledger against real PostgreSQL: idempotent samples, refusals, aggregates."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from billing import ledger
from billing.ledger import Sample
from tenancy.db import Database
from tests.conftest import TenantFactory

T0 = datetime(2025, 6, 30, 23, 59, 45, tzinfo=UTC)


def s(tenant: uuid.UUID, meter: str = "cpu_seconds", start: datetime = T0, seconds: int = 15,
      source: str = "ray-runtime", qty: str = "1.5") -> Sample:
    return Sample(tenant, meter, start, start + timedelta(seconds=seconds), source, Decimal(qty))


async def _record(db: Database, samples: list[Sample]) -> ledger.IngestResult:
    async with db.platform() as uow:
        result = await ledger.record(uow.conn, samples)
        await uow.commit()
    return result


async def _daily(db: Database, tenant: uuid.UUID) -> dict[tuple[str, date], tuple[Decimal, int]]:
    async with db.platform() as uow:
        rows = await uow.conn.execute(text(
            "SELECT meter, day, quantity, samples FROM platform.usage_daily WHERE tenant_id = :t"),
            {"t": tenant})
        return {(r.meter, r.day): (r.quantity, r.samples) for r in rows}


async def test_a_sample_counts_once_however_often_it_arrives(
        db: Database, make_tenant: TenantFactory) -> None:
    t = (await make_tenant()).tenant.id
    first = await _record(db, [s(t), s(t)])  # twice in one batch
    again = await _record(db, [s(t), s(t, source="gateway", meter="api_calls", qty="7")])
    assert (first.accepted, first.duplicates) == (1, 1)
    assert (again.accepted, again.duplicates) == (1, 1)
    assert await _daily(db, t) == {("cpu_seconds", T0.date()): (Decimal("1.5"), 1),
                                   ("api_calls", T0.date()): (Decimal(7), 1)}


async def test_a_sample_lands_in_the_day_and_month_of_its_window(
        db: Database, make_tenant: TenantFactory) -> None:
    t = (await make_tenant()).tenant.id
    late = T0 - timedelta(days=40)  # a late sample for May
    await _record(db, [s(t, qty="2"), s(t, start=T0 + timedelta(seconds=15), qty="3"),
                       s(t, start=late, qty="4")])
    async with db.platform() as uow:
        days = await ledger.usage(uow.conn, date(2025, 5, 1), date(2025, 8, 1), "day",
                                  tenant_id=t)
        months = await ledger.usage(uow.conn, date(2025, 5, 1), date(2025, 8, 1), "month",
                                    tenant_id=t)
    assert [(r.period, r.quantity) for r in days] == [
        (late.date(), Decimal(4)), (date(2025, 6, 30), Decimal(2)), (date(2025, 7, 1), Decimal(3))]
    assert [(r.period, r.quantity, r.samples) for r in months] == [
        (date(2025, 5, 1), Decimal(4), 1), (date(2025, 6, 1), Decimal(2), 1),
        (date(2025, 7, 1), Decimal(3), 1)]


@pytest.mark.parametrize(("sample", "reason"), [
    ({"meter": "cpu_hours"}, "unknown_meter"),
    ({"qty": "-1"}, "negative_quantity"),
    ({"qty": "NaN"}, "non_finite_quantity"),
    ({"qty": "Infinity"}, "non_finite_quantity"),
    ({"start": datetime.now(UTC) + timedelta(hours=1)}, "window_in_future"),
    ({"seconds": 0}, "empty_window"),
    ({"start": datetime(2025, 6, 1)}, "naive_window"),
    ({"source": ""}, "bad_source"),
])
async def test_bad_samples_are_refused_logged_and_not_aggregated(
        db: Database, make_tenant: TenantFactory, caplog: pytest.LogCaptureFixture,
        sample: dict[str, object], reason: str) -> None:
    t = (await make_tenant()).tenant.id
    bad = s(t, **sample)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="billing.ledger"):
        result = await _record(db, [bad, s(t, start=T0 - timedelta(minutes=5))])
    assert result.accepted == 1 and [r for _, r in result.rejected] == [reason]
    assert reason in caplog.text
    assert list(await _daily(db, t)) == [("cpu_seconds", T0.date())]
    async with db.platform() as uow:
        stored = (await uow.conn.execute(text(
            "SELECT count(*) FROM platform.usage_rejects WHERE tenant_id = :t AND reason = :r"),
            {"t": t, "r": reason})).scalar_one()
        events = (await uow.conn.execute(text(
            "SELECT count(*) FROM platform.usage_events WHERE tenant_id = :t"), {"t": t})
        ).scalar_one()
    assert stored == 1 and events == 1


async def test_unknown_tenants_are_refused(db: Database) -> None:
    result = await _record(db, [s(uuid.uuid4())])
    assert result.accepted == 0 and [r for _, r in result.rejected] == ["unknown_tenant"]


async def test_samples_are_append_only(db: Database, make_tenant: TenantFactory) -> None:
    t = (await make_tenant()).tenant.id
    await _record(db, [s(t)])
    for statement in ("UPDATE platform.usage_events SET quantity = 0 WHERE tenant_id = :t",
                      "DELETE FROM platform.usage_events WHERE tenant_id = :t"):
        with pytest.raises(DBAPIError, match="append-only"):
            async with db.platform() as uow:
                await uow.conn.execute(text(statement), {"t": t})


async def test_the_tenant_sees_only_its_own_usage_under_its_role(
        db: Database, make_tenant: TenantFactory) -> None:
    a, b = (await make_tenant()).tenant, (await make_tenant()).tenant
    await _record(db, [s(a.id), s(b.id, qty="9")])
    async with db.tenant(a.id, a.slug) as uow:  # no tenant filter: row-level security
        rows = await ledger.usage(uow.conn, date(2025, 6, 1), date(2025, 7, 1), "month")
    assert {r.tenant_id for r in rows} == {a.id}
