"""Metering and billing: the usage ledger, its aggregates, prices, invoices, the provider.

- ``usage_events``: append-only samples, one per (tenant, meter, window start, source);
  a duplicate is ignored by the writer (``ON CONFLICT DO NOTHING``), and a trigger
  refuses UPDATE and DELETE. ``usage_daily`` is written in the same transaction as the
  events it sums; ``usage_monthly`` is a view over it. Refused samples are kept in
  ``usage_rejects`` with the reason.
- ``meter_cursors``: the collector's last cumulative reading per process (CPU seconds), so
  a restarted collector neither loses nor repeats a window.
- Plans get overage prices, included CPU-hours and a runtime quota policy.
- ``invoices`` / ``invoice_lines``: one invoice per tenant and month (a void one may be
  replaced); numbers come from ``invoice_numbers`` when an invoice is finalised, in the
  same transaction, so they have no gaps. Triggers keep a finalised invoice and its lines
  unchanged: only the status may move on (finalised → paid or void), with its time and
  the provider's references.
- Tenants get the provider's customer and subscription ids and a billing status
  (current, past_due since a time, suspended for non-payment).

Revision ID: m0004
Revises: m0003
Create Date: 2026-11-27
"""

from alembic import op

revision = "m0004"
down_revision = "m0003"
branch_labels = None
depends_on = None

# code: (cents per 1,000 calls, CPU-hours included, cents per CPU-hour, cents per GB-month,
#        policy)
PRICES = {
    "starter": (50, 100, 5, 25, "stop_bots"),
    "professional": (30, 1000, 4, 20, "warn"),
    "enterprise": (0, None, 0, 0, "warn"),
}


