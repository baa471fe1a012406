"""The `atp` command line against the test database (subprocesses, as a person runs it)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tenancy.db import Database
from tenancy.settings import Settings
from tests.conftest import TEST_DB_URL, random_slug


@pytest.fixture(scope="module")
def atp(settings: Settings, db: Database):  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATP_", "RAY_ADDRESS"))}
    env.update({"ATP_DATABASE_URL": TEST_DB_URL, "ATP_DEV_MODE": "1",
                "ATP_DATA_DIR": str(settings.data_dir), "COLUMNS": "200"})

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "serve.cli", *args], env=env,
                              capture_output=True, text=True, timeout=120)

    return run


def test_help_lists_every_command(atp) -> None:  # type: ignore[no-untyped-def]
    top = atp("--help")
    assert top.returncode == 0
    for command in ("up", "demo", "migrate", "tenant", "api-key", "audit"):
        assert command in top.stdout
    tenant = atp("tenant", "--help").stdout
    for command in ("create", "list", "show", "suspend", "resume", "set-plan", "delete"):
        assert command in tenant
    assert "create" in atp("api-key", "--help").stdout and "revoke" in atp("api-key", "--help").stdout
    assert "verify" in atp("audit", "--help").stdout


def test_tenant_lifecycle(atp) -> None:  # type: ignore[no-untyped-def]
    slug = random_slug()
    created = atp("tenant", "create", "--name", "Acme Corp", "--plan", "professional",
                  "--email", f"admin@{slug}.example.com", "--slug", slug)
    assert created.returncode == 0, created.stderr
    assert re.search(rf"slug\s+{slug}", created.stdout)
    key = re.search(r"api key\s+(atp_\S+)", created.stdout)
    assert key
    assert slug in atp("tenant", "list").stdout
    assert '"plan": "professional"' in atp("tenant", "show", slug).stdout
    assert "status suspended" in atp("tenant", "suspend", slug).stdout
    assert "status active" in atp("tenant", "resume", slug).stdout
    assert "plan starter" in atp("tenant", "set-plan", slug, "--plan", "starter").stdout

    new_key = atp("api-key", "create", "--tenant", slug, "--name", "ci", "--role", "trader")
    assert new_key.returncode == 0 and "atp_" in new_key.stdout
    prefix = new_key.stdout.split()[0]
    assert prefix in atp("api-key", "list", "--tenant", slug).stdout
    assert f"revoked {prefix}" in atp("api-key", "revoke", prefix, "--tenant", slug).stdout
    assert "data key version 2" in atp("tenant", "rotate-key", slug).stdout

    refused = atp("tenant", "delete", slug)
    assert refused.returncode == 2 and "--confirm" in refused.stderr
    assert atp("tenant", "delete", slug, "--confirm", slug).returncode == 0
    assert slug not in atp("tenant", "list").stdout


@pytest.mark.parametrize(("args", "option", "code"), [
    (["--name", "X", "--plan", "gold", "--email", "a@example.com"], "--plan", 2),
    (["--name", "X", "--plan", "starter", "--email", "nope"], "--email", 2),
    (["--name", "X", "--plan", "starter", "--email", "a@example.com", "--slug", "Bad"],
     "--slug", 2),
    (["--plan", "starter", "--email", "a@example.com"], "--name", 2),
])
def test_bad_options_exit_non_zero_naming_the_option(atp, args: list[str], option: str,  # type: ignore[no-untyped-def]
                                                     code: int) -> None:
    result = atp("tenant", "create", *args)
    assert result.returncode == code
    assert option in result.stderr + result.stdout


def test_duplicate_slug_and_unknown_tenant(atp) -> None:  # type: ignore[no-untyped-def]
    slug = random_slug()
    assert atp("tenant", "create", "--name", "Dup", "--plan", "starter", "--email",
               "dup@example.com", "--slug", slug).returncode == 0
    dup = atp("tenant", "create", "--name", "Dup", "--plan", "starter", "--email",
              "dup2@example.com", "--slug", slug)
    assert dup.returncode == 1 and "already exists" in dup.stderr
    missing = atp("tenant", "show", "t-does-not-exist")
    assert missing.returncode == 1 and "no tenant" in missing.stderr


def test_migrate_reports_per_schema(atp) -> None:  # type: ignore[no-untyped-def]
    result = atp("migrate")
    assert result.returncode == 0, result.stderr
    assert re.search(r"platform\s+(m\d{4}) → \1\s+up to date", result.stdout), result.stdout
    assert "0 failed" in result.stdout


def test_production_mode_refuses_missing_secrets(atp, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATP_")}
    env.update({"ATP_DATABASE_URL": TEST_DB_URL, "ATP_DATA_DIR": str(settings.data_dir)})
    result = subprocess.run([sys.executable, "-m", "serve.cli", "migrate"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "ATP_JWT_SECRET" in result.stderr


async def test_billing_and_usage_commands(atp, db: Database, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime, timedelta
    from decimal import Decimal

    from sqlalchemy import text

    from billing import ledger
    from billing.ledger import Sample

    slug = random_slug()
    assert atp("tenant", "create", "--name", "Billed", "--plan", "starter", "--email",
               f"admin@{slug}.example.com", "--slug", slug).returncode == 0
    start = datetime(2024, 8, 5, tzinfo=UTC)
    async with db.platform() as uow:
        tenant_id = (await uow.conn.execute(text(
            "UPDATE platform.tenants SET created_at = '2024-08-01' WHERE slug = :s RETURNING id"),
            {"s": slug})).scalar_one()
        await ledger.record(uow.conn, [Sample(tenant_id, "api_calls", start,
                                              start + timedelta(seconds=15), "test",
                                              Decimal(12_345))])
        await uow.commit()
    usage = atp("usage", "--tenant", slug, "--from", "2024-08-01", "--to", "2024-09-01")
    assert usage.returncode == 0 and re.search(rf"2024-08-01.*{slug}.*api_calls.*12345",
                                               usage.stdout), usage.stdout
    closed = atp("billing", "close-period", "--month", "2024-08")
    assert closed.returncode == 0, closed.stderr
    # starter: $49 + 3 started thousands of calls over 10,000 at 50c
    assert re.search(rf"{slug}[\s│]+ATP-\d{{4}}-\d{{6}}[\s│]+50\.50[\s│]+yes", closed.stdout), \
        closed.stdout
    again = atp("billing", "close-period", "--month", "2024-08")
    assert re.search(rf"{slug}[\s│]+ATP-\S+[\s│]+50\.50[\s│]+no", again.stdout), again.stdout
    listed = atp("billing", "list", "--tenant", slug)
    invoice_id = re.search(r"([0-9a-f-]{36})", listed.stdout).group(1)  # type: ignore[union-attr]
    pdf = tmp_path / "invoice.pdf"
    assert atp("billing", "render", invoice_id, "-o", str(pdf)).returncode == 0
    assert pdf.read_bytes().startswith(b"%PDF")

    bad = {("billing", "close-period", "--month", "2024-13"): "--month",
           ("billing", "close-period", "--month", "2099-01"): "--month",
           ("usage", "--granularity", "week"): "--granularity",
           ("usage", "--from", "yesterday"): "--from",
           ("billing", "render", invoice_id, "-o", str(tmp_path / "x.txt")): "--output"}
    for args, option in bad.items():
        result = atp(*args)
        assert result.returncode == 2 and option in result.stderr, (args, result.stderr)


def test_backtest_runs_here_and_writes_its_report(atp, tmp_path) -> None:  # type: ignore[no-untyped-def]
    report = tmp_path / "bt.html"
    done = atp("backtest", "--strategy", "sma_crossover", "--symbol", "AAPL", "--from", "2024-01-01",
               "--to", "2024-01-03", "--param", "fast=5", "--param", "slow=20", "--interval", "5m",
               "--report", str(report), "--json")
    assert done.returncode == 0, done.stderr
    import json

    summary = json.loads(done.stdout)
    assert summary["bars"] == 576 and summary["trades"] > 0
    assert summary["params"] == {"fast": 5, "slow": 20, "quantity": "1", "allow_short": False}
    assert "<svg" in report.read_text()
    assert "backtest" in atp("--help").stdout and "optimize" in atp("--help").stdout
    assert "submit" in atp("job", "--help").stdout


@pytest.mark.parametrize(("args", "option"), [
    (("--param", "fast=ten"), "--param"),
    (("--param", "fast"), "--param"),
    (("--interval", "7m"), "--interval"),
    (("--to", "2023-01-01"), "--to"),
    (("--from", "yesterday"), "--from"),
])
def test_backtest_errors_name_the_option(atp, args, option) -> None:  # type: ignore[no-untyped-def]
    base = {"--strategy": "sma_crossover", "--symbol": "AAPL", "--from": "2024-01-01", "--to": "2024-01-02"}
    extra = dict(zip(args[::2], args[1::2], strict=True))
    argv = [x for k, v in {**base, **extra}.items() for x in (k, v)]
    failed = atp("backtest", *argv)
    assert failed.returncode == 2, failed.stdout
    assert f"invalid value for {option}" in failed.stderr


async def test_a_plans_worker_group_is_set_shown_and_cleared(atp, db: Database) -> None:  # type: ignore[no-untyped-def]
    # A plan of its own: the seeded plans' placement is shared by the whole session.
    from sqlalchemy import text

    plan = f"p_{random_slug('w').replace('-', '_')}"
    async with db.platform() as uow:
        await uow.conn.execute(text(
            "INSERT INTO platform.plans (code, name, currency) VALUES (:c, :c, 'usd')"), {"c": plan})
        await uow.commit()
    done = atp("plan", "set-worker-group", plan, "enterprise")
    assert done.returncode == 0 and f"{plan}: worker group enterprise" in done.stdout, done.stderr
    assert any(plan in line and "enterprise" in line for line in atp("plan", "list").stdout.splitlines())
    bad = atp("plan", "set-worker-group", plan, "Not-A-Group")
    assert bad.returncode == 2 and "GROUP" in bad.stderr, bad.stderr
    unknown = atp("plan", "set-worker-group", "no_such_plan", "enterprise")
    assert unknown.returncode == 2 and "PLAN" in unknown.stderr, unknown.stderr
    cleared = atp("plan", "set-worker-group", plan, "shared")
    assert cleared.returncode == 0 and f"{plan}: worker group shared" in cleared.stdout
