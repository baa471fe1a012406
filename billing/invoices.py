"""Closing a month: one invoice per tenant, numbered without gaps, then sent to the provider.

`close_period` is idempotent. Per tenant, in ONE transaction holding the ledger lock
exclusively (no sample can land in the month meanwhile): if the tenant already has an
invoice for the month that is not void, nothing is written; otherwise the month's usage
(`billing.ledger.month_totals`) is rated against the tenant's plan (`billing.rating`),
the invoice and its numbered lines are inserted, and it is finalised with the next number
of the year from ``platform.invoice_numbers`` (a counter row updated in the same
transaction, so a number is used exactly when an invoice is finalised: no gaps). Once
finalised the database refuses any change but the status (→ paid or void).

After the commit the invoice goes to the billing provider (customer, subscription, items
keyed by our line ids, the provider's invoice finalised); its id is stored. A provider
outage leaves the invoice finalised here and unsent, and the next `close_period` of the
same month sends it (the provider calls are idempotent).

Which plan: the tenant's plan when the month is closed. Tenants that existed during the
month get an invoice (created before its end, not deleted before its start).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from billing.ledger import GB, LEDGER_LOCK, month_end, month_totals
from billing.provider import BillingProvider, CustomerRef, InvoicePush, LinePush
from billing.rating import Line, MonthUsage, Pricing, rate, total_cents
from billing.render import InvoiceDoc
from tenancy import audit
from tenancy.db import Database
from tenancy.models import Plan
from tenancy.plans import get_plan
from trading.errors import Conflict, Invalid, NotFound

log = logging.getLogger(__name__)

def parse_month(value: str, *, field: str = "month") -> date:
    """'YYYY-MM' → the first day of that month; anything else is `Invalid` naming `field`."""
    try:
        year, month = (int(part) for part in value.split("-"))
        if len(value) != 7 or not 2000 <= year <= 9999:
            raise ValueError
        return date(year, month, 1)
    except (ValueError, AttributeError):
        raise Invalid(f"{field} must be YYYY-MM (e.g. 2026-10), not {value!r}",
                      field=field) from None


def pricing(plan: Plan) -> Pricing:
    return Pricing(
        plan=plan.code, plan_name=plan.name, currency=plan.currency,
        base_cents=plan.price_cents, api_calls_included=plan.api_calls_per_month,
        api_call_overage_cents_per_1000=Decimal(plan.api_call_overage_cents_per_1000),
        cpu_hours_included=None if plan.cpu_hours_included is None
        else Decimal(plan.cpu_hours_included),
        cpu_hour_overage_cents=Decimal(plan.cpu_hour_overage_cents),
        storage_gb_included=None if plan.storage_bytes is None
        else Decimal(plan.storage_bytes) / GB,
        storage_gb_month_overage_cents=Decimal(plan.storage_gb_month_overage_cents))


@dataclass(frozen=True)
class CloseResult:
    tenant: str
    invoice_id: uuid.UUID
    number: str | None
    total_cents: int
    created: bool  # False: the month already had this invoice
    provider_invoice_id: str | None
    error: str | None = None


async def close_period(db: Database, provider: BillingProvider, period: date, *, actor: str,
                       now: datetime | None = None) -> list[CloseResult]:
    """Invoice every tenant for a finished month (see the module docstring)."""
    now = now or datetime.now(UTC)
    end = month_end(period)
    if datetime(end.year, end.month, end.day, tzinfo=UTC) > now:
        raise Invalid(f"{period:%Y-%m} is not over yet; only finished months can be closed",
                      field="month")
    async with db.platform() as uow:
        tenants = list(await uow.conn.execute(text(
            "SELECT id, slug FROM platform.tenants WHERE created_at < :end"
            " AND (deleted_at IS NULL OR deleted_at >= :start) ORDER BY slug"),
            {"start": period, "end": end}))
    results = []
    for tenant in tenants:
        invoice_id, created = await _invoice_tenant(db, provider.name, tenant.id, period, actor,
                                                    now)
        results.append(await _send(db, provider, invoice_id, created))
    return results


async def _invoice_tenant(db: Database, provider_name: str, tenant_id: uuid.UUID,
                          period: date, actor: str, now: datetime) -> tuple[uuid.UUID, bool]:
    async with db.platform() as uow:
        conn = uow.conn
        await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LEDGER_LOCK})
        existing = (await conn.execute(text(
            "SELECT id FROM platform.invoices WHERE tenant_id = :t AND period = :p"
            " AND status <> 'void'"), {"t": tenant_id, "p": period})).first()
        if existing is not None:
            return existing.id, False
        tenant = (await conn.execute(text(
            "SELECT slug, plan FROM platform.tenants WHERE id = :t FOR UPDATE"),
            {"t": tenant_id})).one()
        plan = await get_plan(conn, tenant.plan)
        totals = await month_totals(conn, tenant_id, period)
        usage = MonthUsage(period=period, api_calls=int(totals.get("api_calls", 0)),
                           cpu_seconds=totals.get("cpu_seconds", Decimal(0)),
                           storage_gb_seconds=totals.get("storage_gb_seconds", Decimal(0)),
                           memory_gb_seconds=totals.get("memory_gb_seconds", Decimal(0)),
                           gpu_seconds=totals.get("gpu_seconds", Decimal(0)))
        lines = rate(pricing(plan), usage)
        invoice_id = uuid.uuid4()
        total = total_cents(lines)
        await conn.execute(text(
            "INSERT INTO platform.invoices (id, tenant_id, period, status, plan, currency,"
            " total_cents, provider, created_at) VALUES (:id, :t, :p, 'draft', :plan, :c,"
            " :total, :provider, :now)"),
            {"id": invoice_id, "t": tenant_id, "p": period, "plan": plan.code,
             "c": plan.currency, "total": total, "provider": provider_name, "now": now})
        if lines:
            await conn.execute(text(
                "INSERT INTO platform.invoice_lines (id, invoice_id, line_no, kind, description,"
                " quantity, unit, unit_price_cents, amount_cents) VALUES (:id, :inv, :no, :k,"
                " :d, :q, :u, :up, :a)"),
                [{"id": uuid.uuid4(), "inv": invoice_id, "no": line.line_no, "k": line.kind,
                  "d": line.description, "q": line.quantity, "u": line.unit,
                  "up": line.unit_price_cents, "a": line.amount_cents} for line in lines])
        number = await _next_number(conn, now.year)
        await conn.execute(text(
            "UPDATE platform.invoices SET status = 'finalised', number = :n, finalised_at = :now"
            " WHERE id = :id"), {"n": number, "now": now, "id": invoice_id})
        await audit.record(conn, tenant_id, actor=actor, action="invoice.finalise",
                           target=number, detail={"period": f"{period:%Y-%m}", "total_cents": total,
                                                  "lines": len(lines), "plan": plan.code})
        await uow.commit()
        return invoice_id, True


async def _next_number(conn: AsyncConnection, year: int) -> str:
    row = (await conn.execute(text(
        "INSERT INTO platform.invoice_numbers (year, last) VALUES (:y, 1)"
        " ON CONFLICT (year) DO UPDATE SET last = platform.invoice_numbers.last + 1"
        " RETURNING last"), {"y": year})).one()
    return f"ATP-{year}-{row.last:06d}"


async def _send(db: Database, provider: BillingProvider, invoice_id: uuid.UUID,
                created: bool) -> CloseResult:
    """Send a finalised invoice to the provider once; record its id."""
    async with db.platform() as uow:
        row = (await uow.conn.execute(text(
            "SELECT i.id, i.number, i.period, i.currency, i.total_cents, i.status,"
            " i.provider_invoice_id, t.id AS tenant_id, t.slug, t.plan,"
            " t.billing_subscription_id"
            " FROM platform.invoices i JOIN platform.tenants t ON t.id = i.tenant_id"
            " WHERE i.id = :id"), {"id": invoice_id})).one()
        lines = await _lines(uow.conn, invoice_id)
        plan = await get_plan(uow.conn, row.plan)
    result = CloseResult(row.slug, row.id, row.number, row.total_cents, created,
                         row.provider_invoice_id)
    if provider.name == "none" or row.provider_invoice_id is not None \
            or row.status != "finalised":
        return result
    try:
        customer = await ensure_customer(db, provider, row.tenant_id)
        if customer is None:
            return result
        subscription = await provider.ensure_subscription(
            customer, plan.code, plan.name, plan.currency, row.billing_subscription_id)
        if subscription != row.billing_subscription_id:
            await _set_tenant(db, row.tenant_id, billing_subscription_id=subscription)
        push = InvoicePush(row.id, row.number, row.period, row.currency, row.total_cents,
                           tuple(LinePush(line_id, line.description, line.amount_cents)
                                 for line_id, line in lines))
        provider_id = await provider.push_invoice(customer, push, None)
    except Exception as exc:  # stays finalised here; the next close of the month resends
        log.warning("sending invoice %s to %s failed: %s", row.number, provider.name, exc)
        return CloseResult(row.slug, row.id, row.number, row.total_cents, created, None,
                           error=str(exc)[:300])
    async with db.platform() as uow:
        await uow.conn.execute(text(
            "UPDATE platform.invoices SET provider_invoice_id = :p WHERE id = :id"),
            {"p": provider_id, "id": invoice_id})
        await uow.commit()
    return CloseResult(row.slug, row.id, row.number, row.total_cents, created, provider_id)


async def ensure_customer(db: Database, provider: BillingProvider,
                          tenant_id: uuid.UUID) -> str | None:
    """The tenant's customer at the provider, created (and stored) when missing."""
    async with db.platform() as uow:
        row = (await uow.conn.execute(text(
            "SELECT t.id, t.slug, t.name, t.billing_customer_id,"
            " (SELECT u.email FROM platform.memberships m JOIN platform.users u"
            "   ON u.id = m.user_id WHERE m.tenant_id = t.id AND m.role = 'owner'"
            "   ORDER BY m.created_at LIMIT 1) AS email"
            " FROM platform.tenants t WHERE t.id = :t"), {"t": tenant_id})).one()
    customer = await provider.ensure_customer(
        CustomerRef(row.id, row.slug, row.name, row.email), row.billing_customer_id)
    if customer != row.billing_customer_id:
        await _set_tenant(db, tenant_id, billing_customer_id=customer)
    return customer


