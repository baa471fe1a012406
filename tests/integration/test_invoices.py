"""Closing months into invoices, against real PostgreSQL and (for Stripe) localstripe."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pypdf
import pytest
import uvicorn
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from billing import ledger
from billing.invoices import close_period, get_invoice, onboard, void_invoice
from billing.ledger import Sample
from billing.noop import NoopProvider
from billing.payments import enforce_grace
from billing.render import format_money, render_html, render_pdf
from billing.stripe_provider import StripeProvider
from serve.api import create_api
from tenancy.db import Database
from tenancy.settings import Settings
from tests.conftest import TenantFactory, wait_for
from tests.stripe_emulator import (
    API_KEY,
    configure_webhook,
    free_port,
    pay_invoice,
    request,
    set_default_card,
    set_default_failing_sepa_debit,
)
from trading.errors import Conflict, Invalid

WEBHOOK_SECRET = "whsec_atp_test_invoices"


async def _backdated(db: Database, make_tenant: TenantFactory, plan: str, created: date
                     ) -> Any:
    t = (await make_tenant(plan=plan)).tenant
    async with db.platform() as uow:
        await uow.conn.execute(text("UPDATE platform.tenants SET created_at = :c WHERE id = :t"),
                               {"c": datetime(created.year, created.month, created.day,
                                              tzinfo=UTC), "t": t.id})
        await uow.commit()
    return t


async def _usage(db: Database, tenant: uuid.UUID, period: date, **meters: str) -> None:
    start = datetime(period.year, period.month, 2, tzinfo=UTC)
    samples = [Sample(tenant, meter, start, start + timedelta(seconds=15), "test", Decimal(q))
               for meter, q in meters.items()]
    async with db.platform() as uow:
        result = await ledger.record(uow.conn, samples)
        await uow.commit()
    assert result.accepted == len(samples), result


async def _invoices(db: Database, tenant: uuid.UUID, period: date) -> list[Any]:
    async with db.platform() as uow:
        return list(await uow.conn.execute(text(
            "SELECT id, number, status, total_cents FROM platform.invoices"
            " WHERE tenant_id = :t AND period = :p ORDER BY created_at"),
            {"t": tenant, "p": period}))


async def test_a_month_closes_into_one_invoice_whose_lines_add_up(
        db: Database, make_tenant: TenantFactory) -> None:
    period = date(2025, 2, 1)
    t = await _backdated(db, make_tenant, "starter", date(2025, 2, 3))
    # starter: $49; 10,000 calls, 100 CPU-hours and 1 GB included; 50c per started 1,000
    # calls, 5c per CPU-hour, 25c per GB-month. February 2025 has 28 days.
    await _usage(db, t.id, period, api_calls="10500", cpu_seconds=str(101 * 3600),
                 storage_gb_seconds=str(2 * 28 * 86400), memory_gb_seconds="12")
    results = await close_period(db, NoopProvider(), period, actor="test")
    [mine] = [r for r in results if r.tenant == t.slug]
    assert mine.created and mine.total_cents == 4900 + 50 + 5 + 25
    async with db.platform() as uow:
        row, lines, doc = await get_invoice(uow.conn, str(mine.invoice_id), t.id)
    assert row["status"] == "finalised" and row["number"].startswith("ATP-")
    assert [(line.line_no, line.kind, line.quantity, line.amount_cents) for _, line in lines] == [
        (1, "base", Decimal(1), 4900), (2, "api_calls", Decimal(1), 50),
        (3, "cpu_hours", Decimal(1), 5), (4, "storage", Decimal(2) - 1, 25)]
    assert sum(line.amount_cents for _, line in lines) == row["total_cents"]

    # Closing again makes no second invoice; a late sample for the month is refused.
    again = await close_period(db, NoopProvider(), period, actor="test")
    assert [r.created for r in again if r.tenant == t.slug] == [False]
    assert len(await _invoices(db, t.id, period)) == 1
    async with db.platform() as uow:
        late = await ledger.record(uow.conn, [Sample(
            t.id, "api_calls", datetime(2025, 2, 20, tzinfo=UTC),
            datetime(2025, 2, 20, 0, 0, 15, tzinfo=UTC), "late", Decimal(5))])
        await uow.commit()
    assert [r for _, r in late.rejected] == ["period_closed"]

    # The documents: the total in both; the HTML says there is no payment provider.
    total = format_money(4980, "usd")
    assert total in render_html(doc) and "Not sent to a payment provider" in render_html(doc)
    pdf_text = "".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(render_pdf(doc))).pages)
    assert total in pdf_text and row["number"] in pdf_text


async def test_a_finalised_invoice_never_changes(db: Database, make_tenant: TenantFactory
                                                 ) -> None:
    period = date(2025, 4, 1)
    t = await _backdated(db, make_tenant, "starter", date(2025, 4, 1))
    [mine] = [r for r in await close_period(db, NoopProvider(), period, actor="test")
              if r.tenant == t.slug]
    statements = [
        ("UPDATE platform.invoices SET total_cents = 1 WHERE id = :i", "cannot change"),
        ("UPDATE platform.invoices SET number = 'X' WHERE id = :i", "cannot change"),
        ("UPDATE platform.invoices SET status = 'draft' WHERE id = :i", "cannot become"),
        ("DELETE FROM platform.invoices WHERE id = :i", "cannot be deleted"),
        ("UPDATE platform.invoice_lines SET amount_cents = 0 WHERE invoice_id = :i",
         "cannot change"),
        ("INSERT INTO platform.invoice_lines (id, invoice_id, line_no, kind, description,"
         " quantity, unit, unit_price_cents, amount_cents) VALUES (gen_random_uuid(), :i, 9,"
         " 'x', 'x', 1, 'x', 1, 1)", "cannot change"),
    ]
    for statement, message in statements:
        with pytest.raises(DBAPIError, match=message):
            async with db.platform() as uow:
                await uow.conn.execute(text(statement), {"i": mine.invoice_id})
    # Void, then close again: a new invoice with the next number; the void one keeps its own.
    await void_invoice(db, str(mine.invoice_id), actor="test")
    with pytest.raises(Conflict):
        await void_invoice(db, str(mine.invoice_id), actor="test")
    [again] = [r for r in await close_period(db, NoopProvider(), period, actor="test")
               if r.tenant == t.slug]
    assert again.created and again.number != mine.number
    assert [r.status for r in await _invoices(db, t.id, period)] == ["void", "finalised"]


async def test_invoice_numbers_have_no_gaps(db: Database, make_tenant: TenantFactory) -> None:
    t = await _backdated(db, make_tenant, "professional", date(2025, 5, 1))
    await asyncio.gather(*(close_period(db, NoopProvider(), date(2025, m, 1), actor="test")
                           for m in (5, 6, 7)))  # concurrently, as from several shells
    async with db.platform() as uow:
        numbers = [r.number for r in await uow.conn.execute(text(
            "SELECT number FROM platform.invoices WHERE number IS NOT NULL"))]
    by_year: dict[str, list[int]] = {}
    for number in numbers:
        _, year, seq = number.split("-")
        by_year.setdefault(year, []).append(int(seq))
    for seqs in by_year.values():
        assert sorted(seqs) == list(range(1, len(seqs) + 1))
    assert len(await _invoices(db, t.id, date(2025, 6, 1))) == 1


@pytest.mark.parametrize("month", [date(2099, 1, 1), datetime.now(UTC).date().replace(day=1)])
async def test_only_finished_months_close(db: Database, month: date) -> None:
    with pytest.raises(Invalid) as err:
        await close_period(db, NoopProvider(), month, actor="test")
    assert err.value.field == "month"


# -- Stripe (localstripe) ----------------------------------------------------------------------

@pytest.fixture
async def stripe_gateway(settings: Settings, localstripe: str) -> AsyncIterator[str]:
    """The gateway's FastAPI app with the Stripe provider, on a real port (uvicorn), so that
    localstripe delivers its signed webhooks to it."""
    stripe_settings = settings.model_copy(update={
        "stripe_api_key": API_KEY, "stripe_api_base": localstripe})
    stripe_settings = stripe_settings.model_copy(update={
        "stripe_webhook_secret": type(settings.jwt_secret)(WEBHOOK_SECRET),  # SecretStr
        "stripe_api_key": type(settings.jwt_secret)(API_KEY)})
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_api(stripe_settings), host="127.0.0.1",
                                           port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def test_stripe_holds_the_same_customer_items_and_invoice_and_payments_flow_back(
        db: Database, make_tenant: TenantFactory, localstripe: str, stripe_gateway: str) -> None:
    provider = StripeProvider(API_KEY, WEBHOOK_SECRET, api_base=localstripe)
    period = date(2025, 1, 1)
    t = await _backdated(db, make_tenant, "professional", date(2025, 1, 5))
    await onboard(db, provider, t.id)  # what tenant onboarding does with a provider
    await _usage(db, t.id, period, api_calls="100001")
    results = await close_period(db, provider, period, actor="test")
    [mine] = [r for r in results if r.tenant == t.slug]
    assert mine.provider_invoice_id and mine.total_cents == 19900 + 30
    async with db.platform() as uow:
        tenant = (await uow.conn.execute(text(
            "SELECT billing_customer_id, billing_subscription_id FROM platform.tenants"
            " WHERE id = :t"), {"t": t.id})).one()
        _, lines, _ = await get_invoice(uow.conn, str(mine.invoice_id), t.id)
    customer = request(localstripe, "GET", f"/v1/customers/{tenant.billing_customer_id}")
    assert customer["metadata"]["tenant_id"] == str(t.id)
    assert tenant.billing_subscription_id
    remote = request(localstripe, "GET", f"/v1/invoices/{mine.provider_invoice_id}")
    items = [li for li in remote["lines"]["data"] if li["type"] == "invoiceitem"]
    assert remote["total"] == mine.total_cents and remote["status"] == "open"
    assert sorted((li["metadata"]["line_id"], li["amount"]) for li in items) == sorted(
        (str(line_id), line.amount_cents) for line_id, line in lines)
    # Closing again sends nothing twice.
    await close_period(db, provider, period, actor="test")
    invoices = request(localstripe, "GET", "/v1/invoices", customer=customer["id"])["data"]
    # Besides ours, only the zero-priced subscription's own $0 invoice (plan membership).
    assert [i["id"] for i in invoices if i["total"] or i["metadata"]] == [
        mine.provider_invoice_id], invoices

    # Payments: localstripe signs and delivers the events to the gateway's webhook.
    configure_webhook(localstripe, f"atp-{t.slug}", f"{stripe_gateway}/v1/billing/stripe/webhook",
                      WEBHOOK_SECRET, ["invoice.payment_succeeded", "invoice.payment_failed"])

    async def tenant_row() -> Any:
        async with db.platform() as uow:
            return (await uow.conn.execute(text(
                "SELECT status, billing_status, past_due_since FROM platform.tenants"
                " WHERE id = :t"), {"t": t.id})).one()

    set_default_failing_sepa_debit(localstripe, customer["id"])
    pay_invoice(localstripe, mine.provider_invoice_id)

    async def past_due() -> bool:
        return bool((await tenant_row()).billing_status == "past_due")
    await wait_for(past_due, timeout=20, interval=0.2)
    # Grace over: suspended (credentials refused); paying brings it back.
    assert await enforce_grace(db, timedelta(days=7)) == []
    assert await enforce_grace(db, timedelta(0)) == [(t.id, t.slug)]
    assert (await tenant_row()).status == "suspended"
    set_default_card(localstripe, customer["id"])
    pay_invoice(localstripe, mine.provider_invoice_id)

    async def active() -> bool:
        row = await tenant_row()
        return bool(row.status == "active" and row.billing_status == "current")
    await wait_for(active, timeout=20, interval=0.2)
    assert [r.status for r in await _invoices(db, t.id, period)] == ["paid"]
    async with db.platform() as uow:
        actions = [r.action for r in await uow.conn.execute(text(
            "SELECT action FROM platform.audit_log WHERE tenant_id = :t ORDER BY seq"),
            {"t": t.id})]
    assert actions[-4:] == ["billing.past_due", "billing.suspend", "invoice.paid",
                            "billing.current"]


async def test_a_webhook_with_a_bad_signature_is_400_and_changes_nothing(
        stripe_gateway: str) -> None:
    body = b'{"id": "evt_x", "type": "invoice.payment_succeeded", "data": {"object": {}}}'
    async with httpx.AsyncClient(base_url=stripe_gateway) as client:
        for headers in ({"Stripe-Signature": "t=1,v1=deadbeef"}, {}):
            r = await client.post("/v1/billing/stripe/webhook", content=body, headers=headers)
            assert r.status_code == 400, r.text
            assert r.json()["error"]["code"] == "bad_signature"
        huge = await client.post("/v1/billing/stripe/webhook", content=b"x" * 1_000_001,
                                 headers={"Stripe-Signature": "t=1,v1=00"})
        assert huge.status_code == 400 and huge.json()["error"]["code"] == "bad_payload"
        assert (await client.get("/v1/billing/invoices")).status_code == 401


async def test_the_demo_history_gives_a_finished_month_to_close(
        db: Database, make_tenant: TenantFactory) -> None:
    from serve.demo import demo_history_month, seed_demo_history

    t = (await make_tenant(plan="professional")).tenant  # as the demo tenant is made
    await seed_demo_history(db, t.id)
    month = demo_history_month()
    [mine] = [r for r in await close_period(db, NoopProvider(), month, actor="test")
              if r.tenant == t.slug]
    async with db.platform() as uow:
        row, lines, _ = await get_invoice(uow.conn, str(mine.invoice_id), t.id)
    # professional: $199 base; the seeded month is over its calls, CPU-hours and storage
    assert [line.kind for _, line in lines] == ["base", "api_calls", "cpu_hours", "storage"]
    assert sum(line.amount_cents for _, line in lines) == row["total_cents"] > 19900
    assert [r.created for r in await close_period(db, NoopProvider(), month, actor="test")
            if r.tenant == t.slug] == [False]
