"""Render an invoice as a self-contained HTML page and as a PDF.

Both documents show the same content with the same strings: the platform name, the number
(or "DRAFT"), status, period, tenant, the numbered lines, the total and a note on how the
invoice is paid. A void invoice is marked VOID. Every value in the HTML is escaped; the
page has inline CSS only, no scripts and no external resources. The PDF uses the core
Helvetica font, so its text is reduced to latin-1, and has a fixed creation date, so the
same invoice renders to the same bytes.
"""

from __future__ import annotations

import unicodedata
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal

import jinja2
from fpdf import FPDF

from billing.rating import Line, month_label, total_cents
from trading.errors import Internal, Invalid

PLATFORM_NAME = "AI Trading Platform"
STATUSES = ("draft", "finalised", "paid", "void")
PROVIDERS = ("stripe", "none")
NO_PROVIDER_NOTE = "Not sent to a payment provider: this platform runs without one."
HEADINGS = ("No.", "Description", "Quantity", "Unit", "Unit price", "Amount")


@dataclass(frozen=True)
class InvoiceDoc:
    """Everything an invoice document shows; `total_cents` must equal the sum of the lines."""

    id: uuid.UUID
    number: str | None
    status: str
    period: date
    tenant_name: str
    tenant_slug: str
    currency: str
    lines: tuple[Line, ...]
    total_cents: int
    issued_at: datetime | None
    paid_at: datetime | None
    provider: str
    provider_invoice_id: str | None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise Invalid(f"status must be one of {', '.join(STATUSES)}", field="status")
        if self.provider not in PROVIDERS:
            raise Invalid(f"provider must be one of {', '.join(PROVIDERS)}", field="provider")
        if self.total_cents != total_cents(self.lines):
            raise Internal(f"invoice {self.id} total {self.total_cents} is not the sum of its lines")


def format_money(cents: int, currency: str) -> str:
    """Write whole cents as money: "$1,234.56" for usd, "1,234.56 EUR" for any other currency."""
    units, rest = divmod(abs(cents), 100)
    sign = "-" if cents < 0 else ""
    body = f"{units:,}.{rest:02d}"
    if currency.lower() == "usd":
        return f"{sign}${body}"
    return f"{sign}{body} {currency.upper()}"


def render_html(doc: InvoiceDoc) -> str:
    """Return the invoice as a complete, printable HTML page."""
    return _TEMPLATE.render(view=_view(doc))


