"""Tenant schema: encrypted secrets (broker credentials and the like).

Runs with ``search_path`` set to the tenant's schema, so names are unqualified.

Revision ID: t0001
Revises:
Create Date: 2026-11-27
"""

from alembic import op

revision = "t0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE secrets (
        name text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_.-]{0,99}$'),
        ciphertext bytea NOT NULL,
        key_version integer NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now()
    )""")


def downgrade() -> None:
    op.execute("DROP TABLE secrets")
