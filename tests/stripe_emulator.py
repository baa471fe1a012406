"""localstripe, the Stripe API emulator, as a subprocess for the tests, and what tests do to it.

`LocalStripe.start()` runs localstripe 1.15 on a free port and waits until it answers;
`stop()` ends it. Two things are changed in the emulator process, both before it serves:

- its store is never written to ``/tmp/localstripe.pickle`` (localstripe rewrites that one
  fixed path on every change: shared between concurrent runs, and unwritable when another
  user owns it), so every emulator starts empty and stays private;
- ``POST /v1/invoices/{id}/finalize`` is added (localstripe lacks it), implemented with
  localstripe's own ``Invoice._finalize``, which its subscriptions already use;
- a subscription update accepts ``proration_behavior`` (localstripe answers 500 to it) and,
  with ``"none"``, drops the "Unused time" proration items localstripe makes on a plan
  change, as Stripe would not create them.

Payments (localstripe never charges on its own; a test asks it to):

- success: a card payment method ``4242 4242 4242 4242`` attached to the customer as its
  default, then ``POST /v1/invoices/{id}/pay``: charged at once, ``invoice.payment_succeeded``;
- failure: a SEPA debit payment method with IBAN ``DE62370400440532013001`` as the default,
  then ``POST /v1/invoices/{id}/pay``: the debit fails 0.5 s later, ``invoice.payment_failed``.
  (A declined card does not do: ``/pay`` swallows the decline and sends no event.)

Webhooks: ``POST /_config/webhooks/{id}`` with ``url``, ``secret`` and ``events`` makes
localstripe post every such event, 1 s after it happens, signed like Stripe
(``Stripe-Signature: t=<created>,v1=<HMAC-SHA256(secret, "<created>.<body>")>``).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

API_KEY = "sk_test_atp_localstripe"
CARD_OK = "4242424242424242"
IBAN_FAILS = "DE62370400440532013001"

_BOOT = """
import sys
from localstripe import resources, server

resources.Store.dump_to_disk = lambda self: None


def finalize(id, auto_advance=None):
    invoice = resources.Invoice._api_retrieve(id)
    if invoice.status != 'draft':
        raise resources.UserError(400, 'This invoice is already finalized')
    invoice._finalize()
    return invoice


url = '/v1/invoices/{id}/finalize'
server.app.router.add_route('POST', url, server.api_extra(finalize, url))

update_subscription = resources.Subscription._update


def update_without_prorations(self, proration_behavior=None, **data):
    items = {key for key in resources.store if key.startswith('invoiceitem:')}
    update_subscription(self, **data)
    if proration_behavior == 'none':
        for key in [k for k in resources.store if k.startswith('invoiceitem:') and k not in items]:
            del resources.store[key]


resources.Subscription._update = update_without_prorations
sys.argv = ['localstripe', '--from-scratch', '--port', sys.argv[1]]
server.start()
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET6) as sock:
        sock.bind(("::", 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalStripe:
    """One localstripe process; `url` is the API base to give the Stripe client."""

    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> LocalStripe:
        """Start the emulator and wait until it answers (raise if it does not in time)."""
        self.process = subprocess.Popen([sys.executable, "-c", _BOOT, str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"localstripe exited with {self.process.returncode}")
            try:
                httpx.get(f"{self.url}/v1/customers", auth=(API_KEY, ""), timeout=1.0)
                return self
            except httpx.TransportError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"localstripe did not answer on port {self.port} in {timeout} s")

    def stop(self) -> None:
        """Stop the emulator (its state is lost)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def request(base_url: str, method: str, path: str, **data: Any) -> dict[str, Any]:
    """Call the emulated API (``/v1/...``) with the test key, form-encoded like Stripe's
    libraries (``"card[number]"`` keys for nested fields); return the JSON body."""
    with httpx.Client(base_url=base_url, auth=(API_KEY, ""), timeout=10.0) as client:
        if method == "POST":
            response = client.post(path, data=data)
        else:
            response = client.request(method, path, params=data)
    response.raise_for_status()
    return dict(response.json())


def configure_webhook(base_url: str, hook_id: str, url: str, secret: str,
                      events: list[str] | None = None) -> None:
    """Make localstripe post (those) events to `url`, signed with `secret`; `hook_id` replaces."""
    body: dict[str, Any] = {"url": url, "secret": secret}
    if events is not None:
        body["events"] = events
    with httpx.Client(base_url=base_url, timeout=10.0) as client:
        client.post(f"/_config/webhooks/{hook_id}", json=body).raise_for_status()


def set_default_card(base_url: str, customer_id: str, number: str = CARD_OK) -> str:
    """Attach a card as the customer's default payment method; return its id."""
    pm = request(base_url, "POST", "/v1/payment_methods", **{
        "type": "card", "card[number]": number, "card[exp_month]": "12",
        "card[exp_year]": "2030", "card[cvc]": "123"})
    return _make_default(base_url, customer_id, pm["id"])


def set_default_failing_sepa_debit(base_url: str, customer_id: str) -> str:
    """Attach a SEPA debit whose every charge fails (0.5 s later) as the default; return its id."""
    pm = request(base_url, "POST", "/v1/payment_methods",
                 **{"type": "sepa_debit", "sepa_debit[iban]": IBAN_FAILS})
    return _make_default(base_url, customer_id, pm["id"])


def _make_default(base_url: str, customer_id: str, pm_id: str) -> str:
    request(base_url, "POST", f"/v1/payment_methods/{pm_id}/attach", customer=customer_id)
    request(base_url, "POST", f"/v1/customers/{customer_id}",
            **{"invoice_settings[default_payment_method]": pm_id})
    return pm_id


def pay_invoice(base_url: str, invoice_id: str) -> dict[str, Any]:
    """Ask localstripe to collect an invoice from the customer's default payment method."""
    return request(base_url, "POST", f"/v1/invoices/{invoice_id}/pay")


def main() -> None:
    """``python -m tests.stripe_emulator [PORT]``: the patched localstripe in the foreground,
    for trying the Stripe provider by hand (docs/billing.md)."""
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8420
    emulator = LocalStripe(port).start()
    print(f"localstripe on {emulator.url} (API key {API_KEY}); Ctrl-C stops it", flush=True)
    try:
        assert emulator.process is not None
        emulator.process.wait()
    except KeyboardInterrupt:
        emulator.stop()


if __name__ == "__main__":
    main()
