"""billing.stripe_provider against localstripe, the Stripe API emulator (no mocks); NoopProvider."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from billing.noop import NoopProvider
from billing.provider import BillingProvider, CustomerRef, InvoicePush, LinePush
from billing.stripe_provider import StripeProvider
from tests.conftest import wait_for
from tests.stripe_emulator import (
    API_KEY,
    configure_webhook,
    free_port,
    pay_invoice,
    request,
    set_default_card,
    set_default_failing_sepa_debit,
)
from trading.errors import Internal, Invalid, Unavailable

SECRET = "whsec_atp_test"


@pytest.fixture
def stripe_provider(localstripe: str) -> StripeProvider:
    return StripeProvider(API_KEY, SECRET, api_base=localstripe)


def tenant(email: str | None = "auto", name: str = "Acme Trading") -> CustomerRef:
    tenant_id = uuid.uuid4()
    if email == "auto":
        email = f"billing-{tenant_id.hex[:8]}@example.com"
    return CustomerRef(tenant_id=tenant_id, slug=f"t-{tenant_id.hex[:8]}", name=name, email=email)


def an_invoice(*amounts: int, currency: str = "eur") -> InvoicePush:
    lines = tuple(LinePush(uuid.uuid4(), f"line {i}", amount) for i, amount in enumerate(amounts, 1))
    return InvoicePush(invoice_id=uuid.uuid4(), number=f"ATP-{uuid.uuid4().hex[:6]}",
                       period=date(2031, 5, 1), currency=currency, total_cents=sum(amounts),
                       lines=lines)


async def subscribed_customer(provider: StripeProvider, plan: str = "pro") -> str:
    customer_id = await provider.ensure_customer(tenant(), None)
    assert customer_id is not None
    await provider.ensure_subscription(customer_id, plan, plan.title(), "EUR", None)
    return customer_id


def invoices_of(base: str, customer_id: str) -> list[dict[str, Any]]:
    return list(request(base, "GET", "/v1/invoices", customer=customer_id, limit=100)["data"])


def pending_items_of(base: str, customer_id: str) -> list[dict[str, Any]]:
    listed = request(base, "GET", "/v1/invoiceitems", customer=customer_id, limit=100)["data"]
    return [item for item in listed if item["invoice"] is None]


def sign(payload: bytes, secret: str = SECRET, at: int | None = None) -> str:
    at = int(time.time()) if at is None else at
    digest = hmac.new(secret.encode(), f"{at}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={at},v1={digest}"


def event(kind: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"id": f"evt_{uuid.uuid4().hex[:12]}", "object": "event", "type": kind,
                       "data": {"object": obj}}).encode()


# --- customers ---------------------------------------------------------------------------------


async def test_a_customer_is_created_once_per_tenant(stripe_provider: StripeProvider,
                                                     localstripe: str) -> None:
    ref = tenant()
    first = await stripe_provider.ensure_customer(ref, None)
    assert first is not None
    assert await stripe_provider.ensure_customer(ref, first) == first
    # the stored id lost (a crash before it was saved): found again by email and tenant id
    assert await stripe_provider.ensure_customer(ref, None) == first
    found = request(localstripe, "GET", "/v1/customers", email=ref.email, limit=100)["data"]
    assert [c["id"] for c in found] == [first]
    assert found[0]["metadata"] == {"tenant_id": str(ref.tenant_id), "slug": ref.slug}
    assert found[0]["name"] == ref.name


async def test_without_an_email_only_the_idempotency_key_guards_a_lost_id(
        stripe_provider: StripeProvider) -> None:
    ref = tenant(email=None)
    first = await stripe_provider.ensure_customer(ref, None)
    assert await stripe_provider.ensure_customer(ref, first) == first
    # Stripe would answer the same idempotency key with the first customer (for 24 hours);
    # localstripe ignores idempotency keys, so it makes a second one: the documented gap.
    second = await stripe_provider.ensure_customer(ref, None)
    assert second not in (None, first)


async def test_a_renamed_tenant_is_updated_and_a_deleted_customer_recreated(
        stripe_provider: StripeProvider, localstripe: str) -> None:
    ref = tenant()
    first = await stripe_provider.ensure_customer(ref, None)
    renamed = CustomerRef(ref.tenant_id, ref.slug, "Acme Capital", "ops@example.com")
    assert await stripe_provider.ensure_customer(renamed, first) == first
    stored = request(localstripe, "GET", f"/v1/customers/{first}")
    assert (stored["name"], stored["email"]) == ("Acme Capital", "ops@example.com")
    request(localstripe, "DELETE", f"/v1/customers/{first}")
    again = await stripe_provider.ensure_customer(renamed, first)
    assert again not in (None, first)
    recreated = request(localstripe, "GET", f"/v1/customers/{again}")
    assert recreated["metadata"]["tenant_id"] == str(ref.tenant_id)


async def test_another_tenants_customer_is_refused(stripe_provider: StripeProvider) -> None:
    theirs = await stripe_provider.ensure_customer(tenant(), None)
    with pytest.raises(Internal) as raised:
        await stripe_provider.ensure_customer(tenant(), theirs)
    assert raised.value.code == "billing_customer_mismatch"


# --- subscriptions -----------------------------------------------------------------------------


async def test_the_subscription_is_to_a_zero_priced_monthly_plan(stripe_provider: StripeProvider,
                                                                 localstripe: str) -> None:
    customer_id = await stripe_provider.ensure_customer(tenant(), None)
    assert customer_id is not None
    sub_id = await stripe_provider.ensure_subscription(customer_id, "pro", "Professional", "EUR", None)
    assert sub_id is not None
    sub = request(localstripe, "GET", f"/v1/subscriptions/{sub_id}")
    assert sub["status"] == "active"
    assert sub["customer"] == customer_id
    plan = sub["items"]["data"][0]["plan"]
    assert (plan["id"], plan["amount"], plan["currency"], plan["interval"]) == (
        "atp-plan-pro-eur", 0, "eur", "month")
    assert plan["product"] == "atp-plan-pro"
    # stored id, lost id: the same subscription, and nothing was charged
    for stored in (sub_id, None):
        again = await stripe_provider.ensure_subscription(customer_id, "pro", "Professional", "EUR", stored)
        assert again == sub_id
    listed = request(localstripe, "GET", "/v1/subscriptions", customer=customer_id)["data"]
    assert [s["id"] for s in listed] == [sub_id]
    assert all(inv["total"] == 0 for inv in invoices_of(localstripe, customer_id))


async def test_a_plan_change_switches_the_subscription_in_place(stripe_provider: StripeProvider,
                                                                localstripe: str) -> None:
    customer_id = await stripe_provider.ensure_customer(tenant(), None)
    assert customer_id is not None
    sub_id = await stripe_provider.ensure_subscription(customer_id, "starter", "Starter", "eur", None)
    assert await stripe_provider.push_invoice(customer_id, an_invoice(900), None)
    switched = await stripe_provider.ensure_subscription(customer_id, "pro", "Professional", "eur", sub_id)
    assert switched == sub_id
    sub = request(localstripe, "GET", f"/v1/subscriptions/{sub_id}")
    assert sub["items"]["data"][0]["plan"]["id"] == "atp-plan-pro-eur"
    assert pending_items_of(localstripe, customer_id) == []  # no proration waiting to be billed
    assert await stripe_provider.push_invoice(customer_id, an_invoice(1500), None)


# --- invoices ----------------------------------------------------------------------------------


async def test_push_invoice_makes_one_item_per_line_and_one_finalised_invoice(
        stripe_provider: StripeProvider, localstripe: str) -> None:
    customer_id = await subscribed_customer(stripe_provider)
    before = {inv["id"] for inv in invoices_of(localstripe, customer_id)}
    ours = an_invoice(2900, 1234, 0)
    pushed = await stripe_provider.push_invoice(customer_id, ours, None)
    assert pushed is not None
    invoice = request(localstripe, "GET", f"/v1/invoices/{pushed}")
    assert invoice["status"] == "open"
    assert invoice["total"] == ours.total_cents == 4134
    assert invoice["currency"] == "eur"
    assert invoice["metadata"] == {"invoice_id": str(ours.invoice_id), "number": ours.number}
    items = [line for line in invoice["lines"]["data"] if line["type"] == "invoiceitem"]
    assert sorted((i["metadata"]["line_id"], i["amount"], i["description"]) for i in items) == sorted(
        (str(line.line_id), line.amount_cents, line.description) for line in ours.lines)
    assert all(i["metadata"]["invoice_id"] == str(ours.invoice_id) for i in items)
    # retries: after a crash before the id was stored, and with it: nothing new anywhere
    assert await stripe_provider.push_invoice(customer_id, ours, None) == pushed
    assert await stripe_provider.push_invoice(customer_id, ours, pushed) == pushed
    after = {inv["id"] for inv in invoices_of(localstripe, customer_id)}
    assert after - before == {pushed}
    assert pending_items_of(localstripe, customer_id) == []
    assert len(request(localstripe, "GET", f"/v1/invoices/{pushed}")["lines"]["data"]) == len(
        invoice["lines"]["data"])


async def test_a_retry_after_a_crash_among_the_items_adds_each_line_once(
        stripe_provider: StripeProvider, localstripe: str) -> None:
    customer_id = await subscribed_customer(stripe_provider)
    ours = an_invoice(500, 700)
    first = ours.lines[0]  # the item the crashed attempt had made
    request(localstripe, "POST", "/v1/invoiceitems", customer=customer_id, amount=first.amount_cents,
            currency="eur", description=first.description,
            **{"metadata[line_id]": str(first.line_id), "metadata[invoice_id]": str(ours.invoice_id),
               "metadata[number]": ours.number})
    pushed = await stripe_provider.push_invoice(customer_id, ours, None)
    invoice = request(localstripe, "GET", f"/v1/invoices/{pushed}")
    line_ids = [line["metadata"]["line_id"] for line in invoice["lines"]["data"]
                if line["type"] == "invoiceitem"]
    assert sorted(line_ids) == sorted(str(line.line_id) for line in ours.lines)
    assert invoice["total"] == 1200


async def test_a_retry_finds_the_invoice_a_crashed_attempt_created(
        stripe_provider: StripeProvider, localstripe: str) -> None:
    customer_id = await subscribed_customer(stripe_provider)
    ours = an_invoice(300, 400)
    for line in ours.lines:  # the crashed attempt made the items and the invoice, then died
        request(localstripe, "POST", "/v1/invoiceitems", customer=customer_id,
                amount=line.amount_cents, currency="eur", description=line.description,
                **{"metadata[line_id]": str(line.line_id), "metadata[invoice_id]": str(ours.invoice_id),
                   "metadata[number]": ours.number})
    draft = request(localstripe, "POST", "/v1/invoices", customer=customer_id)
    assert draft["metadata"] == {}  # localstripe drops metadata given on creation anyway
    count = len(invoices_of(localstripe, customer_id))
    assert await stripe_provider.push_invoice(customer_id, ours, None) == draft["id"]
    invoice = request(localstripe, "GET", f"/v1/invoices/{draft['id']}")
    assert (invoice["status"], invoice["total"]) == ("open", 700)
    assert invoice["metadata"]["invoice_id"] == str(ours.invoice_id)
    assert len(invoices_of(localstripe, customer_id)) == count
    assert pending_items_of(localstripe, customer_id) == []


async def test_a_total_that_differs_from_ours_is_refused_and_left_a_draft(
        stripe_provider: StripeProvider, localstripe: str) -> None:
    customer_id = await subscribed_customer(stripe_provider)
    request(localstripe, "POST", "/v1/invoiceitems", customer=customer_id, amount=999,
            currency="eur", description="added by hand in the dashboard")
    with pytest.raises(Unavailable) as raised:
        await stripe_provider.push_invoice(customer_id, an_invoice(100), None)
    assert raised.value.code == "billing_total_mismatch"
    drafts = [inv for inv in invoices_of(localstripe, customer_id) if inv["status"] == "draft"]
    assert [inv["total"] for inv in drafts] == [1099]


async def test_provider_errors_become_unavailable_without_secrets(localstripe: str) -> None:
    wrong_key = StripeProvider("rk_live_do_not_leak", SECRET, api_base=localstripe)
    with pytest.raises(Unavailable) as raised:
        await wrong_key.ensure_customer(tenant(), None)
    assert raised.value.code == "billing_provider_unavailable"
    assert "do_not_leak" not in str(raised.value) + repr(raised.value) + repr(wrong_key)
    unreachable = StripeProvider(API_KEY, SECRET, api_base=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(Unavailable) as raised:
        await unreachable.push_invoice("cus_x", an_invoice(1), None)
    assert raised.value.code == "billing_provider_unavailable"
    assert API_KEY not in raised.value.message


# --- webhooks ----------------------------------------------------------------------------------


def test_a_signed_webhook_is_read(stripe_provider: StripeProvider) -> None:
    paid = event("invoice.payment_succeeded", {"object": "invoice", "id": "in_1", "customer": "cus_1"})
    got = stripe_provider.parse_webhook(paid, sign(paid))
    assert (got.kind, got.raw_type, got.provider_invoice_id, got.customer_id) == (
        "payment_succeeded", "invoice.payment_succeeded", "in_1", "cus_1")
    assert got.id == json.loads(paid)["id"]
    also_paid = event("invoice.paid", {"object": "invoice", "id": "in_2", "customer": "cus_1"})
    assert stripe_provider.parse_webhook(also_paid, sign(also_paid)).kind == "payment_succeeded"
    failed = event("invoice.payment_failed", {"object": "invoice", "id": "in_3", "customer": "cus_2"})
    assert stripe_provider.parse_webhook(failed, sign(failed)).kind == "payment_failed"
    created = event("customer.created", {"object": "customer", "id": "cus_3"})
    other = stripe_provider.parse_webhook(created, sign(created))
    assert (other.kind, other.provider_invoice_id, other.customer_id) == ("other", None, "cus_3")


@pytest.mark.parametrize("case", ["tampered", "wrong secret", "too old", "missing", "empty", "garbage"])
def test_a_webhook_that_is_not_genuine_is_refused(stripe_provider: StripeProvider, case: str) -> None:
    payload = event("invoice.payment_succeeded", {"object": "invoice", "id": "in_1"})
    signature: str | None = {
        "tampered": sign(payload),
        "wrong secret": sign(payload, secret="whsec_other"),
        "too old": sign(payload, at=int(time.time()) - 3600),
        "missing": None,
        "empty": "",
        "garbage": "not a signature",
    }[case]
    body = payload.replace(b"in_1", b"in_2") if case == "tampered" else payload
    with pytest.raises(Invalid) as raised:
        stripe_provider.parse_webhook(body, signature)
    assert (raised.value.code, raised.value.field) == ("bad_signature", "Stripe-Signature")


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'{"id": "evt_1"}', b"\xff\xfe",
                                  b'{"id": "evt_1", "type": "invoice.paid", "data": [1]}'])
def test_a_signed_body_that_is_not_an_event_is_refused(stripe_provider: StripeProvider,
                                                       body: bytes) -> None:
    with pytest.raises(Invalid) as raised:
        stripe_provider.parse_webhook(body, sign(body))
    assert raised.value.code == "bad_payload"


class _Receiver(BaseHTTPRequestHandler):
    received: list[tuple[bytes, str | None]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((body, self.headers.get("Stripe-Signature")))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook_receiver() -> Iterator[tuple[str, list[tuple[bytes, str | None]]]]:
    received: list[tuple[bytes, str | None]] = []
    handler = type("Receiver", (_Receiver,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/stripe", received
    finally:
        server.shutdown()
        server.server_close()


async def test_localstripe_delivers_signed_payment_webhooks_that_parse(
        stripe_provider: StripeProvider, localstripe: str,
        webhook_receiver: tuple[str, list[tuple[bytes, str | None]]]) -> None:
    url, received = webhook_receiver
    configure_webhook(localstripe, "atp-test", url, SECRET,
                      events=["invoice.payment_succeeded", "invoice.payment_failed"])
    paying, failing = await subscribed_customer(stripe_provider), await subscribed_customer(stripe_provider)
    set_default_card(localstripe, paying)
    set_default_failing_sepa_debit(localstripe, failing)
    paid = await stripe_provider.push_invoice(paying, an_invoice(4900), None)
    unpaid = await stripe_provider.push_invoice(failing, an_invoice(4900), None)
    assert paid and unpaid
    assert pay_invoice(localstripe, paid)["status"] == "paid"
    assert pay_invoice(localstripe, unpaid)["status"] == "open"  # the debit fails 0.5 s later

    def parsed() -> dict[str | None, tuple[str, str | None]]:
        events = [stripe_provider.parse_webhook(body, signature) for body, signature in list(received)]
        return {e.provider_invoice_id: (e.kind, e.customer_id) for e in events}

    async def both_arrived() -> bool:
        return {paid, unpaid} <= parsed().keys()

    await wait_for(both_arrived, timeout=15)
    assert parsed()[paid] == ("payment_succeeded", paying)
    assert parsed()[unpaid] == ("payment_failed", failing)
    assert request(localstripe, "GET", f"/v1/invoices/{paid}")["status"] == "paid"


# --- no provider -------------------------------------------------------------------------------


async def test_the_noop_provider_mirrors_nothing_and_takes_no_webhooks() -> None:
    provider: BillingProvider = NoopProvider()
    assert provider.name == "none"
    assert await provider.ensure_customer(tenant(), None) is None
    assert await provider.ensure_subscription("cus_1", "pro", "Professional", "eur", None) is None
    assert await provider.push_invoice("cus_1", an_invoice(100), None) is None
    payload = event("invoice.paid", {"object": "invoice", "id": "in_1"})
    with pytest.raises(Invalid) as raised:
        provider.parse_webhook(payload, sign(payload))
    assert raised.value.code == "no_billing_provider"


def test_the_stripe_provider_is_a_billing_provider_and_pickles(localstripe: str) -> None:
    import pickle

    provider: BillingProvider = StripeProvider(API_KEY, SECRET, api_base=localstripe)
    assert provider.name == "stripe"
    copy = pickle.loads(pickle.dumps(provider))
    assert isinstance(copy, StripeProvider)
    assert repr(copy) == f"StripeProvider(api_base={localstripe!r})"
