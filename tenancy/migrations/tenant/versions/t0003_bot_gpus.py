"""Bots may reserve GPUs for their strategy actor (default none).

Revision ID: t0003
Revises: t0002
Create Date: 2026-11-27
"""

from alembic import op

revision = "t0003"
down_revision = "t0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE bots ADD COLUMN num_gpus numeric NOT NULL DEFAULT 0"
               " CHECK (num_gpus >= 0 AND num_gpus <= 8)")


def downgrade() -> None:
    op.execute("ALTER TABLE bots DROP COLUMN num_gpus")
