"""Usage, invoices and the payment provider's webhook.

Usage comes from the ledger's daily aggregate (`billing.ledger`); the tenant is the
credential's. Invoices are read as JSON, HTML or PDF (admin: they are the tenant's
finances). The webhook is the one unauthenticated route besides health and login: it is
trusted only when its signature verifies, and a bad one changes nothing (400).
"""

from __future__ import annotations

import uuid
from datetime import date
from decimal import Decimal
from typing import Any, Literal

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import text

from billing import invoices as billing_invoices
from billing import ledger
from billing.payments import apply_event
from billing.render import render_html, render_pdf
from serve.deps import AdminDep, OperatorDep, ServicesDep, ViewerDep, tenant_of
from serve.errors import bounded_body
from tenancy.tenants import get_tenant
from trading.errors import BadRequest, Invalid

router = APIRouter(prefix="/v1", tags=["billing"])

MAX_WEBHOOK_BYTES = 1_000_000


def _usage_body(rows: list[ledger.UsageRow], start: date, end: date, granularity: str,
                slugs: dict[uuid.UUID, str] | None = None) -> dict[str, Any]:
    totals: dict[str, Decimal] = {}
    out = []
    for row in rows:
        totals[row.meter] = totals.get(row.meter, Decimal(0)) + row.quantity
        item: dict[str, Any] = {"period": row.period.isoformat(), "meter": row.meter,
                                "quantity": str(row.quantity), "unit": ledger.METERS[row.meter][0],
                                "samples": row.samples}
        if slugs is not None:
            item["tenant"] = slugs.get(row.tenant_id, str(row.tenant_id))
        out.append(item)
    return {"from": start.isoformat(), "to": end.isoformat(), "granularity": granularity,
            "meters": {m: {"unit": u, "description": d} for m, (u, d) in ledger.METERS.items()},
            "totals": {m: str(q) for m, q in sorted(totals.items())}, "rows": out}


FromQ = Query(None, alias="from", description="first day (YYYY-MM-DD), default: 1st of this month")
ToQ = Query(None, alias="to", description="day after the last (YYYY-MM-DD), default: tomorrow")
GranularityQ = Query("day", description="day or month")


@router.get("/usage")
async def get_usage(principal: ViewerDep, services: ServicesDep, start: date | None = FromQ,
                    end: date | None = ToQ, granularity: Literal["day", "month"] = GranularityQ
                    ) -> dict[str, Any]:
    """The tenant's metered usage per meter and day or month, with totals over the range."""
    tenant = tenant_of(principal)
    start, end = ledger.usage_range(start, end)
    async with services.db.tenant(tenant.id, tenant.slug) as uow:  # RLS: own rows only
        rows = await ledger.usage(uow.conn, start, end, granularity, tenant_id=tenant.id)
    return _usage_body(rows, start, end, granularity)


@router.get("/admin/usage")
async def admin_usage(_: OperatorDep, services: ServicesDep, start: date | None = FromQ,
                      end: date | None = ToQ, granularity: Literal["day", "month"] = GranularityQ,
                      tenant: str | None = Query(None, description="one tenant's slug")
                      ) -> dict[str, Any]:
    """Every tenant's usage (or one tenant's), per meter and day or month."""
    start, end = ledger.usage_range(start, end)
    async with services.db.platform() as uow:
        tenant_id = None
        if tenant is not None:
            tenant_id = (await get_tenant(uow.conn, tenant)).id
        rows = await ledger.usage(uow.conn, start, end, granularity, tenant_id=tenant_id)
        slugs = {r.id: r.slug for r in await uow.conn.execute(text(
            "SELECT id, slug FROM platform.tenants"))}
    return _usage_body(rows, start, end, granularity, slugs)


def _invoice_out(row: dict[str, Any], lines: list[tuple[uuid.UUID, Any]] | None = None
                 ) -> dict[str, Any]:
    out = {"id": str(row["id"]), "number": row["number"], "status": row["status"],
           "period": f"{row['period']:%Y-%m}", "plan": row["plan"], "currency": row["currency"],
           "total_cents": int(row["total_cents"]), "provider": row["provider"],
           "provider_invoice_id": row["provider_invoice_id"],
           "finalised_at": row["finalised_at"], "paid_at": row["paid_at"],
           "voided_at": row["voided_at"]}
    if lines is not None:
        out["lines"] = [{"id": str(line_id), "line_no": line.line_no, "kind": line.kind,
                         "description": line.description, "quantity": str(line.quantity),
                         "unit": line.unit, "unit_price_cents": str(line.unit_price_cents),
                         "amount_cents": line.amount_cents} for line_id, line in lines]
    return out


@router.get("/billing/invoices")
async def list_invoices(principal: AdminDep, services: ServicesDep) -> list[dict[str, Any]]:
    """The tenant's invoices, newest month first."""
    tenant = tenant_of(principal)
    async with services.db.platform() as uow:
        rows = await billing_invoices.list_invoices(uow.conn, tenant.id)
    return [_invoice_out(r) for r in rows]


async def _document(principal: Any, services: Any, invoice_id: str) -> Any:
    tenant = tenant_of(principal)
    async with services.db.platform() as uow:
        return await billing_invoices.get_invoice(uow.conn, invoice_id, tenant.id)


@router.get("/billing/invoices/{invoice_id}.pdf", response_class=Response)
async def invoice_pdf(invoice_id: str, principal: AdminDep, services: ServicesDep) -> Response:
    """The invoice as a PDF."""
    row, _, doc = await _document(principal, services, invoice_id)
    name = row["number"] or f"draft-{row['id']}"
    return Response(render_pdf(doc), media_type="application/pdf",
                    headers={"Content-Disposition": f'inline; filename="{name}.pdf"'})


@router.get("/billing/invoices/{invoice_id}.html", response_class=Response)
async def invoice_html(invoice_id: str, principal: AdminDep, services: ServicesDep) -> Response:
    """The invoice as a printable HTML page."""
    _, _, doc = await _document(principal, services, invoice_id)
    return Response(render_html(doc), media_type="text/html; charset=utf-8",
                    headers={"Content-Security-Policy": "default-src 'none'; "
                                                        "style-src 'unsafe-inline'"})


@router.get("/billing/invoices/{invoice_id}")
async def get_invoice(invoice_id: str, principal: AdminDep, services: ServicesDep
                      ) -> dict[str, Any]:
    """One invoice with its numbered lines."""
    row, lines, _ = await _document(principal, services, invoice_id)
    return _invoice_out(row, lines)


@router.post("/billing/stripe/webhook")
async def stripe_webhook(request: Request, services: ServicesDep) -> dict[str, Any]:
    """Payment events from Stripe, verified by their signature (400 otherwise)."""
    payload = await bounded_body(request, MAX_WEBHOOK_BYTES, "the event")
    try:
        event = services.provider.parse_webhook(payload, request.headers.get("stripe-signature"))
    except Invalid as exc:
        raise BadRequest(exc.message, code=exc.code, field=exc.field) from None
    outcome = await apply_event(services.db, event)  # status changes notify the auth caches
    return {"received": True, "applied": outcome.applied, "type": event.raw_type}
