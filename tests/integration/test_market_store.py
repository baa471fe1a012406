"""actors.market on real PostgreSQL: instruments, partitioned bar writes, reads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import text

from actors.market import list_instruments, read_bars, upsert_instruments, write_bars
from tenancy.db import Database
from tests.conftest import TenantFactory
from trading.data import DEFAULT_INSTRUMENTS, SyntheticSource
from trading.errors import Invalid, NotFound
from trading.instruments import Bar, Instrument

HOUR = timedelta(hours=1)


def bar(symbol: str, ts: datetime, close: str = "10.5") -> Bar:
    return Bar(symbol, ts, Decimal(10), Decimal(11), Decimal(9), Decimal(close), Decimal(100))


async def test_upsert_and_list_instruments(db: Database, make_tenant: TenantFactory) -> None:
    assert await upsert_instruments(db, DEFAULT_INSTRUMENTS.values()) == 4
    extra = Instrument("MS-UPSERT", Decimal("0.05"), Decimal(10), Decimal(5))
    assert await upsert_instruments(db, [extra, extra]) == 1
    changed = Instrument("MS-UPSERT", Decimal("0.01"), Decimal(1))
    await upsert_instruments(db, [changed])
    assert await upsert_instruments(db, []) == 0
    async with db.platform() as uow:
        listed = await list_instruments(uow.conn)
    symbols = [i.symbol for i in listed]
    assert symbols == sorted(symbols)
    by_symbol = {i.symbol: i for i in listed}
    assert by_symbol["MS-UPSERT"] == changed
    assert by_symbol["BTC-USD"] == DEFAULT_INSTRUMENTS["BTC-USD"]
    # tenants read market data in their own unit of work
    t = (await make_tenant()).tenant
    async with db.tenant(t.id, t.slug) as uow:
        assert {i.symbol for i in await list_instruments(uow.conn)} >= set(DEFAULT_INSTRUMENTS)


async def test_bars_across_two_months_land_in_two_partitions_idempotently(db: Database) -> None:
    await upsert_instruments(db, [Instrument("MS-PART", Decimal("0.01"), Decimal(1))])
    start = datetime(2032, 3, 31, 21, tzinfo=UTC)  # 3 bars in March, 3 in April (UTC)
    bars = [bar("MS-PART", start + i * HOUR) for i in range(6)]
    assert await write_bars(db, bars) == 6
    assert await write_bars(db, bars) == 0  # again: nothing new
    more = [*bars[-2:], bar("MS-PART", start + 6 * HOUR)]
    assert await write_bars(db, more) == 1  # only the new one
    assert await write_bars(db, []) == 0
    async with db.platform() as uow:
        rows = (await uow.conn.execute(text(
            "SELECT tableoid::regclass::text AS part, count(*) AS n FROM market.bars"
            " WHERE symbol = 'MS-PART' GROUP BY 1 ORDER BY 1"))).all()
        in_default = (await uow.conn.execute(text(
            "SELECT count(*) FROM market.bars_default"))).scalar_one()
    assert [(r.part, r.n) for r in rows] == [("market.bars_2032_03", 3), ("market.bars_2032_04", 4)]
    assert in_default == 0


async def test_synthetic_bars_round_trip(db: Database) -> None:
    await upsert_instruments(db, DEFAULT_INSTRUMENTS.values())
    start = datetime(2032, 6, 30, 23, 50, tzinfo=UTC)
    made = list(SyntheticSource(seed=11).bars(["BTC-USD", "ETH-USD"], start,
                                              start + timedelta(minutes=20)))
    assert await write_bars(db, made) == 40
    async with db.platform() as uow:
        back = await read_bars(uow.conn, "BTC-USD", start, start + timedelta(minutes=20), 100)
    assert back == [b for b in made if b.symbol == "BTC-USD"]


async def test_unknown_symbol_is_invalid_and_writes_nothing(db: Database) -> None:
    await upsert_instruments(db, [Instrument("MS-KNOWN", Decimal("0.01"), Decimal(1))])
    ts = datetime(2032, 8, 1, tzinfo=UTC)
    with pytest.raises(Invalid) as err:
        await write_bars(db, [bar("MS-KNOWN", ts), bar("MS-NOPE", ts)])
    assert err.value.field == "symbol" and "MS-NOPE" in err.value.message
    with pytest.raises(Invalid) as err:
        await write_bars(db, ["nope"])  # type: ignore[list-item]
    assert err.value.field == "bars"
    async with db.platform() as uow:
        n = (await uow.conn.execute(text(
            "SELECT count(*) FROM market.bars WHERE symbol = 'MS-KNOWN'"))).scalar_one()
    assert n == 0


async def test_read_bars_orders_bounds_and_limits(db: Database, make_tenant: TenantFactory) -> None:
    await upsert_instruments(db, [Instrument("MS-READ", Decimal("0.01"), Decimal(1)),
                                  Instrument("MS-EMPTY", Decimal("0.01"), Decimal(1))])
    t0 = datetime(2032, 10, 1, tzinfo=UTC)
    bars = [bar("MS-READ", t0 + i * HOUR, close=f"10.{i}") for i in range(10)]
    await write_bars(db, list(reversed(bars)))  # written out of order
    t = (await make_tenant()).tenant
    async with db.tenant(t.id, t.slug) as uow:
        c = uow.conn
        assert await read_bars(c, "MS-READ", t0, t0 + 10 * HOUR, 100) == bars
        assert await read_bars(c, "MS-READ", t0 + 2 * HOUR, t0 + 5 * HOUR, 100) == bars[2:5]
        assert await read_bars(c, "MS-READ", t0, None, 3) == bars[:3]
        assert await read_bars(c, "MS-READ", None, None, 3) == bars[-3:]  # the latest, ascending
        assert await read_bars(c, "MS-READ", None, t0 + 5 * HOUR, 2) == bars[3:5]
        assert await read_bars(c, "MS-EMPTY", t0, None, 10) == []  # known, no bars
        with pytest.raises(NotFound) as nf:
            await read_bars(c, "MS-UNKNOWN", t0, None, 10)
        assert nf.value.field == "symbol"
        for args, field in (((t0, t0, 10), "end"), ((t0, None, 0), "limit"),
                            ((datetime(2032, 1, 1), None, 10), "start")):
            with pytest.raises(Invalid) as err:
                await read_bars(c, "MS-READ", *args)
            assert err.value.field == field
        with pytest.raises(Invalid) as err:
            await read_bars(c, "ms-read", t0, None, 10)
        assert err.value.field == "symbol"
