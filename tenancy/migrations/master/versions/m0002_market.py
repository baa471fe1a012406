"""Shared market data: schema `market` with instruments and bars partitioned by month.

Bars are declaratively partitioned by range on `ts`, one partition per calendar month,
created on demand by `market.ensure_bar_partition(ts)`; a default partition catches
anything else. Tenants may read market data, never write it.

Revision ID: m0002
Revises: m0001
Create Date: 2026-11-27
"""

from alembic import op

revision = "m0002"
down_revision = "m0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE SCHEMA IF NOT EXISTS market")
    op.execute("""
    CREATE TABLE market.instruments (
        symbol text PRIMARY KEY CHECK (symbol ~ '^[A-Z0-9][A-Z0-9._/-]{0,31}$'),
        tick_size numeric NOT NULL CHECK (tick_size > 0),
        lot_size numeric NOT NULL CHECK (lot_size > 0),
        min_notional numeric NOT NULL DEFAULT 0 CHECK (min_notional >= 0),
        description text NOT NULL DEFAULT '',
        created_at timestamptz NOT NULL DEFAULT now()
    )""")
    op.execute("""
    CREATE TABLE market.bars (
        symbol text NOT NULL REFERENCES market.instruments(symbol),
        ts timestamptz NOT NULL,
        open numeric NOT NULL CHECK (open > 0),
        high numeric NOT NULL CHECK (high > 0),
        low numeric NOT NULL CHECK (low > 0),
        close numeric NOT NULL CHECK (close > 0),
        volume numeric NOT NULL CHECK (volume >= 0),
        CHECK (high >= greatest(open, close, low) AND low <= least(open, close)),
        PRIMARY KEY (symbol, ts)
    ) PARTITION BY RANGE (ts)""")
    op.execute("CREATE TABLE market.bars_default PARTITION OF market.bars DEFAULT")
    op.execute("""
    CREATE FUNCTION market.ensure_bar_partition(at timestamptz) RETURNS text
    LANGUAGE plpgsql AS $$
    DECLARE
        first date := date_trunc('month', at AT TIME ZONE 'UTC')::date;
        name text := 'bars_' || to_char(first, 'YYYY_MM');
    BEGIN
        IF to_regclass('market.' || name) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE market.%I PARTITION OF market.bars FOR VALUES FROM (%L) TO (%L)',
                name, first::timestamp AT TIME ZONE 'UTC',
                (first + interval '1 month')::timestamp AT TIME ZONE 'UTC');
        END IF;
        RETURN name;
    END $$""")
    op.execute("GRANT USAGE ON SCHEMA market TO atp_tenant")
    op.execute("GRANT SELECT ON ALL TABLES IN SCHEMA market TO atp_tenant")
    op.execute("ALTER DEFAULT PRIVILEGES IN SCHEMA market GRANT SELECT ON TABLES TO atp_tenant")


def downgrade() -> None:
    op.execute("DROP SCHEMA market CASCADE")
