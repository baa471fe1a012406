"""Tenant schema: local agents, the events they sync, commands to them, their books.

- ``agents``: one row per agent id (made by the agent), its last hello and heartbeat, and
  the watermark: the highest sequence stored with nothing missing before it.
- ``agent_events``: every event once, keyed by (agent, seq) — the exactly-once guarantee.
- ``agent_commands``: commands from the platform, queued until acknowledged.
- ``agent_positions`` / ``agent_pnl``: the latest position per (agent, account, symbol) and
  the latest P&L per (agent, account), folded from the events, for ``/v1/positions`` and
  ``/v1/pnl``.

Revision ID: t0004
Revises: t0003
Create Date: 2026-11-27
"""

from alembic import op

revision = "t0004"
down_revision = "t0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE agents (
        id uuid PRIMARY KEY,
        name text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
        version text NOT NULL CHECK (length(version) BETWEEN 1 AND 50),
        connected boolean NOT NULL DEFAULT false,
        connected_at timestamptz,
        disconnected_at timestamptz,
        last_seen_at timestamptz NOT NULL,
        heartbeat_seconds numeric NOT NULL,
        watermark bigint NOT NULL DEFAULT 0 CHECK (watermark >= 0),
        created_at timestamptz NOT NULL DEFAULT now()
    )""")
    op.execute("""
    CREATE TABLE agent_events (
        agent_id uuid NOT NULL REFERENCES agents(id),
        seq bigint NOT NULL CHECK (seq >= 1),
        kind text NOT NULL CHECK (kind IN ('order', 'fill', 'position', 'pnl', 'log')),
        at timestamptz NOT NULL,
        data jsonb NOT NULL,
        received_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (agent_id, seq)
    )""")
    op.execute("""
    CREATE TABLE agent_commands (
        id uuid PRIMARY KEY,
        agent_id uuid NOT NULL REFERENCES agents(id),
        command text NOT NULL CHECK (command IN ('start_bot', 'stop_bot', 'kill_switch')),
        args jsonb NOT NULL DEFAULT '{}'::jsonb,
        status text NOT NULL CHECK (status IN ('queued', 'delivered', 'done', 'failed')),
        detail text,
        created_by text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        delivered_at timestamptz,
        acked_at timestamptz
    )""")
    op.execute("CREATE INDEX agent_commands_open ON agent_commands (agent_id, created_at)"
               " WHERE status IN ('queued', 'delivered')")
    op.execute("""
    CREATE TABLE agent_positions (
        agent_id uuid NOT NULL REFERENCES agents(id),
        account text NOT NULL,
        symbol text NOT NULL,
        quantity numeric NOT NULL,
        average_cost numeric NOT NULL,
        realized_pnl numeric NOT NULL,
        seq bigint NOT NULL,
        updated_at timestamptz NOT NULL,
        PRIMARY KEY (agent_id, account, symbol)
    )""")
    op.execute("""
    CREATE TABLE agent_pnl (
        agent_id uuid NOT NULL REFERENCES agents(id),
        account text NOT NULL,
        at timestamptz NOT NULL,
        cash numeric NOT NULL,
        equity numeric NOT NULL,
        realized_pnl numeric NOT NULL,
        unrealized_pnl numeric NOT NULL,
        fees numeric NOT NULL,
        seq bigint NOT NULL,
        PRIMARY KEY (agent_id, account)
    )""")


def downgrade() -> None:
    for table in ("agent_pnl", "agent_positions", "agent_commands", "agent_events", "agents"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
