"""Stripe as the billing provider, through the official (synchronous) `stripe` library.

Every call runs in a worker thread (`asyncio.to_thread`); a `stripe.StripeError` becomes
`Unavailable` (code ``billing_provider_unavailable``) whose message names the error class,
HTTP status and Stripe code only, never the API key, the webhook secret or Stripe's text.

``ensure_customer``
    One customer per tenant, metadata ``{"tenant_id", "slug"}``. A stored id is retrieved;
    if it still exists (and is not another tenant's: `Internal`) it is returned, its name and
    email brought up to date. Without a usable id, a customer with the tenant's email and
    ``metadata.tenant_id`` is reused; otherwise one is created with the idempotency key
    ``atp-customer-<tenant_id>`` (``...-after-<lost id>`` when the stored one was deleted).
    So a retry finds its customer again by email; without an email only the idempotency key
    guards it, which Stripe keeps 24 hours (and localstripe ignores: there a retry without
    an email creates a second customer).
``ensure_subscription``
    Plan membership only. A legacy Plan ``atp-plan-<code>-<currency>`` (product
    ``atp-plan-<code>``), monthly, **amount 0**, is found again by its id (a deterministic id
    does what a Price ``lookup_key`` would, and localstripe has Plans but no Prices); every
    charge, the base fee included, comes from the platform's invoices (``push_invoice``), so
    nothing is billed twice. The stored subscription, else the customer's live subscription
    carrying ``metadata.atp_plan_code``, is kept and switched in place to the plan
    (``proration_behavior="none"``; cancelling would stop Stripe collecting the customer's
    open invoices); only if there is none is one created. Call it before the first
    ``push_invoice``: a new subscription's first invoice takes the customer's pending items.
``push_invoice``
    A stored invoice id is returned as it is (finalised if still a draft), items untouched.
    Otherwise the customer's invoice for ours (``metadata.invoice_id``, or a line's, because
    localstripe drops an invoice's metadata on creation) is looked for and, if found, used so.
    Else each line becomes a pending invoice item (amount, currency, description, metadata
    ``{"line_id", "invoice_id", "number"}``, idempotency key ``atp-line-<line_id>``) unless
    one with that ``line_id`` is already pending; then one invoice takes the pending items
    (idempotency key ``atp-invoice-<invoice_id>``, metadata ``{"invoice_id", "number"}``).
    Its total must equal ours, checked while it is still a draft (else `Unavailable`, code
    ``billing_total_mismatch``, and it stays a draft); then it is finalised with
    ``auto_advance`` so Stripe collects it and reports the payment by webhook. Pending items
    are listed without Stripe's ``pending`` filter (localstripe refuses it) and are used, not
    added to a draft by ``invoice=`` (localstripe ignores that): a crash between the items
    and the invoice leaves them pending until the retry.
``parse_webhook``
    ``stripe.Webhook.construct_event`` with the webhook secret (timestamp tolerance 5 min);
    ``invoice.payment_succeeded`` and ``invoice.paid`` are ``payment_succeeded``,
    ``invoice.payment_failed`` is ``payment_failed``, anything else ``other``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any, ParamSpec, TypeVar

import stripe

from billing.provider import (
    PROVIDER_UNAVAILABLE,
    TOTAL_MISMATCH,
    CustomerRef,
    InvoicePush,
    WebhookEvent,
    WebhookKind,
)
from trading.errors import Internal, Invalid, Unavailable

P = ParamSpec("P")
T = TypeVar("T")
S = TypeVar("S", bound=stripe.StripeObject)

PAGE = 100
PLAN_KEY = "atp_plan_code"
ENDED = frozenset({"canceled", "incomplete_expired"})
KINDS: dict[str, WebhookKind] = {
    "invoice.payment_succeeded": "payment_succeeded",
    "invoice.paid": "payment_succeeded",
    "invoice.payment_failed": "payment_failed",
}


class StripeProvider:
    """The `BillingProvider` on Stripe (or on an emulator at `api_base`)."""

    name = "stripe"

    def __init__(self, api_key: str, webhook_secret: str, api_base: str | None = None) -> None:
        self._args = (api_key, webhook_secret, api_base)
        self._webhook_secret = webhook_secret
        self._stripe = stripe.StripeClient(
            api_key, base_addresses={"api": api_base} if api_base else {}, max_network_retries=2)

    def __reduce__(self) -> tuple[Any, ...]:
        return (StripeProvider, self._args)

    def __repr__(self) -> str:
        return f"StripeProvider(api_base={self._args[2]!r})"

    async def ensure_customer(self, customer: CustomerRef, existing_id: str | None) -> str | None:
        """Return the tenant's Stripe customer, creating it at most once."""
        return await _run(self._ensure_customer, customer, existing_id)

    async def ensure_subscription(self, customer_id: str, plan_code: str, plan_name: str,
                                  currency: str, existing_id: str | None) -> str | None:
        """Return the customer's subscription to the zero-priced plan, created or switched."""
        return await _run(self._ensure_subscription, customer_id, plan_code, plan_name,
                          currency.lower(), existing_id)

    async def push_invoice(self, customer_id: str, invoice: InvoicePush,
                           existing_id: str | None) -> str | None:
        """Mirror our invoice as one finalised Stripe invoice; return its id."""
        return await _run(self._push_invoice, customer_id, invoice, existing_id)

    def parse_webhook(self, payload: bytes, signature: str | None) -> WebhookEvent:
        """Verify a Stripe webhook and read the event; raise `Invalid` if it is not genuine."""
        if not signature:
            raise Invalid("the Stripe signature is missing", code="bad_signature",
                          field="Stripe-Signature")
        try:
            event = stripe.Webhook.construct_event(payload, signature, self._webhook_secret)
            data = event.to_dict()
        except stripe.SignatureVerificationError as err:
            raise Invalid("the Stripe signature does not match", code="bad_signature",
                          field="Stripe-Signature") from err
        except (ValueError, AttributeError) as err:  # not UTF-8 JSON, or not a JSON object
            raise Invalid("the webhook body is not a Stripe event", code="bad_payload") from err
        kind, body = data.get("type"), data.get("data")
        obj = body.get("object") if isinstance(body, dict) else None
        if not isinstance(data.get("id"), str) or not isinstance(kind, str) or not isinstance(obj, dict):
            raise Invalid("the webhook body is not a Stripe event", code="bad_payload")
        customer = obj.get("id") if obj.get("object") == "customer" else obj.get("customer")
        invoice = obj.get("id") if obj.get("object") == "invoice" else obj.get("invoice")
        return WebhookEvent(id=data["id"], kind=KINDS.get(kind, "other"), raw_type=kind,
                            provider_invoice_id=_id_of(invoice), customer_id=_id_of(customer))

    # --- customers -------------------------------------------------------------------------

    def _ensure_customer(self, customer: CustomerRef, existing_id: str | None) -> str:
        tenant = str(customer.tenant_id)
        key = f"atp-customer-{tenant}"
        found = None
        if existing_id is not None:
            found = _retrieve(self._stripe.v1.customers.retrieve, existing_id)
            if found is None:
                key = f"{key}-after-{existing_id}"
            elif _meta(found).get("tenant_id", tenant) != tenant:
                raise Internal(f"Stripe customer {existing_id} belongs to another tenant",
                               code="billing_customer_mismatch")
        if found is None and customer.email:
            matches = _all(self._stripe.v1.customers.list(params={"email": customer.email, "limit": PAGE}))
            found = min((c for c in matches if _meta(c).get("tenant_id") == tenant),
                        key=lambda c: c.created, default=None)
        if found is None:
            created = self._stripe.v1.customers.create(
                params={"name": customer.name, "metadata": {"tenant_id": tenant, "slug": customer.slug},
                        **({"email": customer.email} if customer.email else {})},
                options={"idempotency_key": key})
            return created.id
        if (found.name, found.email or None) != (customer.name, customer.email):
            self._stripe.v1.customers.update(found.id, params={
                "name": customer.name, "email": customer.email or ""})
        return found.id

    # --- plans and subscriptions -----------------------------------------------------------

    def _ensure_plan(self, code: str, name: str, currency: str) -> str:
        plan_id, product_id = f"atp-plan-{code}-{currency}", f"atp-plan-{code}"
        plan = _retrieve(self._stripe.v1.plans.retrieve, plan_id)
        if plan is None:
            _create_or_get(lambda: self._stripe.v1.products.create(params={
                "id": product_id, "name": name, "metadata": {PLAN_KEY: code}}),
                self._stripe.v1.products.retrieve, product_id)
            plan = _create_or_get(lambda: self._stripe.v1.plans.create(params={
                "id": plan_id, "product": product_id, "amount": 0, "currency": currency,
                "interval": "month", "nickname": name, "metadata": {PLAN_KEY: code}}),
                self._stripe.v1.plans.retrieve, plan_id)
        if plan.amount != 0:
            raise Internal(f"Stripe plan {plan_id} is not zero-priced", code="billing_plan_priced")
        return plan_id

    def _ensure_subscription(self, customer_id: str, code: str, name: str, currency: str,
                             existing_id: str | None) -> str:
        plan_id = self._ensure_plan(code, name, currency)
        sub = None
        if existing_id is not None:
            sub = _retrieve(self._stripe.v1.subscriptions.retrieve, existing_id)
            if sub is not None and (sub.customer != customer_id or sub.status in ENDED):
                sub = None
        if sub is None:
            ours = [s for s in _all(self._stripe.v1.subscriptions.list(
                        params={"customer": customer_id, "limit": PAGE}))
                    if PLAN_KEY in _meta(s) and s.status not in ENDED]
            ours.sort(key=lambda s: (_plan_of(s) != plan_id, s.created))
            sub = ours[0] if ours else None
        if sub is None:
            created = self._stripe.v1.subscriptions.create(
                params={"customer": customer_id, "items": [{"plan": plan_id}],
                        "metadata": {PLAN_KEY: code}},
                options={"idempotency_key": f"atp-subscription-{customer_id}-{plan_id}"
                                            f"-after-{existing_id or 'none'}"})
            return created.id
        if _plan_of(sub) != plan_id:
            item = sub["items"].data[0]
            self._stripe.v1.subscriptions.update(sub.id, params={
                "items": [{"id": item.id, "plan": plan_id}], "proration_behavior": "none",
                "metadata": {PLAN_KEY: code}})
        return sub.id

    # --- invoices --------------------------------------------------------------------------

    def _push_invoice(self, customer_id: str, invoice: InvoicePush, existing_id: str | None) -> str:
        ours = {"invoice_id": str(invoice.invoice_id), "number": invoice.number}
        found = _retrieve(self._stripe.v1.invoices.retrieve, existing_id) if existing_id else None
        if found is None:
            found = self._find_invoice(customer_id, ours["invoice_id"])
        if found is None:
            self._push_items(customer_id, invoice, ours)
            found = self._stripe.v1.invoices.create(
                params={"customer": customer_id, "pending_invoice_items_behavior": "include",
                        "description": f"{invoice.number}, {invoice.period:%B %Y}", "metadata": ours},
                options={"idempotency_key": f"atp-invoice-{ours['invoice_id']}"})
        stripe_id: str = found["id"]
        if _meta(found).get("invoice_id") != ours["invoice_id"]:
            found = self._stripe.v1.invoices.update(stripe_id, params={"metadata": ours})
        if found.total != invoice.total_cents:
            raise Unavailable(f"Stripe invoice {stripe_id} totals {found.total} cents, ours "
                              f"({invoice.number}) {invoice.total_cents}", code=TOTAL_MISMATCH)
        if found.status == "draft":
            self._stripe.v1.invoices.finalize_invoice(stripe_id, params={"auto_advance": True})
        return stripe_id

    def _find_invoice(self, customer_id: str, invoice_id: str) -> stripe.Invoice | None:
        for candidate in _all(self._stripe.v1.invoices.list(params={"customer": customer_id, "limit": PAGE})):
            lines = candidate.lines.data if candidate.lines else []
            if invoice_id in {_meta(candidate).get("invoice_id"),
                              *(_meta(line).get("invoice_id") for line in lines)}:
                return candidate
        return None

    def _push_items(self, customer_id: str, invoice: InvoicePush, ours: dict[str, str]) -> None:
        pending = {_meta(item).get("line_id") for item in _all(self._stripe.v1.invoice_items.list(
                       params={"customer": customer_id, "limit": PAGE})) if item.invoice is None}
        for line in invoice.lines:
            if str(line.line_id) in pending:
                continue
            self._stripe.v1.invoice_items.create(
                params={"customer": customer_id, "amount": line.amount_cents,
                        "currency": invoice.currency.lower(), "description": line.description,
                        "metadata": {"line_id": str(line.line_id), **ours}},
                options={"idempotency_key": f"atp-line-{line.line_id}"})


