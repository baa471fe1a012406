"""Shared market data in schema `market`: instruments, and bars partitioned by month.

(Or a TimescaleDB hypertable, where the server has that extension: master revision m0006.)

Plain async functions, no Ray. Writers take the `Database` and open one platform unit of
work each (tenants may read market data, never write it); readers take a connection, so
they work inside a platform or a tenant unit of work alike (tenants have SELECT on
`market`; the queries name the schema, so a tenant's search_path does not matter).

Bars go through `write_bars`, which first creates the monthly partition of every month in
the batch (`market.ensure_bar_partition`): a bar inserted before its month's partition
exists would land in the default partition and later block creating that partition. On
a hypertable there are no partitions to make.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tenancy.db import Database
from trading.errors import Invalid, NotFound
from trading.instruments import Bar, Instrument, validate_symbol

# Held for the rest of the transaction by whoever creates a partition, so two writers
# never race on CREATE TABLE for the same month.
_PARTITION_LOCK = 0x6D6B7462  # "mktb"

_UPSERT_INSTRUMENTS = text("""
    INSERT INTO market.instruments (symbol, tick_size, lot_size, min_notional)
    SELECT * FROM unnest(CAST(:symbol AS text[]), CAST(:tick_size AS numeric[]),
                         CAST(:lot_size AS numeric[]), CAST(:min_notional AS numeric[]))
    ON CONFLICT (symbol) DO UPDATE SET tick_size = EXCLUDED.tick_size,
        lot_size = EXCLUDED.lot_size, min_notional = EXCLUDED.min_notional""")

_INSERT_BARS = text("""
    WITH inserted AS (
        INSERT INTO market.bars (symbol, ts, open, high, low, close, volume)
        SELECT * FROM unnest(CAST(:symbol AS text[]), CAST(:ts AS timestamptz[]),
                             CAST(:open AS numeric[]), CAST(:high AS numeric[]),
                             CAST(:low AS numeric[]), CAST(:close AS numeric[]),
                             CAST(:volume AS numeric[]))
        ON CONFLICT (symbol, ts) DO NOTHING
        RETURNING 1)
    SELECT count(*) FROM inserted""")

_BAR_COLUMNS = "symbol, ts, open, high, low, close, volume"


def month_of(ts: datetime) -> datetime:
    """The first instant (UTC) of the calendar month holding `ts`."""
    utc = ts.astimezone(UTC)
    return datetime(utc.year, utc.month, 1, tzinfo=UTC)


def partition_name(month: datetime) -> str:
    """The name `market.ensure_bar_partition` gives the partition of `month`."""
    return f"bars_{month.year:04d}_{month.month:02d}"


async def upsert_instruments(db: Database, instruments: Iterable[Instrument]) -> int:
    """Insert or update instruments (tick, lot, minimum notional); return how many.

    One platform transaction. A symbol given twice keeps its last definition.
    """
    by_symbol: dict[str, Instrument] = {}
    for instrument in instruments:
        if not isinstance(instrument, Instrument):
            raise Invalid("instruments must be Instrument records", field="instruments")
        by_symbol[instrument.symbol] = instrument
    if not by_symbol:
        return 0
    rows = list(by_symbol.values())
    async with db.platform() as uow:
        await uow.conn.execute(_UPSERT_INSTRUMENTS, {
            "symbol": [i.symbol for i in rows], "tick_size": [i.tick_size for i in rows],
            "lot_size": [i.lot_size for i in rows], "min_notional": [i.min_notional for i in rows]})
        await uow.commit()
    return len(rows)


async def instrument_map(db: Database, symbols: Sequence[str] | None = None) -> dict[str, Instrument]:
    """The instruments trading knows: the built-in defaults and the rows of `market.instruments`
    (a stored row wins over a default); only those of `symbols` when given."""
    from trading.data import DEFAULT_INSTRUMENTS

    async with db.platform() as uow:
        stored = await list_instruments(uow.conn, symbols)
    defaults = DEFAULT_INSTRUMENTS if symbols is None else \
        {s: DEFAULT_INSTRUMENTS[s] for s in symbols if s in DEFAULT_INSTRUMENTS}
    return {**defaults, **{i.symbol: i for i in stored}}


async def known_instruments(db: Database, symbols: Sequence[str], *, field: str) -> dict[str, Instrument]:
    """The instruments of `symbols`; an unknown one is 422 ``unknown_symbol`` naming `field`."""
    known = await instrument_map(db, symbols)
    unknown = sorted(set(symbols) - set(known))
    if unknown:
        raise Invalid(f"unknown symbol(s): {', '.join(unknown[:10])} (see GET /v1/market/instruments)",
                      field=field, code="unknown_symbol")
    return {s: known[s] for s in symbols}


async def list_instruments(conn: AsyncConnection, symbols: Sequence[str] | None = None) -> list[Instrument]:
    """Every instrument (or those of `symbols`), by symbol."""
    where = "" if symbols is None else " WHERE symbol = ANY(CAST(:s AS text[]))"
    rows = await conn.execute(text(
        f"SELECT symbol, tick_size, lot_size, min_notional FROM market.instruments{where} ORDER BY symbol"),
        {} if symbols is None else {"s": list(symbols)})
    return [Instrument(r.symbol, r.tick_size, r.lot_size, r.min_notional) for r in rows]


async def _ensure_partitions(conn: AsyncConnection, months: Iterable[datetime]) -> None:
    by_name = {partition_name(m): m for m in months}
    missing = (await conn.execute(text(  # none on a hypertable (master revision m0006)
        "SELECT n FROM unnest(CAST(:names AS text[])) AS n"
        " WHERE to_regclass('market.' || n) IS NULL AND EXISTS (SELECT FROM"
        " pg_partitioned_table WHERE partrelid = 'market.bars'::regclass) ORDER BY n"),
        {"names": list(by_name)})).scalars().all()
    if not missing:
        return
    await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PARTITION_LOCK})
    for name in missing:  # the function checks again, now under the lock
        await conn.execute(text("SELECT market.ensure_bar_partition(:at)"), {"at": by_name[name]})


async def write_bars(db: Database, bars: Sequence[Bar]) -> int:
    """Store `bars` in one platform transaction; return how many rows were new (`insert_bars`)."""
    async with db.platform() as uow:
        inserted = await insert_bars(uow.conn, bars)
        await uow.commit()
    return inserted


async def insert_bars(conn: AsyncConnection, bars: Sequence[Bar]) -> int:
    """Insert `bars` on a platform connection; return how many rows were new.

    The partitions of every month present are created first (where `market.bars` is
    partitioned), then one multi-row insert skips bars already stored (same symbol and
    ts), so a batch may be written again safely. A symbol missing from
    `market.instruments` raises `Invalid` (field ``"symbol"``) and inserts nothing.
    """
    unique: dict[tuple[str, datetime], Bar] = {}
    for bar in bars:
        if not isinstance(bar, Bar):
            raise Invalid("bars must be Bar records", field="bars")
        unique.setdefault((bar.symbol, bar.ts), bar)
    if not unique:
        return 0
    rows = list(unique.values())
    symbols = sorted({b.symbol for b in rows})
    known = set((await conn.execute(text(
        "SELECT symbol FROM market.instruments WHERE symbol = ANY(CAST(:s AS text[]))"),
        {"s": symbols})).scalars().all())
    unknown = [s for s in symbols if s not in known]
    if unknown:
        raise Invalid(f"unknown symbol(s): {', '.join(unknown[:10])}", field="symbol",
                      code="unknown_symbol")
    await _ensure_partitions(conn, {month_of(b.ts) for b in rows})
    inserted = (await conn.execute(_INSERT_BARS, {
        "symbol": [b.symbol for b in rows], "ts": [b.ts for b in rows],
        "open": [b.open for b in rows], "high": [b.high for b in rows],
        "low": [b.low for b in rows], "close": [b.close for b in rows],
        "volume": [b.volume for b in rows]})).scalar_one()
    return int(inserted)


def _aware(value: datetime | None, field: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise Invalid(f"{field} must be a timezone-aware datetime", field=field)
    return value.astimezone(UTC)


def _bar(row: Any) -> Bar:
    return Bar(row.symbol, row.ts, row.open, row.high, row.low, row.close, row.volume)


async def read_bars(conn: AsyncConnection, symbol: str, start: datetime | None = None,
                    end: datetime | None = None, limit: int = 500) -> list[Bar]:
    """The bars of `symbol` with start <= ts < end, ordered by ts, at most `limit`.

    With `start` the first `limit` bars from `start`; without it the latest `limit` bars
    before `end` (or of all time). Either way ascending. An unknown symbol raises
    `NotFound` (field ``"symbol"``); a malformed one, start >= end or limit < 1 raise
    `Invalid` naming the argument.
    """
    validate_symbol(symbol)
    lo, hi = _aware(start, "start"), _aware(end, "end")
    if lo is not None and hi is not None and lo >= hi:
        raise Invalid("end must be after start", field="end")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise Invalid("limit must be a positive integer", field="limit")
    params = {"symbol": symbol, "start": lo, "end": hi, "limit": limit}
    upper = "(CAST(:end AS timestamptz) IS NULL OR ts < :end)"
    if lo is not None:
        query = (f"SELECT {_BAR_COLUMNS} FROM market.bars WHERE symbol = :symbol"
                 f" AND ts >= :start AND {upper} ORDER BY ts LIMIT :limit")
    else:
        query = (f"SELECT * FROM (SELECT {_BAR_COLUMNS} FROM market.bars WHERE symbol = :symbol"
                 f" AND {upper} ORDER BY ts DESC LIMIT :limit) AS latest ORDER BY ts")
    if lo is None:
        params.pop("start")
    rows = (await conn.execute(text(query), params)).all()
    if not rows:
        exists = (await conn.execute(text(
            "SELECT 1 FROM market.instruments WHERE symbol = :symbol"),
            {"symbol": symbol})).first()
        if exists is None:
            raise NotFound(f"no instrument {symbol}", field="symbol")
    return [_bar(r) for r in rows]
