"""Tenant schema: the model registry.

- ``models``: one row per model name — its architecture, features, label and data.
- ``model_versions``: every training run of a model (``jobs.kind = 'train'``): status,
  hyperparameters, out-of-sample metrics, the backtest of its signal, and the artifact
  (weights and feature spec) encrypted with the tenant's data key, with the SHA-256 of the
  plain artifact; a stage (``none``, ``staging``, ``production``: at most one production
  version per model). A version whose artifact fails its checksum is marked ``bad``.

Revision ID: t0006
Revises: t0005
Create Date: 2026-11-27
"""

from alembic import op

revision = "t0006"
down_revision = "t0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE jobs DROP CONSTRAINT jobs_kind_check")
    op.execute("ALTER TABLE jobs ADD CONSTRAINT jobs_kind_check"
               " CHECK (kind IN ('backtest', 'optimization', 'bot', 'inspect', 'train'))")
    op.execute("""
    CREATE TABLE models (
        id uuid PRIMARY KEY,
        name text NOT NULL UNIQUE CHECK (name ~ '^[a-z][a-z0-9_]{0,63}$'),
        architecture text NOT NULL,
        created_by text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    )""")
    op.execute("""
    CREATE TABLE model_versions (
        model_id uuid NOT NULL REFERENCES models(id),
        version integer NOT NULL CHECK (version >= 1),
        job_id uuid NOT NULL REFERENCES jobs(id),
        status text NOT NULL CHECK (status IN ('training', 'ready', 'failed', 'bad')),
        stage text NOT NULL DEFAULT 'none' CHECK (stage IN ('none', 'staging', 'production')),
        request jsonb NOT NULL,
        params jsonb,
        metrics jsonb,
        backtest jsonb,
        artifact bytea,
        artifact_sha256 text,
        size_bytes integer,
        error text,
        created_by text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz,
        promoted_at timestamptz,
        PRIMARY KEY (model_id, version),
        CHECK (status <> 'ready' OR (artifact IS NOT NULL AND artifact_sha256 IS NOT NULL))
    )""")
    op.execute("CREATE UNIQUE INDEX model_versions_one_production ON model_versions (model_id)"
               " WHERE stage = 'production'")
    op.execute("CREATE UNIQUE INDEX model_versions_job ON model_versions (job_id)")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS model_versions")
    op.execute("DROP TABLE IF EXISTS models")
    op.execute("ALTER TABLE jobs DROP CONSTRAINT jobs_kind_check")
    op.execute("ALTER TABLE jobs ADD CONSTRAINT jobs_kind_check"
               " CHECK (kind IN ('backtest', 'optimization', 'bot', 'inspect'))")
