"""Write `bench/fixtures/python_event.envelope`: one envelope exactly as the Python SDK
sends it, the template of every event the load generator sends.

The SDK is run for real (`sentry-sdk`, its default integrations, the logging integration
recording breadcrumbs) with a transport that keeps `envelope.serialize()` instead of
sending it. The exception is raised ten calls deep in a small order-processing program
written beside this file at run time, so the frames carry file names, modules, context
lines and local variables as they do in an application; the scope has tags, a user, a
context and breadcrumbs.

    .venv/bin/python bench/capture_fixture.py
"""

from __future__ import annotations

import importlib
import logging
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import sentry_sdk
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "python_event.envelope"
DSN = "http://0123456789abcdef0123456789abcdef@127.0.0.1:9/1"

# Ten calls from the request handler down to the failing line.
APP = textwrap.dedent(
    '''
    """A small shop backend: enough code for a realistic stack."""

    from decimal import Decimal


    class PaymentDeclined(Exception):
        pass


    def handle_request(request):
        session = {"user": request["user"], "cart": request["cart"]}
        return dispatch(session, request["path"])


    def dispatch(session, path):
        route = {"/checkout": checkout_view}.get(path)
        return route(session)


    def checkout_view(session):
        cart = session["cart"]
        return place_order(session["user"], cart)


    def place_order(user, cart):
        order = {"id": 1009, "user": user, "items": cart, "currency": "EUR"}
        return price_order(order)


    def price_order(order):
        subtotal = sum(Decimal(item["price"]) * item["qty"] for item in order["items"])
        return apply_discounts(order, subtotal)


    def apply_discounts(order, subtotal):
        discount = Decimal("0.10") if subtotal > 100 else Decimal(0)
        return compute_tax(order, subtotal - subtotal * discount)


    def compute_tax(order, amount):
        rate = {"EUR": Decimal("0.21")}[order["currency"]]
        return charge_card(order, amount + amount * rate)


    def charge_card(order, total):
        card = {"brand": "visa", "last4": "4242", "exp": "12/27"}
        return authorize(card, total, order["id"])


    def authorize(card, total, order_id):
        attempts = 3
        return gateway_call(card, total, order_id, attempts)


    def gateway_call(card, total, order_id, attempts):
        response = {"status": 402, "code": "card_declined", "order": order_id}
        raise PaymentDeclined(
            "card declined for order %s: %s" % (order_id, response["code"])
        )
    '''
)


class KeepingTransport(Transport):
    """Keeps the serialized envelopes instead of sending them."""

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.bodies: list[bytes] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.bodies.append(envelope.serialize())


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / "shop"
        package.mkdir()
        (package / "__init__.py").write_text("")
        (package / "orders.py").write_text(APP)
        sys.path.insert(0, tmp)
        orders = importlib.import_module("shop.orders")

        transport = KeepingTransport()
        sentry_sdk.init(
            dsn=DSN,
            transport=transport,
            release="shop@2.4.1",
            environment="production",
            server_name="web-3",
            send_default_pii=True,
            in_app_include=["shop"],
            default_integrations=True,
        )
        log = logging.getLogger("shop.web")
        log.setLevel(logging.INFO)
        sentry_sdk.set_user({"id": "u-1042", "email": "ada@example.com", "username": "ada"})
        sentry_sdk.set_tag("region", "eu-west-1")
        sentry_sdk.set_tag("plan", "pro")
        sentry_sdk.set_tag("feature.checkout_v2", "on")
        sentry_sdk.set_context("order", {"id": 1009, "items": 2, "currency": "EUR"})
        log.info("GET /cart 200")
        log.info("POST /cart/items 201")
        sentry_sdk.add_breadcrumb(category="query", message="SELECT * FROM cart WHERE id = 7")
        sentry_sdk.add_breadcrumb(
            category="http", data={"method": "POST", "url": "https://pay.example/v1/auth"}
        )
        log.warning("payment gateway slow: 1840 ms")
        request = {
            "user": "u-1042",
            "path": "/checkout",
            "cart": [
                {"sku": "A-1", "price": "59.90", "qty": 2},
                {"sku": "B-7", "price": "9.50", "qty": 1},
            ],
        }
        try:
            orders.handle_request(request)
        except orders.PaymentDeclined:
            sentry_sdk.capture_exception()
        sentry_sdk.flush()
        sys.path.remove(tmp)
    [body] = [b for b in transport.bodies if b'"type":"event"' in b]
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_bytes(body)
    print(f"{FIXTURE}: {len(body)} bytes")


if __name__ == "__main__":
    main()
