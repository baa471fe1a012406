"""What the payment provider tells us, and what non-payment does to a tenant.

Billing status of a tenant (``platform.tenants.billing_status``), apart from its
operational status:

- ``current`` → a failed payment → ``past_due`` (since then; the tenant keeps working);
- ``past_due`` for longer than the grace period (`enforce_grace`) → ``suspended``: the
  tenant's status becomes ``suspended`` (its credentials stop working, its bots are
  stopped by the caller);
- a successful payment → ``current``, the invoice ``paid``, and a tenant suspended for
  non-payment is active again. A tenant suspended by an operator stays suspended.

Every provider event is applied once (its id is kept in ``billing_webhook_events``), in
one transaction with the changes and their audit entries.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from billing.provider import WebhookEvent
from tenancy import audit
from tenancy.auth import notify_auth_change
from tenancy.db import Database

log = logging.getLogger(__name__)

ACTOR = "billing"


@dataclass(frozen=True)
class EventOutcome:
    applied: bool  # False: a duplicate, or nothing of ours
    invoice: str | None = None
    tenant_id: uuid.UUID | None = None
    resumed: bool = False  # the tenant was suspended for non-payment and is active again


async def apply_event(db: Database, event: WebhookEvent, *,
                      now: datetime | None = None) -> EventOutcome:
    """Apply one verified provider event (see the module docstring)."""
    now = now or datetime.now(UTC)
    async with db.platform() as uow:
        conn = uow.conn
        fresh = (await conn.execute(text(
            "INSERT INTO platform.billing_webhook_events (event_id, type) VALUES (:i, :t)"
            " ON CONFLICT DO NOTHING RETURNING event_id"),
            {"i": event.id, "t": event.raw_type})).first()
        if fresh is None:
            return EventOutcome(False)
        if event.kind == "other" or event.provider_invoice_id is None:
            await uow.commit()
            return EventOutcome(False)
        invoice = (await conn.execute(text(
            "SELECT id, tenant_id, number, status FROM platform.invoices"
            " WHERE provider_invoice_id = :p FOR UPDATE"),
            {"p": event.provider_invoice_id})).first()
        if invoice is None:
            log.warning("provider event %s for an invoice we do not know", event.raw_type)
            await uow.commit()
            return EventOutcome(False)
        if event.kind == "payment_succeeded":
            outcome = await _paid(conn, invoice, now)
        else:
            outcome = await _failed(conn, invoice, now)
        await uow.commit()
        return outcome


async def _paid(conn: AsyncConnection, invoice: Any, now: datetime) -> EventOutcome:
    tenant_id, number = invoice.tenant_id, invoice.number
    if invoice.status == "finalised":
        await conn.execute(text(
            "UPDATE platform.invoices SET status = 'paid', paid_at = :now WHERE id = :i"),
            {"now": now, "i": invoice.id})
        await audit.record(conn, tenant_id, actor=ACTOR, action="invoice.paid", target=number)
    tenant = (await conn.execute(text(
        "SELECT status, billing_status FROM platform.tenants WHERE id = :t FOR UPDATE"),
        {"t": tenant_id})).one()
    resumed = tenant.billing_status == "suspended" and tenant.status == "suspended"
    if tenant.billing_status != "current":
        await conn.execute(text(
            "UPDATE platform.tenants SET billing_status = 'current', past_due_since = NULL,"
            " status = CASE WHEN CAST(:resume AS boolean) THEN 'active' ELSE status END,"
            " updated_at = now(), version = version + 1 WHERE id = :t"),
            {"t": tenant_id, "resume": resumed})
        await audit.record(conn, tenant_id, actor=ACTOR, action="billing.current",
                           target=number, detail={"from": tenant.billing_status,
                                                  "resumed": resumed})
        if resumed:
            await notify_auth_change(conn, tenant_id)
    return EventOutcome(True, number, tenant_id, resumed)


async def _failed(conn: AsyncConnection, invoice: Any, now: datetime) -> EventOutcome:
    tenant_id, number = invoice.tenant_id, invoice.number
    tenant = (await conn.execute(text(
        "SELECT billing_status FROM platform.tenants WHERE id = :t FOR UPDATE"),
        {"t": tenant_id})).one()
    if tenant.billing_status == "current":
        await conn.execute(text(
            "UPDATE platform.tenants SET billing_status = 'past_due', past_due_since = :now,"
            " updated_at = now(), version = version + 1 WHERE id = :t"),
            {"now": now, "t": tenant_id})
        await audit.record(conn, tenant_id, actor=ACTOR, action="billing.past_due",
                           target=number)
    return EventOutcome(True, number, tenant_id)


async def enforce_grace(db: Database, grace: timedelta, *,
                        now: datetime | None = None) -> list[tuple[uuid.UUID, str]]:
    """Suspend tenants past due for longer than `grace`; return (id, slug) of each.

    The caller stops their bots (billing does not command the runtime itself).
    """
    now = now or datetime.now(UTC)
    suspended = []
    async with db.platform() as uow:
        conn = uow.conn
        rows = list(await conn.execute(text(
            "SELECT id, slug, status FROM platform.tenants WHERE billing_status = 'past_due'"
            " AND past_due_since <= :cutoff AND status <> 'deleted' FOR UPDATE"),
            {"cutoff": now - grace}))
        for row in rows:
            await conn.execute(text(
                "UPDATE platform.tenants SET billing_status = 'suspended', status = 'suspended',"
                " updated_at = now(), version = version + 1 WHERE id = :t"), {"t": row.id})
            await audit.record(conn, row.id, actor=ACTOR, action="billing.suspend",
                               target=row.slug, detail={"grace_days": grace.total_seconds() / 86400,
                                                        "previous_status": row.status})
            await notify_auth_change(conn, row.id)
            suspended.append((row.id, row.slug))
        await uow.commit()
    return suspended
