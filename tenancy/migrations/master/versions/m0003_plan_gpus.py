"""Plans get a GPU allowance (NULL: unlimited); starter and professional have none.

Revision ID: m0003
Revises: m0002
Create Date: 2026-11-27
"""

from alembic import op

revision = "m0003"
down_revision = "m0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE platform.plans ADD COLUMN gpu numeric CHECK (gpu >= 0)")
    op.execute("UPDATE platform.plans SET gpu = 0 WHERE code IN ('starter', 'professional')")


def downgrade() -> None:
    op.execute("ALTER TABLE platform.plans DROP COLUMN gpu")
