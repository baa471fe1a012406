"""Shared market bars as a TimescaleDB hypertable, where the server has TimescaleDB.

m0002 partitions `market.bars` by month (declarative partitioning). Where TimescaleDB
can be used (``timescaledb`` is among the server's available extensions and this role
can create it, which needs it in ``shared_preload_libraries``), this revision makes the
table a hypertable with one-month chunks instead: the partitioned table steps aside, a
plain table with the same columns, checks, key and foreign key takes its name and becomes
a hypertable, the rows move over, and the old table is dropped, all in the migration's
transaction. Anywhere else nothing changes (a failed ``CREATE EXTENSION`` is rolled back
to a savepoint). `market.ensure_bar_partition` does nothing on a hypertable (it returns
NULL; TimescaleDB makes its own chunks), and `actors.market.write_bars` does not call it.

Not tested against TimescaleDB: this project's test machines have no package of it
(Debian 12 ships none). `tests/integration/test_market_timescale.py` runs `to_hypertable`
on plain PostgreSQL with the ``create_hypertable`` call left out, then writes and reads
bars through the platform's functions.

Revision ID: m0006
Revises: m0005
Create Date: 2026-11-27
"""

import logging

from alembic import op
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

revision = "m0006"
down_revision = "m0005"
branch_labels = None
depends_on = None

log = logging.getLogger(__name__)

# A no-op on anything but a partitioned market.bars; otherwise m0002's function.
ENSURE_BAR_PARTITION = """
CREATE OR REPLACE FUNCTION market.ensure_bar_partition(at timestamptz) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    first date := date_trunc('month', at AT TIME ZONE 'UTC')::date;
    name text := 'bars_' || to_char(first, 'YYYY_MM');
BEGIN
    IF NOT EXISTS (SELECT FROM pg_partitioned_table
                   WHERE partrelid = 'market.bars'::regclass) THEN
        RETURN NULL;
    END IF;
    IF to_regclass('market.' || name) IS NULL THEN
        EXECUTE format(
            'CREATE TABLE market.%I PARTITION OF market.bars FOR VALUES FROM (%L) TO (%L)',
            name, first::timestamp AT TIME ZONE 'UTC',
            (first + interval '1 month')::timestamp AT TIME ZONE 'UTC');
    END IF;
    RETURN name;
END $$"""

CREATE_HYPERTABLE = ("SELECT create_hypertable('market.bars', 'ts',"
                     " chunk_time_interval => INTERVAL '1 month')")


def upgrade() -> None:
    conn = op.get_bind()
    conn.execute(text(ENSURE_BAR_PARTITION))
    if timescale_ready(conn):
        to_hypertable(conn)


def downgrade() -> None:
    """Keep the bars as they are: a hypertable is not turned back into partitions."""


def timescale_ready(conn: Connection) -> bool:
    """Whether the timescaledb extension exists in this database (created here if it can be)."""
    available = conn.execute(text(
        "SELECT EXISTS (SELECT FROM pg_available_extensions WHERE name = 'timescaledb')")
    ).scalar_one()
    if not available:
        return False
    try:
        with conn.begin_nested():
            conn.execute(text("CREATE EXTENSION IF NOT EXISTS timescaledb"))
    except DBAPIError as exc:  # not preloaded, or not allowed: keep the partitions
        log.warning("TimescaleDB is available but cannot be created here (%s);"
                    " market.bars stays partitioned by month", str(exc).splitlines()[0])
        return False
    return True


def to_hypertable(conn: Connection, *, hypertable: bool = True) -> None:
    """Move `market.bars` from monthly partitions to a hypertable (see the module docstring).

    With `hypertable` False the new table stays a plain one: every other step runs, which
    is how the test checks them on PostgreSQL without TimescaleDB.
    """
    partitioned = conn.execute(text(
        "SELECT EXISTS (SELECT FROM pg_partitioned_table"
        " WHERE partrelid = 'market.bars'::regclass)")).scalar_one()
    if not partitioned:
        return
    for statement in (
        "ALTER TABLE market.bars RENAME TO bars_by_month",
        "ALTER TABLE market.bars_by_month RENAME CONSTRAINT bars_pkey TO bars_by_month_pkey",
        "ALTER TABLE market.bars_by_month RENAME CONSTRAINT bars_symbol_fkey"
        " TO bars_by_month_symbol_fkey",
        "CREATE TABLE market.bars (LIKE market.bars_by_month INCLUDING DEFAULTS"
        " INCLUDING CONSTRAINTS, PRIMARY KEY (symbol, ts),"
        " FOREIGN KEY (symbol) REFERENCES market.instruments(symbol))",
        *([CREATE_HYPERTABLE] if hypertable else []),
        "INSERT INTO market.bars SELECT * FROM market.bars_by_month",
        "DROP TABLE market.bars_by_month",
        "GRANT SELECT ON market.bars TO atp_tenant",
    ):
        conn.execute(text(statement))