def upgrade() -> None:
    op.execute("""
    ALTER TABLE platform.plans
        ADD COLUMN api_call_overage_cents_per_1000 numeric NOT NULL DEFAULT 0
            CHECK (api_call_overage_cents_per_1000 >= 0),
        ADD COLUMN cpu_hours_included numeric CHECK (cpu_hours_included >= 0),
        ADD COLUMN cpu_hour_overage_cents numeric NOT NULL DEFAULT 0
            CHECK (cpu_hour_overage_cents >= 0),
        ADD COLUMN storage_gb_month_overage_cents numeric NOT NULL DEFAULT 0
            CHECK (storage_gb_month_overage_cents >= 0),
        ADD COLUMN quota_policy text NOT NULL DEFAULT 'warn'
            CHECK (quota_policy IN ('warn', 'stop_bots'))""")
    for code, (calls, cpu_included, cpu_hour, gb_month, policy) in PRICES.items():
        op.execute(
            "UPDATE platform.plans SET"
            f" api_call_overage_cents_per_1000 = {calls},"
            f" cpu_hours_included = {'NULL' if cpu_included is None else cpu_included},"
            f" cpu_hour_overage_cents = {cpu_hour},"
            f" storage_gb_month_overage_cents = {gb_month}, quota_policy = '{policy}'"
            f" WHERE code = '{code}'")

    op.execute("""
    ALTER TABLE platform.tenants
        ADD COLUMN billing_customer_id text,
        ADD COLUMN billing_subscription_id text,
        ADD COLUMN billing_status text NOT NULL DEFAULT 'current'
            CHECK (billing_status IN ('current', 'past_due', 'suspended')),
        ADD COLUMN past_due_since timestamptz""")

    op.execute("""
    CREATE TABLE platform.usage_events (
        id bigserial PRIMARY KEY,
        tenant_id uuid NOT NULL,
        meter text NOT NULL,
        window_start timestamptz NOT NULL,
        window_end timestamptz NOT NULL,
        source text NOT NULL CHECK (length(source) BETWEEN 1 AND 200),
        quantity numeric NOT NULL CHECK (quantity >= 0),
        recorded_at timestamptz NOT NULL DEFAULT now(),
        CHECK (window_end > window_start),
        UNIQUE (tenant_id, meter, window_start, source)
    )""")
    op.execute("CREATE INDEX usage_events_tenant_time ON platform.usage_events"
               " (tenant_id, window_start)")
    op.execute("""
    CREATE FUNCTION platform.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'P0001';
    END $$""")
    op.execute("CREATE TRIGGER usage_events_append_only BEFORE UPDATE OR DELETE"
               " ON platform.usage_events FOR EACH ROW EXECUTE FUNCTION platform.refuse_change()")

    op.execute("""
    CREATE TABLE platform.usage_daily (
        tenant_id uuid NOT NULL,
        meter text NOT NULL,
        day date NOT NULL,
        quantity numeric NOT NULL CHECK (quantity >= 0),
        samples bigint NOT NULL CHECK (samples >= 1),
        PRIMARY KEY (tenant_id, meter, day)
    )""")
    op.execute("""
    CREATE VIEW platform.usage_monthly WITH (security_barrier) AS
        SELECT tenant_id, meter, date_trunc('month', day)::date AS month,
               sum(quantity) AS quantity, sum(samples) AS samples
        FROM platform.usage_daily GROUP BY tenant_id, meter, date_trunc('month', day)""")
    op.execute("""
    CREATE TABLE platform.usage_rejects (
        id bigserial PRIMARY KEY,
        tenant_id uuid,
        meter text,
        window_start timestamptz,
        window_end timestamptz,
        source text,
        quantity text,
        reason text NOT NULL,
        at timestamptz NOT NULL DEFAULT now()
    )""")
    op.execute("""
    CREATE TABLE platform.meter_cursors (
        key text PRIMARY KEY,
        tenant_id uuid NOT NULL,
        cpu_seconds numeric NOT NULL CHECK (cpu_seconds >= 0),
        sampled_at timestamptz NOT NULL
    )""")
    op.execute("""
    CREATE TABLE platform.meter_state (
        id smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1),
        last_window_end timestamptz
    )""")
    op.execute("INSERT INTO platform.meter_state (id) VALUES (1)")

    op.execute("""
    CREATE TABLE platform.invoices (
        id uuid PRIMARY KEY,
        tenant_id uuid NOT NULL REFERENCES platform.tenants(id),
        period date NOT NULL CHECK (extract(day FROM period) = 1),
        number text UNIQUE,
        status text NOT NULL CHECK (status IN ('draft', 'finalised', 'paid', 'void')),
        plan text NOT NULL,
        currency text NOT NULL,
        total_cents bigint NOT NULL CHECK (total_cents >= 0),
        provider text NOT NULL,
        provider_invoice_id text UNIQUE,
        created_at timestamptz NOT NULL DEFAULT now(),
        finalised_at timestamptz,
        paid_at timestamptz,
        voided_at timestamptz,
        CHECK (status = 'draft' OR status = 'void' OR number IS NOT NULL)
    )""")
    op.execute("CREATE UNIQUE INDEX invoices_one_per_period ON platform.invoices"
               " (tenant_id, period) WHERE status <> 'void'")
    op.execute("""
    CREATE TABLE platform.invoice_lines (
        id uuid PRIMARY KEY,
        invoice_id uuid NOT NULL REFERENCES platform.invoices(id),
        line_no integer NOT NULL CHECK (line_no >= 1),
        kind text NOT NULL,
        description text NOT NULL,
        quantity numeric NOT NULL CHECK (quantity >= 0),
        unit text NOT NULL,
        unit_price_cents numeric NOT NULL CHECK (unit_price_cents >= 0),
        amount_cents bigint NOT NULL CHECK (amount_cents >= 0),
        UNIQUE (invoice_id, line_no)
    )""")
    op.execute("""
    CREATE TABLE platform.invoice_numbers (
        year integer PRIMARY KEY,
        last integer NOT NULL CHECK (last >= 0)
    )""")
    op.execute("""
    CREATE FUNCTION platform.invoice_guard() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' THEN
            IF OLD.status <> 'draft' THEN
                RAISE EXCEPTION 'invoice % is %: it cannot be deleted', OLD.id, OLD.status;
            END IF;
            RETURN OLD;
        END IF;
        IF OLD.status = 'draft' THEN
            IF NEW.status NOT IN ('draft', 'finalised', 'void') THEN
                RAISE EXCEPTION 'invoice %: draft cannot become %', OLD.id, NEW.status;
            END IF;
            RETURN NEW;
        END IF;
        IF NEW.tenant_id IS DISTINCT FROM OLD.tenant_id OR NEW.period IS DISTINCT FROM OLD.period
           OR NEW.number IS DISTINCT FROM OLD.number OR NEW.plan IS DISTINCT FROM OLD.plan
           OR NEW.currency IS DISTINCT FROM OLD.currency
           OR NEW.total_cents IS DISTINCT FROM OLD.total_cents
           OR NEW.provider IS DISTINCT FROM OLD.provider
           OR NEW.created_at IS DISTINCT FROM OLD.created_at
           OR NEW.finalised_at IS DISTINCT FROM OLD.finalised_at
           OR (OLD.provider_invoice_id IS NOT NULL
               AND NEW.provider_invoice_id IS DISTINCT FROM OLD.provider_invoice_id) THEN
            RAISE EXCEPTION 'invoice % is %: it cannot change', OLD.id, OLD.status;
        END IF;
        IF NEW.status <> OLD.status AND NOT (OLD.status = 'finalised'
                                             AND NEW.status IN ('paid', 'void')) THEN
            RAISE EXCEPTION 'invoice %: % cannot become %', OLD.id, OLD.status, NEW.status;
        END IF;
        RETURN NEW;
    END $$""")
    op.execute("CREATE TRIGGER invoices_guard BEFORE UPDATE OR DELETE ON platform.invoices"
               " FOR EACH ROW EXECUTE FUNCTION platform.invoice_guard()")
    op.execute("""
    CREATE FUNCTION platform.invoice_lines_guard() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        parent_status text;
    BEGIN
        SELECT status INTO parent_status FROM platform.invoices
            WHERE id = (CASE WHEN TG_OP = 'DELETE' THEN OLD.invoice_id ELSE NEW.invoice_id END);
        IF parent_status IS DISTINCT FROM 'draft' THEN
            RAISE EXCEPTION 'the lines of a % invoice cannot change', parent_status;
        END IF;
        IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
        RETURN NEW;
    END $$""")
    op.execute("CREATE TRIGGER invoice_lines_guard BEFORE INSERT OR UPDATE OR DELETE"
               " ON platform.invoice_lines FOR EACH ROW"
               " EXECUTE FUNCTION platform.invoice_lines_guard()")
    op.execute("""
    CREATE TABLE platform.billing_webhook_events (
        event_id text PRIMARY KEY,
        type text NOT NULL,
        received_at timestamptz NOT NULL DEFAULT now()
    )""")

    # Tenants read their own usage through RLS like api_usage (the API filters by the
    # credential's tenant as well).
    for table in ("usage_events", "usage_daily", "invoices"):
        op.execute(f"ALTER TABLE platform.{table} ENABLE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY tenant_isolation ON platform.{table} FOR SELECT USING "
            "(tenant_id = nullif(current_setting('atp.tenant_id', true), '')::uuid)")
        op.execute(f"GRANT SELECT ON platform.{table} TO atp_tenant")


def downgrade() -> None:
    for table in ("billing_webhook_events", "invoice_lines", "invoice_numbers", "invoices",
                  "meter_state", "meter_cursors", "usage_rejects", "usage_daily",
                  "usage_events"):
        op.execute(f"DROP TABLE IF EXISTS platform.{table} CASCADE")
    op.execute("DROP VIEW IF EXISTS platform.usage_monthly")
    for fn in ("invoice_lines_guard", "invoice_guard", "refuse_change"):
        op.execute(f"DROP FUNCTION IF EXISTS platform.{fn}()")
    op.execute("ALTER TABLE platform.tenants DROP COLUMN billing_customer_id,"
               " DROP COLUMN billing_subscription_id, DROP COLUMN billing_status,"
               " DROP COLUMN past_due_since")
    op.execute("ALTER TABLE platform.plans DROP COLUMN api_call_overage_cents_per_1000,"
               " DROP COLUMN cpu_hours_included, DROP COLUMN cpu_hour_overage_cents,"
               " DROP COLUMN storage_gb_month_overage_cents, DROP COLUMN quota_policy")
