"""Master revision m0006 (market bars as a TimescaleDB hypertable) on plain PostgreSQL.

This machine has no TimescaleDB, so (1) the revision must leave `market.bars`
partitioned by month, and (2) every step of its move to a hypertable but the
``create_hypertable`` call itself is run here, inside a transaction that is rolled back,
and the platform's writes and reads of bars are checked on the resulting plain table.
"""

from __future__ import annotations

import importlib.util
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import ModuleType

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from actors.market import insert_bars, read_bars
from tenancy.db import Database
from tenancy.identifiers import tenant_schema
from tests.conftest import TenantFactory
from trading.errors import Invalid
from trading.instruments import Bar

REVISION = (Path(__file__).resolve().parents[2] / "tenancy" / "migrations" / "master"
            / "versions" / "m0006_market_timescale.py")


def _revision() -> ModuleType:
    spec = importlib.util.spec_from_file_location("m0006_market_timescale", REVISION)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bar(ts: datetime, close: str = "10.5") -> Bar:
    return Bar("TSDB-TEST", ts, Decimal(10), Decimal(11), Decimal(9), Decimal(close), Decimal(100))


async def _partitioned(conn: AsyncConnection) -> bool:
    return bool((await conn.execute(text(
        "SELECT EXISTS (SELECT FROM pg_partitioned_table"
        " WHERE partrelid = 'market.bars'::regclass)"))).scalar_one())


async def test_without_timescaledb_the_bars_stay_partitioned(db: Database) -> None:
    m0006 = _revision()
    async with db.platform() as uow:
        assert await uow.conn.run_sync(m0006.timescale_ready) is False
        assert await _partitioned(uow.conn)
        version = (await uow.conn.execute(text(
            "SELECT version_num FROM platform.alembic_version"))).scalar_one()
    assert version >= "m0006"


async def test_the_move_to_a_plain_table_keeps_rows_keys_checks_and_grants(
        db: Database, make_tenant: TenantFactory) -> None:
    m0006 = _revision()
    tenant = (await make_tenant()).tenant
    jan, feb = datetime(2032, 1, 31, 23, 59, tzinfo=UTC), datetime(2032, 2, 1, tzinfo=UTC)
    async with db.platform() as uow:  # never committed: the shared test database is kept
        c = uow.conn
        await c.execute(text("SET LOCAL lock_timeout = '20s'"))
        await c.execute(text("INSERT INTO market.instruments (symbol, tick_size, lot_size)"
                             " VALUES ('TSDB-TEST', 0.01, 1) ON CONFLICT DO NOTHING"))
        assert await insert_bars(c, [_bar(jan), _bar(feb)]) == 2
        before = (await c.execute(text("SELECT count(*) FROM market.bars"))).scalar_one()

        await c.run_sync(lambda sync: m0006.to_hypertable(sync, hypertable=False))

        assert not await _partitioned(c)
        assert (await c.execute(text("SELECT count(*) FROM market.bars"))).scalar_one() == before
        leftovers = (await c.execute(text(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'market' AND c.relname LIKE 'bars\\_%' AND c.relkind = 'r'"
        ))).scalar_one()
        assert leftovers == 0  # the monthly partitions went with the old table
        # Writes: no partition is made, a repeated bar is skipped, a new month just lands.
        march = feb + timedelta(days=40)
        assert (await c.execute(text("SELECT market.ensure_bar_partition(:t)"),
                                {"t": march})).scalar_one() is None
        assert await insert_bars(c, [_bar(feb), _bar(march, "10.7")]) == 1
        assert (await c.execute(text("SELECT to_regclass('market.bars_2032_03')"))).scalar_one() \
            is None
        got = await read_bars(c, "TSDB-TEST", start=jan)
        assert [(b.ts, b.close) for b in got] == [(jan, Decimal("10.5")), (feb, Decimal("10.5")),
                                                 (march, Decimal("10.7"))]
        # Keys and checks came along.
        for bad, error in (("INSERT INTO market.bars VALUES ('TSDB-TEST', :t, 10, 11, 9, 10, 1)",
                            "duplicate key"),
                           ("INSERT INTO market.bars VALUES ('NO-SUCH', :t, 10, 11, 9, 10, 1)",
                            "foreign key"),
                           ("INSERT INTO market.bars VALUES ('TSDB-TEST', :t, 10, 9, 8, 10, 1)",
                            "check constraint")):
            with pytest.raises(DBAPIError, match=error):
                async with c.begin_nested():
                    await c.execute(text(bad), {"t": jan})
        with pytest.raises(Invalid):
            await insert_bars(c, [Bar("NO-SUCH", march, Decimal(1), Decimal(1), Decimal(1),
                                      Decimal(1), Decimal(1))])
        # Tenants still read it and still may not write it.
        await c.execute(text("SELECT set_config('role', :r, true)"),
                        {"r": tenant_schema(tenant.slug)})
        assert (await c.execute(text(
            "SELECT count(*) FROM market.bars WHERE symbol = 'TSDB-TEST'"))).scalar_one() == 3
        with pytest.raises(DBAPIError, match="permission denied"):
            async with c.begin_nested():
                await c.execute(text("DELETE FROM market.bars"))
    async with db.platform() as uow:  # rolled back: partitioned as before
        assert await _partitioned(uow.conn)
