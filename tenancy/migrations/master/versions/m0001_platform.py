"""Master schema: plans, tenants, users, memberships, API keys, audit log, usage, data keys.

Revision ID: m0001
Revises:
Create Date: 2026-11-27
"""

from alembic import op

revision = "m0001"
down_revision = None
branch_labels = None
depends_on = None

GIB = 1024**3
GB = 1000**3

PLANS = [
    # code, name, price_cents, bots, calls/month, storage, cpu, memory, rate/s, burst
    ("starter", "Starter", 4900, 1, 10_000, 1 * GB, 1, 2 * GIB, 5, 10),
    ("professional", "Professional", 19900, 5, 100_000, 10 * GB, 4, 8 * GIB, 50, 100),
    ("enterprise", "Enterprise", None, None, None, None, None, None, None, None),
]


def _sql(value: object) -> str:
    return "NULL" if value is None else repr(value) if isinstance(value, str) else str(value)


def upgrade() -> None:
    op.execute("""
    CREATE TABLE platform.plans (
        code text PRIMARY KEY CHECK (code ~ '^[a-z][a-z0-9_-]{1,39}$'),
        name text NOT NULL,
        price_cents integer CHECK (price_cents >= 0),
        currency text NOT NULL DEFAULT 'usd',
        max_bots integer CHECK (max_bots >= 0),
        api_calls_per_month bigint CHECK (api_calls_per_month >= 0),
        storage_bytes bigint CHECK (storage_bytes >= 0),
        cpu numeric CHECK (cpu > 0),
        memory_bytes bigint CHECK (memory_bytes > 0),
        rate_per_second numeric CHECK (rate_per_second > 0),
        burst integer CHECK (burst >= 1)
    )""")
    for row in PLANS:
        values = ", ".join(_sql(v) for v in row)
        op.execute(
            "INSERT INTO platform.plans (code, name, price_cents, max_bots, api_calls_per_month,"
            " storage_bytes, cpu, memory_bytes, rate_per_second, burst) VALUES (" + values + ")")

    op.execute("""
    CREATE TABLE platform.tenants (
        id uuid PRIMARY KEY,
        slug text NOT NULL CHECK (slug ~ '^[a-z][a-z0-9-]{2,39}$'),
        name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
        plan text NOT NULL REFERENCES platform.plans(code),
        status text NOT NULL CHECK (status IN ('active', 'suspended', 'deleted')),
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        deleted_at timestamptz,
        version integer NOT NULL DEFAULT 1
    )""")
    # A deleted tenant keeps its row (its audit trail refers to it); its slug may be reused.
    op.execute("CREATE UNIQUE INDEX tenants_slug_live ON platform.tenants (slug)"
               " WHERE status <> 'deleted'")

    op.execute("""
    CREATE TABLE platform.users (
        id uuid PRIMARY KEY,
        email text NOT NULL CHECK (email = lower(email)),
        password_hash text,
        created_at timestamptz NOT NULL DEFAULT now()
    )""")
    op.execute("CREATE UNIQUE INDEX users_email ON platform.users (email)")

    op.execute("""
    CREATE TABLE platform.memberships (
        user_id uuid NOT NULL REFERENCES platform.users(id) ON DELETE CASCADE,
        tenant_id uuid NOT NULL REFERENCES platform.tenants(id) ON DELETE CASCADE,
        role text NOT NULL CHECK (role IN ('owner', 'admin', 'trader', 'viewer')),
        created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (user_id, tenant_id)
    )""")

    op.execute("""
    CREATE TABLE platform.api_keys (
        id uuid PRIMARY KEY,
        tenant_id uuid NOT NULL REFERENCES platform.tenants(id) ON DELETE CASCADE,
        name text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
        role text NOT NULL CHECK (role IN ('owner', 'admin', 'trader', 'viewer')),
        prefix text NOT NULL UNIQUE,
        key_hash bytea NOT NULL,
        created_by text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        last_used_at timestamptz,
        revoked_at timestamptz
    )""")
    op.execute("CREATE INDEX api_keys_tenant ON platform.api_keys (tenant_id)")

    # Append-only, hash-chained per tenant. No foreign key: the trail outlives the tenant.
    op.execute("""
    CREATE TABLE platform.audit_log (
        id bigserial PRIMARY KEY,
        tenant_id uuid NOT NULL,
        seq bigint NOT NULL CHECK (seq >= 1),
        actor text NOT NULL,
        action text NOT NULL,
        target text,
        detail jsonb NOT NULL DEFAULT '{}'::jsonb,
        at timestamptz NOT NULL,
        prev_hash text NOT NULL,
        hash text NOT NULL,
        UNIQUE (tenant_id, seq)
    )""")

    op.execute("""
    CREATE TABLE platform.api_usage (
        tenant_id uuid NOT NULL,
        day date NOT NULL,
        calls bigint NOT NULL CHECK (calls >= 0),
        PRIMARY KEY (tenant_id, day)
    )""")
    op.execute("""
    CREATE TABLE platform.usage_batches (
        batch_id text PRIMARY KEY,
        applied_at timestamptz NOT NULL DEFAULT now()
    )""")

    op.execute("""
    CREATE TABLE platform.tenant_keys (
        tenant_id uuid NOT NULL REFERENCES platform.tenants(id) ON DELETE CASCADE,
        version integer NOT NULL CHECK (version >= 1),
        wrapped_key bytea NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        retired_at timestamptz,
        PRIMARY KEY (tenant_id, version)
    )""")
    op.execute("CREATE UNIQUE INDEX tenant_keys_active ON platform.tenant_keys (tenant_id)"
               " WHERE retired_at IS NULL")

    # Row-level security on shared tables keyed by tenant. The platform's own role owns
    # the tables and bypasses RLS; tenant roles (members of atp_tenant) see their rows only.
    for table in ("audit_log", "api_usage"):
        op.execute(f"ALTER TABLE platform.{table} ENABLE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY tenant_isolation ON platform.{table} FOR SELECT USING "
            "(tenant_id = nullif(current_setting('atp.tenant_id', true), '')::uuid)")
    op.execute("""
    DO $$ BEGIN
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'atp_tenant') THEN
            CREATE ROLE atp_tenant NOLOGIN;
        END IF;
    END $$""")
    op.execute("GRANT USAGE ON SCHEMA platform TO atp_tenant")
    op.execute("GRANT SELECT ON platform.audit_log, platform.api_usage TO atp_tenant")


def downgrade() -> None:
    for table in ("tenant_keys", "usage_batches", "api_usage", "audit_log", "api_keys",
                  "memberships", "users", "tenants", "plans"):
        op.execute(f"DROP TABLE IF EXISTS platform.{table} CASCADE")
