"""No payment provider: invoices stay on the platform, marked "not sent to a payment provider"."""

from __future__ import annotations

from billing.provider import CustomerRef, InvoicePush, WebhookEvent
from trading.errors import Invalid


class NoopProvider:
    """The provider used when none is configured: mirrors nothing, receives no webhooks."""

    name = "none"

    async def ensure_customer(self, customer: CustomerRef, existing_id: str | None) -> str | None:
        """Return None: there is no customer to create."""
        return None

    async def ensure_subscription(self, customer_id: str, plan_code: str, plan_name: str,
                                  currency: str, existing_id: str | None) -> str | None:
        """Return None: there is no subscription to create."""
        return None

    async def push_invoice(self, customer_id: str, invoice: InvoicePush,
                           existing_id: str | None) -> str | None:
        """Return None: the invoice is not sent anywhere."""
        return None

    def parse_webhook(self, payload: bytes, signature: str | None) -> WebhookEvent:
        """Refuse: with no provider configured, no webhook can be genuine."""
        raise Invalid("no billing provider is configured to receive webhooks",
                      code="no_billing_provider")
