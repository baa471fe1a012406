"""Shared market data: monthly partitions, readable by tenants, writable only by the platform."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tenancy.db import Database
from tests.conftest import TenantFactory


async def test_bars_land_in_monthly_partitions(db: Database, make_tenant: TenantFactory) -> None:
    async with db.platform() as uow:
        c = uow.conn
        await c.execute(text("INSERT INTO market.instruments (symbol, tick_size, lot_size)"
                             " VALUES ('PART-TEST', 0.01, 1) ON CONFLICT DO NOTHING"))
        for ts in (datetime(2031, 1, 31, 23, 59, tzinfo=UTC), datetime(2031, 2, 1, tzinfo=UTC)):
            await c.execute(text("SELECT market.ensure_bar_partition(:t)"), {"t": ts})
            await c.execute(text(
                "INSERT INTO market.bars VALUES ('PART-TEST', :t, 10, 11, 9, 10.5, 100)"),
                {"t": ts})
        again = (await c.execute(text(
            "SELECT market.ensure_bar_partition('2031-02-15+00')"))).scalar_one()
        rows = (await c.execute(text(
            "SELECT tableoid::regclass::text AS part FROM market.bars WHERE symbol = 'PART-TEST'"
            " ORDER BY ts"))).scalars().all()
        await uow.commit()
    assert rows == ["market.bars_2031_01", "market.bars_2031_02"]
    assert again == "bars_2031_02"

    t = (await make_tenant()).tenant
    async with db.tenant(t.id, t.slug) as uow:
        n = (await uow.conn.execute(text(
            "SELECT count(*) FROM market.bars WHERE symbol = 'PART-TEST'"))).scalar_one()
        assert n == 2
    async with db.tenant(t.id, t.slug) as uow:
        with pytest.raises(DBAPIError, match="permission denied"):
            await uow.conn.execute(text("DELETE FROM market.bars"))


async def test_inconsistent_bars_are_refused(db: Database) -> None:
    async with db.platform() as uow:
        await uow.conn.execute(text("INSERT INTO market.instruments (symbol, tick_size, lot_size)"
                                    " VALUES ('BAD-BAR', 0.01, 1) ON CONFLICT DO NOTHING"))
        with pytest.raises(DBAPIError, match="check"):
            await uow.conn.execute(text(
                "INSERT INTO market.bars VALUES ('BAD-BAR', now(), 10, 9, 8, 10.5, 1)"))
