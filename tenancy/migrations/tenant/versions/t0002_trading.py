"""Tenant schema: bots, paper accounts, orders and their events, fills, positions, P&L, risk.

Truth for the trading runtime: orders are written before a broker sees them, every
status change is a row in order_events, fills carry unique ids, and client order ids
are unique per tenant, so a retry never trades twice.

Revision ID: t0002
Revises: t0001
Create Date: 2026-11-27
"""

from alembic import op

revision = "t0002"
down_revision = "t0001"
branch_labels = None
depends_on = None

STATUSES = "'new', 'accepted', 'partially_filled', 'filled', 'canceled', 'rejected', 'expired'"


def upgrade() -> None:
    op.execute("""
    CREATE TABLE bots (
        id uuid PRIMARY KEY,
        name text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 100),
        strategy text NOT NULL,
        params jsonb NOT NULL DEFAULT '{}'::jsonb,
        symbols text[] NOT NULL CHECK (cardinality(symbols) BETWEEN 1 AND 50),
        capital numeric NOT NULL CHECK (capital > 0),
        num_cpus numeric NOT NULL CHECK (num_cpus > 0),
        memory_bytes bigint NOT NULL CHECK (memory_bytes > 0),
        status text NOT NULL DEFAULT 'stopped'
            CHECK (status IN ('stopped', 'starting', 'running', 'stopping', 'error')),
        last_error text,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        version integer NOT NULL DEFAULT 1
    )""")
    # One paper account per bot ('bot:<id>') plus 'manual' for orders placed by hand.
    op.execute("""
    CREATE TABLE accounts (
        account text PRIMARY KEY CHECK (account ~ '^(manual|bot:[0-9a-f-]{36}|agent:.+)$'),
        cash numeric NOT NULL,
        fees numeric NOT NULL DEFAULT 0,
        updated_at timestamptz NOT NULL DEFAULT now()
    )""")
    op.execute(f"""
    CREATE TABLE orders (
        id uuid PRIMARY KEY,
        client_order_id text NOT NULL UNIQUE,
        account text NOT NULL REFERENCES accounts(account),
        bot_id uuid REFERENCES bots(id) ON DELETE SET NULL,
        symbol text NOT NULL,
        side text NOT NULL CHECK (side IN ('buy', 'sell')),
        type text NOT NULL CHECK (type IN ('market', 'limit', 'stop', 'stop_limit')),
        quantity numeric NOT NULL CHECK (quantity > 0),
        limit_price numeric CHECK (limit_price > 0),
        stop_price numeric CHECK (stop_price > 0),
        time_in_force text NOT NULL CHECK (time_in_force IN ('gtc', 'ioc', 'day')),
        status text NOT NULL CHECK (status IN ({STATUSES})),
        filled_quantity numeric NOT NULL DEFAULT 0
            CHECK (filled_quantity >= 0 AND filled_quantity <= quantity),
        average_fill_price numeric,
        fees numeric NOT NULL DEFAULT 0,
        triggered boolean NOT NULL DEFAULT false,
        reason text,
        source text NOT NULL CHECK (source IN ('bot', 'manual', 'agent')),
        created_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now(),
        version integer NOT NULL DEFAULT 1
    )""")
    op.execute("CREATE INDEX orders_open ON orders (account, symbol)"
               " WHERE status IN ('accepted', 'partially_filled')")
    op.execute("CREATE INDEX orders_created ON orders (created_at DESC)")
    op.execute("CREATE INDEX orders_bot ON orders (bot_id, created_at DESC)")
    op.execute(f"""
    CREATE TABLE order_events (
        id bigserial PRIMARY KEY,
        order_id uuid NOT NULL REFERENCES orders(id) ON DELETE CASCADE,
        from_status text CHECK (from_status IN ({STATUSES})),
        to_status text NOT NULL CHECK (to_status IN ({STATUSES})),
        reason text,
        at timestamptz NOT NULL
    )""")
    op.execute("CREATE INDEX order_events_order ON order_events (order_id, id)")
    op.execute("""
    CREATE TABLE fills (
        fill_id text PRIMARY KEY,
        order_id uuid NOT NULL REFERENCES orders(id),
        account text NOT NULL REFERENCES accounts(account),
        symbol text NOT NULL,
        side text NOT NULL CHECK (side IN ('buy', 'sell')),
        quantity numeric NOT NULL CHECK (quantity > 0),
        price numeric NOT NULL CHECK (price > 0),
        fee numeric NOT NULL CHECK (fee >= 0),
        at timestamptz NOT NULL
    )""")
    op.execute("CREATE INDEX fills_account ON fills (account, at)")
    op.execute("""
    CREATE TABLE positions (
        account text NOT NULL REFERENCES accounts(account),
        symbol text NOT NULL,
        quantity numeric NOT NULL,
        average_cost numeric NOT NULL,
        realized_pnl numeric NOT NULL DEFAULT 0,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (account, symbol)
    )""")
    op.execute("""
    CREATE TABLE pnl_snapshots (
        id bigserial PRIMARY KEY,
        account text NOT NULL REFERENCES accounts(account),
        at timestamptz NOT NULL,
        cash numeric NOT NULL,
        equity numeric NOT NULL,
        realized_pnl numeric NOT NULL,
        unrealized_pnl numeric NOT NULL,
        fees numeric NOT NULL,
        gross_exposure numeric NOT NULL,
        net_exposure numeric NOT NULL
    )""")
    op.execute("CREATE INDEX pnl_snapshots_account ON pnl_snapshots (account, at)")
    # The tenant's risk limits and trading state: a single row.
    op.execute("""
    CREATE TABLE risk_settings (
        id smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1),
        limits jsonb NOT NULL DEFAULT '{}'::jsonb,
        state text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'halted', 'reducing')),
        engine jsonb NOT NULL DEFAULT '{}'::jsonb,
        updated_at timestamptz NOT NULL DEFAULT now(),
        version integer NOT NULL DEFAULT 1
    )""")
    op.execute("INSERT INTO risk_settings (id) VALUES (1)")


def downgrade() -> None:
    for table in ("risk_settings", "pnl_snapshots", "positions", "fills", "order_events",
                  "orders", "accounts", "bots"):
        op.execute(f"DROP TABLE {table}")