async def onboard(db: Database, provider: BillingProvider, tenant_id: uuid.UUID) -> None:
    """At onboarding: the provider's customer and plan subscription (none: nothing)."""
    if provider.name == "none":
        return
    customer = await ensure_customer(db, provider, tenant_id)
    if customer is None:
        return
    async with db.platform() as uow:
        row = (await uow.conn.execute(text(
            "SELECT plan, billing_subscription_id FROM platform.tenants WHERE id = :t"),
            {"t": tenant_id})).one()
        plan = await get_plan(uow.conn, row.plan)
    subscription = await provider.ensure_subscription(customer, plan.code, plan.name,
                                                      plan.currency, row.billing_subscription_id)
    if subscription != row.billing_subscription_id:
        await _set_tenant(db, tenant_id, billing_subscription_id=subscription)


async def _set_tenant(db: Database, tenant_id: uuid.UUID, **columns: str | None) -> None:
    allowed = {"billing_customer_id", "billing_subscription_id"}
    assert set(columns) <= allowed
    sets = ", ".join(f"{c} = :{c}" for c in sorted(columns))
    async with db.platform() as uow:
        await uow.conn.execute(text(f"UPDATE platform.tenants SET {sets} WHERE id = :id"),
                               {**columns, "id": tenant_id})
        await uow.commit()


