"""Plans may name a dedicated Ray worker group (NULL: the shared pool).

A plan with ``worker_group = 'enterprise'`` places its tenants' actors and jobs on nodes
that advertise the Ray custom resource ``dedicated_enterprise`` (see ``actors/placement.py``).
The name becomes part of a Ray resource name, so it is a short lowercase identifier.

Revision ID: m0005
Revises: m0004
Create Date: 2026-11-28
"""

from alembic import op

revision = "m0005"
down_revision = "m0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE platform.plans ADD COLUMN worker_group text"
               " CONSTRAINT plans_worker_group_identifier"
               " CHECK (worker_group ~ '^[a-z][a-z0-9_]{0,30}$')")


def downgrade() -> None:
    op.execute("ALTER TABLE platform.plans DROP COLUMN worker_group")