def render_pdf(doc: InvoiceDoc) -> bytes:
    """Return the invoice as a one-or-more-page A4 PDF."""
    view = _view(doc)
    pdf = FPDF(format="A4")
    pdf.set_creation_date(_creation_date(doc))
    pdf.set_title(_latin1(f"{PLATFORM_NAME} invoice {view.number}"))
    pdf.set_author(PLATFORM_NAME)
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.add_page()

    pdf.set_font("Helvetica", "B", 18)
    pdf.cell(0, 10, PLATFORM_NAME, new_x="LMARGIN", new_y="NEXT")
    if view.void:
        pdf.set_text_color(180, 0, 0)
        pdf.set_font("Helvetica", "B", 32)
        pdf.cell(0, 14, "VOID", new_x="LMARGIN", new_y="NEXT")
        pdf.set_text_color(0, 0, 0)

    pdf.set_font("Helvetica", "", 11)
    for label, value in view.facts:
        pdf.set_font("Helvetica", "B", 11)
        pdf.cell(35, 6, _latin1(label))
        pdf.set_font("Helvetica", "", 11)
        pdf.cell(0, 6, _latin1(value), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(6)

    pdf.set_font("Helvetica", "", 10)
    with pdf.table(col_widths=(8, 44, 14, 14, 12, 14), text_align="LEFT") as table:
        heading = table.row()
        for text in HEADINGS:
            heading.cell(text, align="LEFT" if text in ("Description", "Unit") else "RIGHT")
        for line in view.rows:
            row = table.row()
            row.cell(line.no, align="RIGHT")
            row.cell(_latin1(line.description))
            row.cell(line.quantity, align="RIGHT")
            row.cell(_latin1(line.unit))
            row.cell(_latin1(line.unit_price), align="RIGHT")
            row.cell(_latin1(line.amount), align="RIGHT")
    if not view.rows:
        pdf.cell(0, 8, "No charges this month.", new_x="LMARGIN", new_y="NEXT")

    pdf.ln(4)
    pdf.set_font("Helvetica", "B", 12)
    pdf.cell(0, 8, _latin1(f"Total: {view.total}"), align="R", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)
    pdf.set_font("Helvetica", "", 10)
    pdf.multi_cell(0, 5, _latin1(view.note))
    return bytes(pdf.output())


@dataclass(frozen=True)
class _Row:
    no: str
    description: str
    quantity: str
    unit: str
    unit_price: str
    amount: str


@dataclass(frozen=True)
class _View:
    """The strings both documents show, formatted once."""

    number: str
    void: bool
    facts: tuple[tuple[str, str], ...]
    rows: tuple[_Row, ...]
    total: str
    note: str
    platform: str = PLATFORM_NAME


def _view(doc: InvoiceDoc) -> _View:
    number = doc.number or "DRAFT"
    facts = [
        ("Invoice", number),
        ("Status", doc.status.upper() if doc.status == "void" else doc.status),
        ("Period", month_label(doc.period)),
        ("Tenant", f"{doc.tenant_name} ({doc.tenant_slug})"),
        ("Currency", doc.currency.upper()),
    ]
    if doc.issued_at is not None:
        facts.append(("Issued", _day(doc.issued_at)))
    if doc.paid_at is not None:
        facts.append(("Paid", _day(doc.paid_at)))
    facts.append(("Reference", str(doc.id)))
    rows = tuple(_Row(str(line.line_no), line.description, _plain(line.quantity), line.unit,
                      _format_price(line.unit_price_cents, doc.currency),
                      format_money(line.amount_cents, doc.currency)) for line in doc.lines)
    return _View(number=number, void=doc.status == "void", facts=tuple(facts), rows=rows,
                 total=format_money(doc.total_cents, doc.currency), note=_note(doc))


def _note(doc: InvoiceDoc) -> str:
    if doc.provider == "none":
        return NO_PROVIDER_NOTE
    if doc.provider_invoice_id:
        return f"Payment collected through Stripe (invoice {doc.provider_invoice_id})"
    return "Payment collected through Stripe"


def _format_price(cents: Decimal, currency: str) -> str:
    """Write a unit price in cents as money, keeping sub-cent digits ("$0.005")."""
    units = cents.scaleb(-2)
    cents_only = units.quantize(Decimal("0.01"))
    body = format(cents_only if cents_only == units else units.normalize(), ",f")
    return f"${body}" if currency.lower() == "usd" else f"{body} {currency.upper()}"


def _plain(value: Decimal) -> str:
    """Write `value` without exponent or trailing zeros, with thousands separators."""
    return format(value.normalize(), ",f")


def _day(moment: datetime) -> str:
    """Write the UTC date of `moment` (a naive moment is taken as UTC)."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.date().isoformat()


def _creation_date(doc: InvoiceDoc) -> datetime:
    moment = doc.issued_at or datetime.combine(doc.period, time(), tzinfo=UTC)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


_REPLACEMENTS = str.maketrans({"\u2013": "-", "\u2014": "-", "\u2018": "'", "\u2019": "'",
                               "\u201c": '"', "\u201d": '"', "\u2026": "...", "\u20ac": "EUR"})


def _latin1(text: str) -> str:
    """Reduce `text` to latin-1 for the core fonts: common punctuation mapped, accents dropped
    where needed, anything else as "?"."""
    text = text.translate(_REPLACEMENTS)
    out = []
    for char in text:
        if ord(char) < 256:
            out.append(char)
            continue
        base = unicodedata.normalize("NFKD", char).encode("latin-1", "ignore").decode("latin-1")
        out.append(base or "?")
    return "".join(out)


_TEMPLATE = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string("""\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{ view.platform }} invoice {{ view.number }}</title>
<style>
  @page { size: A4; margin: 18mm; }
  body { font-family: Helvetica, Arial, sans-serif; color: #111; margin: 2em auto; max-width: 50em; }
  h1 { font-size: 1.6em; margin: 0 0 0.6em; }
  .void { color: #b00000; border: 4px solid #b00000; display: inline-block; padding: 0.1em 0.6em;
          font-size: 2.4em; font-weight: bold; letter-spacing: 0.2em; margin-bottom: 0.5em; }
  dl { display: grid; grid-template-columns: 8em 1fr; gap: 0.2em 1em; margin: 0 0 1.5em; }
  dt { font-weight: bold; }
  dd { margin: 0; }
  table { width: 100%; border-collapse: collapse; }
  th, td { border-bottom: 1px solid #ccc; padding: 0.35em 0.5em; text-align: left; }
  th.num, td.num { text-align: right; }
  tfoot td { font-weight: bold; border-bottom: none; font-size: 1.1em; }
  .note { margin-top: 1.5em; color: #444; }
  @media print { body { margin: 0; max-width: none; } }
</style>
</head>
<body>
<h1>{{ view.platform }}</h1>
{% if view.void %}<div class="void">VOID</div>{% endif %}
<dl>
{% for label, value in view.facts %}  <dt>{{ label }}</dt><dd>{{ value }}</dd>
{% endfor %}</dl>
<table>
  <thead><tr><th class="num">No.</th><th>Description</th><th class="num">Quantity</th><th>Unit</th>\
<th class="num">Unit price</th><th class="num">Amount</th></tr></thead>
  <tbody>
{% for line in view.rows %}    <tr><td class="num">{{ line.no }}</td><td>{{ line.description }}</td>\
<td class="num">{{ line.quantity }}</td><td>{{ line.unit }}</td><td class="num">{{ line.unit_price }}</td>\
<td class="num">{{ line.amount }}</td></tr>
{% else %}    <tr><td colspan="6">No charges this month.</td></tr>
{% endfor %}  </tbody>
  <tfoot><tr><td colspan="5" class="num">Total</td><td class="num">{{ view.total }}</td></tr></tfoot>
</table>
<p class="note">{{ view.note }}</p>
</body>
</html>
""")
