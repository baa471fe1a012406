"""Tenant schema: strategy packages, Ray jobs, backtests and optimisations.

- ``strategy_packages``: uploaded strategy code (one module or a zip), parsed by the
  gateway and imported only by an ``inspect`` job of the tenant, whose description of each
  strategy (its declared parameters) is kept in ``strategies``.
- ``jobs``: one row per Ray job the platform submitted for the tenant (a backtest, an
  optimisation, or either one from a package); ``submission_id`` is Ray's id.
- ``backtests`` / ``backtest_trades``: a backtest's request, progress, metrics, a thinned
  equity curve (at most a few thousand points) and its trades.
- ``optimizations`` / ``optimization_trials``: a Tune search, its trials and the best
  parameters with their in-sample and out-of-sample results.
- ``bots.package``: a bot whose strategy comes from an uploaded package runs as a job
  (``jobs.kind = 'bot'``, ``jobs.bot_id``).

Revision ID: t0005
Revises: t0004
Create Date: 2026-11-27
"""

from alembic import op

revision = "t0005"
down_revision = "t0004"
branch_labels = None
depends_on = None

_STATUS = "('queued', 'running', 'succeeded', 'failed', 'stopped')"


def upgrade() -> None:
    op.execute("""
    CREATE TABLE strategy_packages (
        id uuid PRIMARY KEY,
        name text NOT NULL UNIQUE CHECK (name ~ '^[a-z][a-z0-9_]{0,63}$'),
        filename text NOT NULL CHECK (length(filename) BETWEEN 1 AND 200),
        kind text NOT NULL CHECK (kind IN ('module', 'zip')),
        sha256 text NOT NULL,
        size_bytes integer NOT NULL CHECK (size_bytes > 0),
        content bytea NOT NULL,
        strategies jsonb NOT NULL,
        created_by text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now()
    )""")
    op.execute(f"""
    CREATE TABLE jobs (
        id uuid PRIMARY KEY,
        submission_id text NOT NULL UNIQUE,
        kind text NOT NULL CHECK (kind IN ('backtest', 'optimization', 'bot', 'inspect')),
        bot_id uuid REFERENCES bots(id) ON DELETE SET NULL,
        package_id uuid REFERENCES strategy_packages(id) ON DELETE SET NULL,
        package_sha256 text,
        status text NOT NULL CHECK (status IN {_STATUS}),
        num_cpus numeric NOT NULL CHECK (num_cpus >= 0),
        memory_bytes bigint NOT NULL CHECK (memory_bytes > 0),
        message text,
        result jsonb,
        created_by text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        started_at timestamptz,
        finished_at timestamptz
    )""")
    op.execute("CREATE INDEX jobs_created ON jobs (created_at DESC)")
    op.execute("CREATE INDEX jobs_bot ON jobs (bot_id, created_at DESC) WHERE bot_id IS NOT NULL")
    op.execute("ALTER TABLE bots ADD COLUMN package text CHECK (package ~ '^[a-z][a-z0-9_]{0,63}$')")
    op.execute(f"""
    CREATE TABLE backtests (
        id uuid PRIMARY KEY,
        job_id uuid NOT NULL REFERENCES jobs(id),
        strategy text NOT NULL,
        params jsonb NOT NULL,
        symbols text[] NOT NULL,
        start_at timestamptz NOT NULL,
        end_at timestamptz NOT NULL CHECK (end_at > start_at),
        data jsonb NOT NULL,
        capital numeric NOT NULL CHECK (capital > 0),
        fee_bps numeric NOT NULL CHECK (fee_bps >= 0),
        slippage_bps numeric NOT NULL CHECK (slippage_bps >= 0),
        status text NOT NULL CHECK (status IN {_STATUS}),
        progress double precision NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 1),
        bars bigint NOT NULL DEFAULT 0,
        metrics jsonb,
        final_equity numeric,
        trade_count integer,
        equity_curve jsonb,
        error text,
        created_at timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz
    )""")
    op.execute("CREATE INDEX backtests_created ON backtests (created_at DESC)")
    op.execute("""
    CREATE TABLE backtest_trades (
        backtest_id uuid NOT NULL REFERENCES backtests(id) ON DELETE CASCADE,
        seq integer NOT NULL CHECK (seq >= 1),
        ts timestamptz NOT NULL,
        symbol text NOT NULL,
        side text NOT NULL CHECK (side IN ('buy', 'sell')),
        quantity numeric NOT NULL CHECK (quantity > 0),
        price numeric NOT NULL CHECK (price > 0),
        fee numeric NOT NULL CHECK (fee >= 0),
        client_order_id text NOT NULL,
        PRIMARY KEY (backtest_id, seq)
    )""")
    op.execute(f"""
    CREATE TABLE optimizations (
        id uuid PRIMARY KEY,
        job_id uuid NOT NULL REFERENCES jobs(id),
        strategy text NOT NULL,
        search_space jsonb NOT NULL,
        fixed_params jsonb NOT NULL,
        objective text NOT NULL CHECK (objective IN ('sharpe', 'calmar', 'return')),
        max_drawdown double precision CHECK (max_drawdown > 0 AND max_drawdown <= 1),
        symbols text[] NOT NULL,
        start_at timestamptz NOT NULL,
        split_at timestamptz NOT NULL CHECK (split_at > start_at),
        end_at timestamptz NOT NULL CHECK (end_at > split_at),
        data jsonb NOT NULL,
        capital numeric NOT NULL CHECK (capital > 0),
        fee_bps numeric NOT NULL CHECK (fee_bps >= 0),
        slippage_bps numeric NOT NULL CHECK (slippage_bps >= 0),
        num_trials integer NOT NULL CHECK (num_trials BETWEEN 1 AND 1000),
        concurrency integer NOT NULL CHECK (concurrency >= 1),
        cpus_per_trial numeric NOT NULL CHECK (cpus_per_trial > 0),
        status text NOT NULL CHECK (status IN {_STATUS}),
        trials_done integer NOT NULL DEFAULT 0,
        best_params jsonb,
        in_sample jsonb,
        out_of_sample jsonb,
        error text,
        created_at timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz
    )""")
    op.execute("CREATE INDEX optimizations_created ON optimizations (created_at DESC)")
    op.execute("""
    CREATE TABLE optimization_trials (
        optimization_id uuid NOT NULL REFERENCES optimizations(id) ON DELETE CASCADE,
        number integer NOT NULL CHECK (number >= 1),
        params jsonb NOT NULL,
        status text NOT NULL CHECK (status IN ('succeeded', 'failed', 'infeasible')),
        objective double precision,
        metrics jsonb,
        error text,
        finished_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (optimization_id, number)
    )""")


def downgrade() -> None:
    for table in ("optimization_trials", "optimizations", "backtest_trades", "backtests", "jobs",
                  "strategy_packages"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
    op.execute("ALTER TABLE bots DROP COLUMN IF EXISTS package")
