"""Invoice documents: HTML escaping and self-containment, PDF text, money formatting."""

from __future__ import annotations

import io
import re
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from pypdf import PdfReader

from billing.rating import MonthUsage, Pricing, month_seconds, rate, total_cents
from billing.render import InvoiceDoc, format_money, render_html, render_pdf
from trading.errors import Internal, Invalid

D = Decimal
NOV = date(2026, 11, 1)
HOSTILE = "<script>alert(1)</script> & Co"

PRO = Pricing(plan="pro", plan_name="Pro", currency="usd", base_cents=4900,
              api_calls_included=100_000, api_call_overage_cents_per_1000=D("50"),
              cpu_hours_included=D("10"), cpu_hour_overage_cents=D("12.5"),
              storage_gb_included=D("5"), storage_gb_month_overage_cents=D("2.3"))
LINES = tuple(rate(PRO, MonthUsage(period=NOV, api_calls=2_350_001, cpu_seconds=D(15 * 3600 + 7),
                                   storage_gb_seconds=D(8) * month_seconds(NOV))))


def doc(**overrides: Any) -> InvoiceDoc:
    fields: dict[str, Any] = {
        "id": uuid.UUID(int=7), "number": "INV-2026-000042", "status": "finalised", "period": NOV,
        "tenant_name": "Acme Capital", "tenant_slug": "acme", "currency": "usd", "lines": LINES,
        "total_cents": total_cents(LINES), "issued_at": datetime(2026, 12, 1, 9, 30, tzinfo=UTC),
        "paid_at": None, "provider": "none", "provider_invoice_id": None}
    fields.update(overrides)
    return InvoiceDoc(**fields)


def pdf_text(document: InvoiceDoc) -> str:
    reader = PdfReader(io.BytesIO(render_pdf(document)))
    return "\n".join(page.extract_text() for page in reader.pages)


def test_the_fixture_has_every_kind_of_line() -> None:
    assert [line.kind for line in LINES] == ["base", "api_calls", "cpu_hours", "storage"]
    assert total_cents(LINES) == 4900 + 2251 * 50 + 63 + 7


@pytest.mark.parametrize(("cents", "currency", "text"), [
    (0, "usd", "$0.00"),
    (5, "usd", "$0.05"),
    (123_456, "usd", "$1,234.56"),
    (123_456, "USD", "$1,234.56"),
    (100_000_000, "usd", "$1,000,000.00"),
    (-250, "usd", "-$2.50"),
    (123_456, "eur", "1,234.56 EUR"),
    (99, "gbp", "0.99 GBP"),
])
def test_format_money(cents: int, currency: str, text: str) -> None:
    assert format_money(cents, currency) == text


def test_html_shows_the_header_every_line_and_the_total() -> None:
    html = render_html(doc())
    for text in ("AI Trading Platform", "INV-2026-000042", "finalised", "November 2026",
                 "Acme Capital", "acme", "2026-12-01", "00000000-0000-0000-0000-000000000007"):
        assert text in html
    for line in LINES:
        row = re.search(rf"<tr><td class=\"num\">{line.line_no}</td><td>(.*?)</tr>", html)
        assert row is not None
        assert line.description in row.group(1)
        assert format_money(line.amount_cents, "usd") in row.group(1)
    assert "$1,175.20" in html  # 4900 + 112550 + 63 + 7 cents
    assert format_money(total_cents(LINES), "usd") == "$1,175.20"


def test_html_shows_quantities_units_and_sub_cent_unit_prices() -> None:
    html = render_html(doc())
    assert "<td class=\"num\">2,251</td><td>1,000 calls</td><td class=\"num\">$0.50</td>" in html
    assert "<td class=\"num\">5.0019</td><td>CPU-hour</td><td class=\"num\">$0.125</td>" in html
    assert "<td>GB-month</td><td class=\"num\">$0.023</td>" in html


def test_html_escapes_every_value_and_runs_nothing() -> None:
    html = render_html(doc(tenant_name=HOSTILE, number="<b>1</b>"))
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; Co" in html
    assert "&lt;b&gt;1&lt;/b&gt;" in html
    assert "<script" not in html.lower()
    assert "<b>" not in html


def test_html_is_self_contained_and_printable() -> None:
    html = render_html(doc())
    assert html.startswith("<!DOCTYPE html>")
    assert html.rstrip().endswith("</html>")
    assert "<style>" in html and "@media print" in html
    for forbidden in ("http://", "https://", "<link", "src=", "url(", "@import", "javascript:"):
        assert forbidden not in html.lower()


def test_a_draft_has_no_number() -> None:
    html = render_html(doc(number=None, status="draft", issued_at=None))
    assert "DRAFT" in html
    assert "Issued" not in html


def test_the_payment_note_follows_the_provider() -> None:
    assert "Not sent to a payment provider: this platform runs without one." in render_html(doc())
    stripe = doc(provider="stripe", provider_invoice_id="in_1AbC", status="paid",
                 paid_at=datetime(2026, 12, 3, tzinfo=UTC))
    html = render_html(stripe)
    assert "Payment collected through Stripe (invoice in_1AbC)" in html
    assert "2026-12-03" in html
    assert "Payment collected through Stripe (invoice in_1AbC)" in pdf_text(stripe)


def test_a_void_invoice_is_marked_void() -> None:
    assert "VOID" not in render_html(doc())
    assert '<div class="void">VOID</div>' in render_html(doc(status="void"))
    assert "VOID" in pdf_text(doc(status="void"))
    assert "VOID" not in pdf_text(doc())


def test_an_invoice_without_lines_says_so() -> None:
    empty = doc(lines=(), total_cents=0)
    assert "No charges this month." in render_html(empty)
    assert "$0.00" in render_html(empty)
    assert "No charges this month." in pdf_text(empty)


def test_pdf_carries_the_number_every_line_and_the_same_total() -> None:
    data = render_pdf(doc())
    assert data.startswith(b"%PDF")
    text = pdf_text(doc())
    for needle in ("AI Trading Platform", "INV-2026-000042", "November 2026", "Acme Capital",
                   "Not sent to a payment provider: this platform runs without one."):
        assert needle in text
    for line in LINES:
        assert line.description in text
        assert format_money(line.amount_cents, "usd") in text
    assert "$1,175.20" in text


def test_pdf_is_deterministic() -> None:
    assert render_pdf(doc()) == render_pdf(doc())


def test_pdf_survives_text_outside_latin_1() -> None:
    text = pdf_text(doc(tenant_name=f"Zürich \u03a9mega \u2013 \u201cquotes\u201d \u20ac {HOSTILE}"))
    assert 'Zürich ?mega - "quotes" EUR' in text
    assert "<script>alert(1)</script> & Co" in text  # plain text in a PDF, nothing to run


def test_a_document_whose_total_is_not_its_lines_is_refused() -> None:
    with pytest.raises(Internal):
        doc(total_cents=total_cents(LINES) + 1)


@pytest.mark.parametrize(("field", "value"), [("status", "sent"), ("provider", "paypal")])
def test_unknown_status_or_provider_is_invalid(field: str, value: str) -> None:
    with pytest.raises(Invalid) as caught:
        doc(**{field: value})
    assert caught.value.field == field


def test_other_currencies_format_the_same_way_everywhere() -> None:
    document = doc(currency="eur")
    assert "1,175.20 EUR" in render_html(document)
    assert "1,175.20 EUR" in pdf_text(document)
    assert "0.125 EUR" in render_html(document)


def test_lines_render_in_their_numbered_order() -> None:
    html = render_html(doc())
    positions = [html.index(line.description) for line in LINES]
    assert positions == sorted(positions)
