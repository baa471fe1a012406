"""Usage and invoices over HTTP through the Serve gateway (no payment provider here)."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import httpx
from sqlalchemy import text

from billing import ledger
from billing.invoices import close_period
from billing.ledger import Sample
from billing.noop import NoopProvider
from tenancy.db import Database
from tests.conftest import TenantFactory


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_invoices_as_json_html_and_pdf_for_their_tenant_only(
        http: httpx.AsyncClient, db: Database, make_tenant: TenantFactory) -> None:
    t, other = await make_tenant(plan="starter"), await make_tenant()
    start = datetime(2024, 9, 3, tzinfo=UTC)
    async with db.platform() as uow:
        await uow.conn.execute(text(
            "UPDATE platform.tenants SET created_at = '2024-09-01' WHERE id = :t"),
            {"t": t.tenant.id})
        await ledger.record(uow.conn, [
            Sample(t.tenant.id, "api_calls", start, start + timedelta(seconds=15), "test",
                   Decimal(10_001)),
            Sample(t.tenant.id, "cpu_seconds", start, start + timedelta(seconds=15), "test",
                   Decimal(3600 * 150))])
        await uow.commit()
    await close_period(db, NoopProvider(), date(2024, 9, 1), actor="test")
    key = bearer(t.api_key)
    [listed] = (await http.get("/v1/billing/invoices", headers=key)).json()
    assert listed["period"] == "2024-09" and listed["status"] == "finalised"
    assert listed["total_cents"] == 4900 + 50 + 250 and listed["provider"] == "none"
    got = (await http.get(f"/v1/billing/invoices/{listed['id']}", headers=key)).json()
    assert [(li["line_no"], li["kind"], li["amount_cents"]) for li in got["lines"]] == [
        (1, "base", 4900), (2, "api_calls", 50), (3, "cpu_hours", 250)]
    assert sum(li["amount_cents"] for li in got["lines"]) == got["total_cents"]
    html = await http.get(f"/v1/billing/invoices/{listed['id']}.html", headers=key)
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert "$52.00" in html.text and listed["number"] in html.text
    assert "default-src 'none'" in html.headers["content-security-policy"]
    pdf = await http.get(f"/v1/billing/invoices/{listed['id']}.pdf", headers=key)
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    assert pdf.headers["content-type"] == "application/pdf"
    # Another tenant: nothing listed, and the invoice is 404 in every form.
    assert (await http.get("/v1/billing/invoices", headers=bearer(other.api_key))).json() == []
    for suffix in ("", ".html", ".pdf"):
        r = await http.get(f"/v1/billing/invoices/{listed['id']}{suffix}",
                           headers=bearer(other.api_key))
        assert r.status_code == 404, r.text
    assert (await http.get(f"/v1/billing/invoices/{uuid.uuid4()}", headers=key)).status_code == 404
    assert (await http.get("/v1/billing/invoices/not-an-id", headers=key)).status_code == 404


async def test_usage_for_the_tenant_and_the_operator(
        http: httpx.AsyncClient, db: Database, make_tenant: TenantFactory,
        operator_headers: dict[str, str]) -> None:
    a, b = await make_tenant(), await make_tenant()
    start = datetime(2024, 10, 30, 23, 0, tzinfo=UTC)
    async with db.platform() as uow:
        await ledger.record(uow.conn, [
            Sample(a.tenant.id, "cpu_seconds", start, start + timedelta(seconds=15), "t", Decimal(2)),
            Sample(a.tenant.id, "cpu_seconds", start + timedelta(days=2),
                   start + timedelta(days=2, seconds=15), "t", Decimal(3)),
            Sample(b.tenant.id, "cpu_seconds", start, start + timedelta(seconds=15), "t", Decimal(7))])
        await uow.commit()
    query = "from=2024-10-01&to=2024-12-01"
    days = (await http.get(f"/v1/usage?{query}", headers=bearer(a.api_key))).json()
    assert [(r["period"], r["quantity"]) for r in days["rows"]] == [
        ("2024-10-30", "2"), ("2024-11-01", "3")]
    assert days["totals"] == {"cpu_seconds": "5"}
    months = (await http.get(f"/v1/usage?{query}&granularity=month",
                             headers=bearer(a.api_key))).json()
    assert [(r["period"], r["quantity"]) for r in months["rows"]] == [
        ("2024-10-01", "2"), ("2024-11-01", "3")]
    admin = (await http.get(f"/v1/admin/usage?{query}&granularity=month",
                            headers=operator_headers)).json()
    mine = {(r["tenant"], r["period"]): r["quantity"] for r in admin["rows"]
            if r["tenant"] in (a.tenant.slug, b.tenant.slug)}
    assert mine == {(a.tenant.slug, "2024-10-01"): "2", (a.tenant.slug, "2024-11-01"): "3",
                    (b.tenant.slug, "2024-10-01"): "7"}
    one = (await http.get(f"/v1/admin/usage?{query}&tenant={b.tenant.slug}",
                          headers=operator_headers)).json()
    assert {r["tenant"] for r in one["rows"]} == {b.tenant.slug}
    # Bad input names the parameter; tenants cannot use the operator's view.
    for bad, field in (("from=2024-13-01", "from"), ("from=2024-11-01&to=2024-10-01", "to"),
                       ("granularity=year", "granularity")):
        r = await http.get(f"/v1/usage?{bad}", headers=bearer(a.api_key))
        assert r.status_code == 422 and r.json()["error"]["field"] == field, (bad, r.text)
    assert (await http.get("/v1/admin/usage", headers=bearer(a.api_key))).status_code == 403
    assert (await http.get("/v1/admin/usage?tenant=nope-nope",
                           headers=operator_headers)).status_code == 404
