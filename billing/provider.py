"""The billing provider port: what the platform asks of a payment provider.

Pure: no Ray, database or web. The platform rates usage and writes its own invoices; a
provider (Stripe, or none) only mirrors them for collection and reports payments back.

Every method is idempotent. ``existing_id`` is the provider id stored after the previous
call (None the first time); a retry after a crash, before that id was stored, must not create
a second customer, subscription, invoice item or invoice. Failures of the provider raise
`Unavailable` (code ``billing_provider_unavailable``), never a vendor exception, and no
message carries a secret.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date
from typing import Literal, Protocol

from trading.errors import Invalid

PROVIDER_UNAVAILABLE = "billing_provider_unavailable"
TOTAL_MISMATCH = "billing_total_mismatch"

WebhookKind = Literal["payment_succeeded", "payment_failed", "other"]


@dataclass(frozen=True)
class CustomerRef:
    """A tenant as the provider sees it."""

    tenant_id: uuid.UUID
    slug: str
    name: str
    email: str | None


@dataclass(frozen=True)
class LinePush:
    """One line of our invoice, in the invoice's currency."""

    line_id: uuid.UUID
    description: str
    amount_cents: int

    def __post_init__(self) -> None:
        if self.amount_cents < 0:
            raise Invalid("a line amount cannot be negative", field="amount_cents")


@dataclass(frozen=True)
class InvoicePush:
    """One of our monthly invoices; `total_cents` is the sum of its lines."""

    invoice_id: uuid.UUID
    number: str
    period: date
    currency: str
    total_cents: int
    lines: tuple[LinePush, ...]

    def __post_init__(self) -> None:
        if len(self.currency) != 3 or not self.currency.isalpha():
            raise Invalid("a currency is a 3-letter ISO code", field="currency")
        if self.total_cents != sum(line.amount_cents for line in self.lines):
            raise Invalid("the total must be the sum of the lines", field="total_cents")


@dataclass(frozen=True)
class WebhookEvent:
    """A verified provider event, reduced to what billing acts on."""

    id: str
    kind: WebhookKind
    raw_type: str
    provider_invoice_id: str | None
    customer_id: str | None


class BillingProvider(Protocol):
    """A payment provider that mirrors tenants and invoices and reports payments."""

    name: str  # "stripe" or "none"

    async def ensure_customer(self, customer: CustomerRef, existing_id: str | None) -> str | None:
        """Return the provider's customer for this tenant, creating it at most once."""
        ...

    async def ensure_subscription(self, customer_id: str, plan_code: str, plan_name: str,
                                  currency: str, existing_id: str | None) -> str | None:
        """Return the customer's one subscription, on this plan, creating or switching it."""
        ...

    async def push_invoice(self, customer_id: str, invoice: InvoicePush,
                           existing_id: str | None) -> str | None:
        """Mirror our invoice for collection, exactly once; return the provider's invoice id."""
        ...

    def parse_webhook(self, payload: bytes, signature: str | None) -> WebhookEvent:
        """Verify a webhook's signature and read it; raise `Invalid` if it is not genuine."""
        ...