# -- reading -------------------------------------------------------------------------------------

_INVOICE_COLUMNS = ("i.id, i.tenant_id, i.period, i.number, i.status, i.plan, i.currency,"
                    " i.total_cents, i.provider, i.provider_invoice_id, i.created_at,"
                    " i.finalised_at, i.paid_at, i.voided_at")


async def _lines(conn: AsyncConnection, invoice_id: uuid.UUID) -> list[tuple[uuid.UUID, Line]]:
    rows = await conn.execute(text(
        "SELECT id, line_no, kind, description, quantity, unit, unit_price_cents, amount_cents"
        " FROM platform.invoice_lines WHERE invoice_id = :i ORDER BY line_no"),
        {"i": invoice_id})
    return [(r.id, Line(r.line_no, r.kind, r.description, r.quantity, r.unit,
                        r.unit_price_cents, int(r.amount_cents))) for r in rows]


async def list_invoices(conn: AsyncConnection, tenant_id: uuid.UUID | None = None
                        ) -> list[dict[str, Any]]:
    """Invoices, newest period first; one tenant's when `tenant_id` is given."""
    where = "" if tenant_id is None else " WHERE i.tenant_id = :t"
    rows = await conn.execute(text(
        f"SELECT {_INVOICE_COLUMNS}, t.slug FROM platform.invoices i"
        f" JOIN platform.tenants t ON t.id = i.tenant_id{where}"
        " ORDER BY i.period DESC, i.number"), {"t": tenant_id})
    return [dict(r._mapping) for r in rows]