async def _run(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except stripe.StripeError as err:
        raise Unavailable(
            f"Stripe did not complete the request ({type(err).__name__}, HTTP "
            f"{err.http_status or '-'}, code {err.code or '-'})", code=PROVIDER_UNAVAILABLE) from err


def _retrieve(fetch: Callable[[str], S], object_id: str) -> S | None:
    """Return the object, or None if Stripe does not have it (any more)."""
    try:
        found = fetch(object_id)
    except stripe.StripeError as err:
        if err.http_status == 404:
            return None
        raise
    return None if found.get("deleted") else found


def _create_or_get(create: Callable[[], S], fetch: Callable[[str], S], object_id: str) -> S:
    """Create an object with a chosen id; if that fails because it exists, return it."""
    try:
        return create()
    except stripe.StripeError:
        found = _retrieve(fetch, object_id)
        if found is None:
            raise
        return found


def _all(page: stripe.ListObject[S]) -> Iterable[S]:
    return page.auto_paging_iter()


def _plan_of(sub: stripe.Subscription) -> str | None:
    items = sub["items"].data
    return items[0].plan.id if len(items) == 1 and items[0].plan else None


def _meta(obj: stripe.StripeObject) -> dict[str, Any]:
    return obj.get("metadata") or {}


def _id_of(value: object) -> str | None:
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) else None
