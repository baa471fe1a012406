"""Pick the billing provider from the settings: Stripe with a key, otherwise none."""

from __future__ import annotations

from billing.noop import NoopProvider
from billing.provider import BillingProvider
from tenancy.settings import Settings


def make_provider(settings: Settings) -> BillingProvider:
    """`StripeProvider` when ``ATP_STRIPE_API_KEY`` is set (it then needs the webhook
    secret too), else `NoopProvider`, whose invoices say they were not sent anywhere."""
    if settings.stripe_api_key is None:
        return NoopProvider()
    from billing.stripe_provider import StripeProvider

    return StripeProvider(settings.secret("stripe_api_key"),
                          settings.secret("stripe_webhook_secret"),
                          api_base=settings.stripe_api_base)