async def get_invoice(conn: AsyncConnection, invoice_id: str, tenant_id: uuid.UUID | None
                      ) -> tuple[dict[str, Any], list[tuple[uuid.UUID, Line]], InvoiceDoc]:
    """One invoice with its lines and its document; another tenant's is `NotFound`."""
    try:
        iid = uuid.UUID(str(invoice_id))
    except ValueError:
        raise NotFound(f"no invoice {invoice_id}", field="invoice_id") from None
    params: dict[str, Any] = {"i": iid}
    where = "i.id = :i"
    if tenant_id is not None:
        where += " AND i.tenant_id = :t"
        params["t"] = tenant_id
    row = (await conn.execute(text(
        f"SELECT {_INVOICE_COLUMNS}, t.slug, t.name FROM platform.invoices i"
        f" JOIN platform.tenants t ON t.id = i.tenant_id WHERE {where}"), params)).first()
    if row is None:
        raise NotFound(f"no invoice {invoice_id}", field="invoice_id")
    lines = await _lines(conn, iid)
    doc = InvoiceDoc(id=row.id, number=row.number, status=row.status, period=row.period,
                     tenant_name=row.name, tenant_slug=row.slug, currency=row.currency,
                     lines=tuple(line for _, line in lines), total_cents=int(row.total_cents),
                     issued_at=row.finalised_at, paid_at=row.paid_at, provider=row.provider,
                     provider_invoice_id=row.provider_invoice_id)
    return dict(row._mapping), lines, doc


async def void_invoice(db: Database, invoice_id: str, *, actor: str) -> None:
    """Void a finalised (unpaid) invoice; its number stays used, the month may be re-closed."""
    async with db.platform() as uow:
        row, _, _ = await get_invoice(uow.conn, invoice_id, None)
        if row["status"] not in ("draft", "finalised"):
            raise Conflict(f"a {row['status']} invoice cannot be voided", code="invoice_not_open",
                          field="invoice_id")
        await uow.conn.execute(text(
            "UPDATE platform.invoices SET status = 'void', voided_at = now() WHERE id = :i"),
            {"i": row["id"]})
        await audit.record(uow.conn, row["tenant_id"], actor=actor, action="invoice.void",
                           target=row["number"], detail={"period": f"{row['period']:%Y-%m}"})
        await uow.commit()
