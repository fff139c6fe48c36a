"""POST /orders/{id}/cancel, POST and GET /orders/{id}/refunds over HTTP, against the real views
and database: what each status answers, what is refused with nothing written, Idempotency-Key,
owner-only access, and what GET /orders/{id} and the timeline then show. The pipeline's charge
and refund steps run in the test (deterministic gateways), as its tasks would run them."""

from __future__ import annotations

import threading

import pytest
from django.db import connection
from rest_framework.test import APIClient

from devtools.harness.sample_orders import create_test_order, give_refunds, pay_test_order, process_test_order
from events.models import OutboxEvent
from orders.models import Order, OrderTimelineEntry
from orders.services import park_order
from payments.gateway import RefundResult
from payments.models import Cancellation, Payment, Refund
from payments.simulator import SimulatedGateway

pytestmark = pytest.mark.django_db

DETERMINISTIC = {"timeout_rate": 0.0, "refund_timeout_rate": 0.0, "refund_failure_rate": 0.0, "seed": "api"}
APPROVE = SimulatedGateway(success_rate=1.0, **DETERMINISTIC)
DECLINE = SimulatedGateway(success_rate=0.0, **DETERMINISTIC)
TOTAL = "75.97"  # the seed order's


class RefusingRefunds:
    """A provider that refuses every refund, in its own words (not for the customer's eyes)."""

    def refund(self, *, idempotency_key, charge_reference, amount):
        return RefundResult(approved=False, reference="", decline_reason="Account 4242 closed at the bank")


@pytest.fixture(autouse=True)
def unthrottled(settings):
    settings.API = {**settings.API, "throttle_anon": "", "throttle_user": ""}


@pytest.fixture
def new_order(api_client, seed_order):
    def create(client: APIClient = api_client) -> str:
        response = client.post("/orders", seed_order, format="json")
        assert response.status_code == 201, response.content
        return response.json()["order_id"]

    return create


@pytest.fixture
def paid_order(new_order) -> str:
    order_id = new_order()
    pay_test_order(order_id, gateway=APPROVE)
    assert status_of(order_id) == "PAID"
    return order_id


@pytest.fixture
def client_of(settings, django_user_model):
    """A token client of its own, with authentication required (each client sees only its orders)."""
    settings.API_REQUIRE_AUTH = True

    def client(username: str) -> APIClient:
        api_client = APIClient()
        api_client.force_authenticate(django_user_model.objects.create(username=username))
        return api_client

    return client


def cancel(client: APIClient, order_id: str, body: dict | None = None, **headers):
    return client.post(f"/orders/{order_id}/cancel", body or {}, format="json", **headers)


def refund(client: APIClient, order_id: str, body: dict | None = None, **headers):
    return client.post(f"/orders/{order_id}/refunds", body or {}, format="json", **headers)


def status_of(order_id: str) -> str:
    return Order.objects.get(pk=order_id).status


def written() -> tuple:
    """Everything a cancel or refund request writes: orders' statuses, timelines, events, the
    charges' refund sums, refunds and cancellations."""
    return (
        sorted(Order.objects.values_list("id", "status")),
        OrderTimelineEntry.objects.count(),
        OutboxEvent.objects.count(),
        sorted(Payment.objects.values_list("id", "status", "refund_reserved", "refunded_amount")),
        sorted(Refund.objects.values_list("id", "status", "amount")),
        Cancellation.objects.count(),
    )


def refused(response, code: int) -> str:
    """The refusal's reason, after checking its status and the API's error shape."""
    assert response.status_code == code, (response.status_code, response.content[:300])
    body = response.json()
    assert isinstance(body["error"], str) and body["error"]
    return body["error"]


def events_of(order_id: str, event_type: str) -> int:
    return OutboxEvent.objects.filter(key=order_id, event_type=event_type).count()


# How an order gets to each status: the pipeline's steps, the client's requests.
def _created(api_client, order_id):
    pass


def _processing(api_client, order_id):
    process_test_order(order_id)


def _declined(api_client, order_id):
    pay_test_order(order_id, gateway=DECLINE)


def _parked(api_client, order_id):
    process_test_order(order_id)
    park_order(order_id=order_id, reason="processing_gave_up", error="e", original_event={}, source="test")


def _cancelled(api_client, order_id):
    assert cancel(api_client, order_id).status_code == 200


def _cancelling(api_client, order_id):
    pay_test_order(order_id, gateway=APPROVE)
    assert cancel(api_client, order_id).status_code == 202


def _refunded(api_client, order_id):
    pay_test_order(order_id, gateway=APPROVE)
    assert refund(api_client, order_id).status_code == 202
    give_refunds(order_id, gateway=APPROVE)


# --- POST /orders/{id}/cancel in every status ----------------------------------------------------


@pytest.mark.parametrize("make", [_created, _processing, _declined, _parked], ids=["CREATED", "PROCESSING", "PAYMENT_FAILED", "FAILED"])
def test_an_order_with_no_charge_under_way_nor_captured_is_cancelled_at_once(api_client, new_order, make):
    order_id = new_order()
    make(api_client, order_id)

    response = cancel(api_client, order_id, {"reason": "changed my mind"})

    assert response.status_code == 200, response.content
    assert "Idempotent-Replayed" not in response
    body = response.json()
    assert (body["order_id"], body["status"], body["message"], body["reason"], body["refund"]) == (
        order_id,
        "CANCELLED",
        "Order cancelled",
        "changed my mind",
        None,
    )
    assert status_of(order_id) == "CANCELLED"
    assert events_of(order_id, "ORDER_CANCELLED") == 1
    # The pipeline's steps that come after it charge nothing.
    pay_test_order(order_id, gateway=APPROVE)
    assert status_of(order_id) == "CANCELLED"
    assert not Payment.objects.filter(order_id=order_id, status="APPROVED").exists()


class CancelledWhileCharging:
    """The gateway, with the client's cancel (and a repeat of it) arriving while it charges: the
    charge's attempt is committed, its outcome not yet known."""

    def __init__(self, client: APIClient, order_id: str, gateway: SimulatedGateway):
        self.client, self.order_id, self.gateway = client, order_id, gateway

    def charge(self, **call):
        self.first = cancel(self.client, self.order_id)
        self.before_repeat = written()
        self.repeat = cancel(self.client, self.order_id)
        self.after_repeat = written()
        return self.gateway.charge(**call)


@pytest.mark.parametrize("gateway", [APPROVE, DECLINE], ids=["approved", "declined"])
def test_a_cancel_during_the_charge_is_accepted_and_ends_cancelled_whatever_the_charge(api_client, new_order, gateway):
    order_id = new_order()
    charging = CancelledWhileCharging(api_client, order_id, gateway)

    pay_test_order(order_id, gateway=charging)

    assert charging.first.status_code == 202, charging.first.content
    body = charging.first.json()
    assert (body["status"], body["refund"]) == ("CANCELLING", None)
    assert body["message"] == "Cancellation accepted: the order ends cancelled whatever its charge under way comes to"
    # Repeated while the charge is under way: the same answer, and nothing more written.
    assert (charging.repeat.status_code, charging.repeat.json()) == (202, body)
    assert charging.after_repeat == charging.before_repeat
    give_refunds(order_id, gateway=APPROVE)
    detail = api_client.get(f"/orders/{order_id}").json()
    assert detail["status"] == "CANCELLED"
    if gateway is APPROVE:
        # The approved charge was refunded in full, once.
        assert [(r["amount"], r["reason"], r["status"]) for r in detail["refunds"]] == [(TOTAL, "order cancelled", "SUCCEEDED")]
        assert detail["refunded_amount"] == TOTAL
    else:
        assert (detail["refunds"], detail["refunded_amount"]) == ([], "0.00")
    assert "cancelled and final" in refused(cancel(api_client, order_id), 409)


def test_a_paid_order_is_refunded_in_full_then_cancelled(api_client, paid_order):
    response = cancel(api_client, paid_order, {"reason": "arrived too late"})

    assert response.status_code == 202, response.content
    body = response.json()
    assert (body["status"], body["message"]) == ("CANCELLING", "Cancellation accepted: the charge is being refunded")
    assert (body["refund"]["amount"], body["refund"]["status"], body["refund"]["reason"]) == (TOTAL, "REQUESTED", "arrived too late")
    before = written()
    assert (cancel(api_client, paid_order).status_code, cancel(api_client, paid_order).json()) == (202, body)
    assert written() == before

    give_refunds(paid_order, gateway=APPROVE)

    detail = api_client.get(f"/orders/{paid_order}").json()
    assert (detail["status"], detail["refunded_amount"]) == ("CANCELLED", TOTAL)
    (listed,) = detail["refunds"]
    assert (listed["id"], listed["amount"], listed["reason"], listed["status"]) == (
        body["refund"]["id"],
        TOTAL,
        "arrived too late",
        "SUCCEEDED",
    )
    assert listed["gateway_reference"].startswith("simr_") and listed["completed_at"]
    (own_list,) = api_client.get(f"/orders/{paid_order}/refunds").json()
    assert (own_list["id"], own_list["status"], own_list["gateway_reference"], own_list["failure_reason"]) == (
        listed["id"],
        "SUCCEEDED",
        listed["gateway_reference"],
        "",
    )


def test_cancelling_a_partly_refunded_order_refunds_the_rest(api_client, paid_order):
    assert refund(api_client, paid_order, {"amount": "25.97"}).status_code == 202
    give_refunds(paid_order, gateway=APPROVE)

    response = cancel(api_client, paid_order)

    assert response.status_code == 202
    assert response.json()["refund"]["amount"] == "50.00"
    give_refunds(paid_order, gateway=APPROVE)
    detail = api_client.get(f"/orders/{paid_order}").json()
    assert (detail["status"], detail["refunded_amount"]) == ("CANCELLED", TOTAL)


@pytest.mark.parametrize(
    "make, final", [(_cancelled, "it is cancelled and final"), (_refunded, "it is refunded in full and final")]
)
def test_a_cancelled_or_refunded_order_cannot_be_cancelled(api_client, new_order, make, final):
    order_id = new_order()
    make(api_client, order_id)
    before = written()

    response = cancel(api_client, order_id, {"reason": "again"})

    assert set(response.json()) == {"error"}
    assert refused(response, 409) == f"Order {order_id} cannot be cancelled: {final}"
    assert written() == before


# --- POST /orders/{id}/refunds -------------------------------------------------------------------


def test_a_refund_without_an_amount_gives_back_all_that_remains(api_client, paid_order):
    response = refund(api_client, paid_order)

    assert response.status_code == 202, response.content
    body = response.json()
    assert (body["order_id"], body["amount"], body["status"], body["reason"], body["gateway_reference"]) == (
        paid_order,
        TOTAL,
        "REQUESTED",
        "",
        "",
    )
    assert events_of(paid_order, "REFUND_REQUESTED") == 1
    give_refunds(paid_order, gateway=APPROVE)
    detail = api_client.get(f"/orders/{paid_order}").json()
    assert (detail["status"], detail["refunded_amount"]) == ("REFUNDED", TOTAL)
    assert "not paid" in refused(refund(api_client, paid_order, {"amount": "0.01"}), 409)


def test_partial_refunds_add_up_to_the_charge_and_no_further(api_client, paid_order):
    first = refund(api_client, paid_order, {"amount": "30.00", "reason": "one arrived broken"})
    assert first.status_code == 202
    give_refunds(paid_order, gateway=APPROVE)
    detail = api_client.get(f"/orders/{paid_order}").json()
    assert (detail["status"], detail["refunded_amount"]) == ("PARTIALLY_REFUNDED", "30.00")
    # A JSON number is an amount like a string is; requested, not yet given back.
    assert refund(api_client, paid_order, {"amount": 20}).json()["amount"] == "20.00"
    before = written()

    over = refund(api_client, paid_order, {"amount": "25.98"})

    assert refused(over, 409) == f"Order {paid_order}: a refund of 25.98 is more than remains of its charge (25.97)"
    assert written() == before
    assert refund(api_client, paid_order).json()["amount"] == "25.97"
    before = written()
    assert "refunded or being refunded" in refused(refund(api_client, paid_order, {"amount": "0.01"}), 409)
    assert written() == before
    give_refunds(paid_order, gateway=APPROVE)
    refunds = api_client.get(f"/orders/{paid_order}/refunds").json()
    assert [(r["amount"], r["reason"], r["status"]) for r in refunds] == [
        ("30.00", "one arrived broken", "SUCCEEDED"),
        ("20.00", "", "SUCCEEDED"),
        ("25.97", "", "SUCCEEDED"),
    ]
    assert len({r["gateway_reference"] for r in refunds}) == 3
    detail = api_client.get(f"/orders/{paid_order}").json()
    assert (detail["status"], detail["refunded_amount"]) == ("REFUNDED", TOTAL)
    assert [r["id"] for r in detail["refunds"]] == [r["id"] for r in refunds]


@pytest.mark.parametrize(
    "raw, field",
    [
        ('{"amount": 0}', "amount"),
        ('{"amount": "0.00"}', "amount"),
        ('{"amount": -5}', "amount"),
        ('{"amount": "-0.01"}', "amount"),
        ('{"amount": 1.005}', "amount"),
        ('{"amount": "1.005"}', "amount"),
        ('{"amount": "abc"}', "amount"),
        ('{"amount": ""}', "amount"),
        ('{"amount": "1,50"}', "amount"),
        ('{"amount": "NaN"}', "amount"),
        ('{"amount": "Infinity"}', "amount"),
        ('{"amount": 12345678901}', "amount"),
        ('{"amount": null}', "amount"),
        ('{"amount": true}', "amount"),
        ('{"amount": [1]}', "amount"),
        ('{"reason": 5}', "reason"),
        ('{"reason": "' + "x" * 256 + '"}', "reason"),
        ('{"reason": "a\\u0000b"}', "reason"),
        ("[]", "non_field_errors"),
        ('"all of it"', "non_field_errors"),
    ],
)
def test_a_malformed_refund_is_a_400_and_nothing_is_written(api_client, paid_order, raw, field):
    before = written()

    response = api_client.generic("POST", f"/orders/{paid_order}/refunds", raw.encode(), content_type="application/json")

    assert refused(response, 400) == "Invalid request"
    assert list(response.json()["fields"]) == [field]
    assert written() == before


@pytest.mark.parametrize("raw", ['{"reason": ["x"]}', '{"reason": "' + "x" * 256 + '"}', "[1]"])
def test_a_malformed_cancel_is_a_400_and_nothing_is_written(api_client, paid_order, raw):
    before = written()

    response = api_client.generic("POST", f"/orders/{paid_order}/cancel", raw.encode(), content_type="application/json")

    assert refused(response, 400) == "Invalid request"
    assert written() == before


@pytest.mark.parametrize(
    "make, status",
    [
        (_created, "CREATED"),
        (_processing, "PROCESSING"),
        (_declined, "PAYMENT_FAILED"),
        (_cancelled, "CANCELLED"),
        (_cancelling, "CANCELLING"),
    ],
)
def test_an_unpaid_order_cannot_be_refunded(api_client, new_order, make, status):
    order_id = new_order()
    make(api_client, order_id)
    assert status_of(order_id) == status
    before = written()

    response = refund(api_client, order_id, {"amount": "1.00"})

    assert refused(response, 409).startswith(f"Order {order_id} is {status}, not paid: ")
    assert written() == before


def test_a_refused_refund_is_shown_as_failed_and_its_amount_can_be_asked_again(api_client, paid_order):
    asked = refund(api_client, paid_order, {"amount": "10.00"}).json()

    give_refunds(paid_order, gateway=RefusingRefunds())

    (failed,) = api_client.get(f"/orders/{paid_order}/refunds").json()
    assert (failed["id"], failed["status"], failed["failure_reason"]) == (asked["id"], "FAILED", "Refund failed")
    detail = api_client.get(f"/orders/{paid_order}").json()
    assert (detail["status"], detail["refunded_amount"], detail["refunds"][0]["status"]) == ("PAID", "0.00", "FAILED")
    assert "4242" not in str(detail) and "4242" not in str(api_client.get(f"/orders/{paid_order}/events").json())
    # What failed is released: all of the charge can be asked for again.
    assert refund(api_client, paid_order).json()["amount"] == TOTAL


# --- Idempotency-Key -----------------------------------------------------------------------------


def test_a_cancel_repeated_with_its_key_gets_the_first_answer(api_client, paid_order, new_order):
    other_order = new_order()
    first = cancel(api_client, paid_order, {"reason": "gift"}, HTTP_IDEMPOTENCY_KEY="cancel-1")
    assert first.status_code == 202
    before = written()

    replay = cancel(api_client, paid_order, {"reason": "gift"}, HTTP_IDEMPOTENCY_KEY="cancel-1")
    other_body = cancel(api_client, paid_order, {"reason": "not a gift"}, HTTP_IDEMPOTENCY_KEY="cancel-1")
    same_body_other_order = cancel(api_client, other_order, {"reason": "gift"}, HTTP_IDEMPOTENCY_KEY="cancel-1")

    assert (replay.status_code, replay.json(), replay["Idempotent-Replayed"]) == (202, first.json(), "true")
    assert "Idempotency-Key already used for a different request" in refused(other_body, 422)
    assert "Idempotency-Key already used for a different request" in refused(same_body_other_order, 422)
    assert written() == before
    # Once the order is cancelled, the key still gets the first answer (without it: 409).
    give_refunds(paid_order, gateway=APPROVE)
    late = cancel(api_client, paid_order, {"reason": "gift"}, HTTP_IDEMPOTENCY_KEY="cancel-1")
    assert (late.status_code, late["Idempotent-Replayed"], late.json()["status"]) == (202, "true", "CANCELLING")
    assert late.json()["refund"]["id"] == first.json()["refund"]["id"]
    refused(cancel(api_client, paid_order, {"reason": "gift"}), 409)


def test_a_refund_repeated_with_its_key_is_made_once(api_client, paid_order):
    first = refund(api_client, paid_order, {"amount": "10.00", "reason": "late"}, HTTP_IDEMPOTENCY_KEY="refund-1")
    assert first.status_code == 202 and "Idempotent-Replayed" not in first
    before = written()

    # The same request, its amount written another way.
    replay = refund(api_client, paid_order, {"amount": 10, "reason": "late"}, HTTP_IDEMPOTENCY_KEY="refund-1")
    other_amount = refund(api_client, paid_order, {"amount": "11.00", "reason": "late"}, HTTP_IDEMPOTENCY_KEY="refund-1")

    assert (replay.status_code, replay.json(), replay["Idempotent-Replayed"]) == (202, first.json(), "true")
    assert "Idempotency-Key already used for a different request" in refused(other_amount, 422)
    assert written() == before
    give_refunds(paid_order, gateway=APPROVE)
    assert Payment.objects.get(order_id=paid_order).refunded_amount == 10


def test_a_malformed_idempotency_key_is_a_400_and_nothing_is_written(api_client, paid_order):
    before = written()

    for post in (cancel, refund):
        response = post(api_client, paid_order, HTTP_IDEMPOTENCY_KEY="with space")
        assert "Idempotency-Key" in assert_fields(response)
    assert written() == before


def assert_fields(response) -> dict:
    assert refused(response, 400) == "Invalid request"
    return response.json()["fields"]


def test_idempotency_keys_belong_to_each_client(client_of, new_order):
    alice, bob = client_of("alice"), client_of("bob")
    orders = {client: new_order(client) for client in (alice, bob)}
    for order_id in orders.values():
        pay_test_order(order_id, gateway=APPROVE)

    # The same key and body from two clients: two refunds, then each client's replay gets its own.
    made = {client: refund(client, order_id, {"amount": "5.00"}, HTTP_IDEMPOTENCY_KEY="k") for client, order_id in orders.items()}
    replays = {client: refund(client, order_id, {"amount": "5.00"}, HTTP_IDEMPOTENCY_KEY="k") for client, order_id in orders.items()}

    assert [response.status_code for response in made.values()] == [202, 202]
    assert len({response.json()["id"] for response in made.values()}) == 2
    assert all(replays[client].json()["id"] == made[client].json()["id"] for client in orders)
    cancels = [cancel(client, order_id, HTTP_IDEMPOTENCY_KEY="k") for client, order_id in orders.items()]
    assert [(response.status_code, "Idempotent-Replayed" in response) for response in cancels] == [(202, False)] * 2


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("post", [cancel, refund])
def test_one_key_sent_for_two_orders_at_once_is_taken_once_and_refused_once(post):
    """Each request locks its own order and finds the key unused: the key's unique constraint
    decides, and the loser is told the key was reused (not a 500)."""
    orders = [str(create_test_order(user_id="k", email="k@example.com", correlation_id="k").id) for _ in range(2)]
    for order_id in orders:
        pay_test_order(order_id, gateway=APPROVE)
    barrier = threading.Barrier(len(orders))
    responses = []

    def send(order_id):
        try:
            barrier.wait()
            responses.append(post(APIClient(), order_id, {"reason": "same"}, HTTP_IDEMPOTENCY_KEY="one-key"))
        finally:
            connection.close()

    threads = [threading.Thread(target=send, args=(order_id,)) for order_id in orders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(response.status_code for response in responses) == [202, 422]
    # One request's rows: its refund (a paid order's cancellation refunds it) and, for a cancel, the cancellation.
    assert (Refund.objects.count(), Cancellation.objects.count()) == (1, 1 if post is cancel else 0)


# --- Owner-only ----------------------------------------------------------------------------------


def test_another_clients_order_is_not_found_and_left_alone(client_of, new_order, api_client):
    alice, bob = client_of("alice"), client_of("bob")
    order_id = new_order(alice)
    pay_test_order(order_id, gateway=APPROVE)
    before = written()

    assert refused(cancel(bob, order_id), 404) == "Order not found"
    assert refused(refund(bob, order_id, {"amount": "1.00"}), 404) == "Order not found"
    assert refused(bob.get(f"/orders/{order_id}/refunds"), 404) == "Order not found"
    for response in (cancel(api_client, order_id), refund(api_client, order_id), api_client.get(f"/orders/{order_id}/refunds")):
        refused(response, 401)  # no token at all
    assert written() == before
    assert alice.get(f"/orders/{order_id}/refunds").json() == []
    assert refund(alice, order_id, {"amount": "1.00"}).status_code == 202


# --- What the client reads -----------------------------------------------------------------------


def test_the_timeline_shows_every_step_in_words_for_the_customer(api_client, paid_order):
    refund(api_client, paid_order, {"amount": "25.00", "reason": "private note one"})
    give_refunds(paid_order, gateway=APPROVE)
    cancel(api_client, paid_order, {"reason": "private note two"})
    give_refunds(paid_order, gateway=APPROVE)

    timeline = api_client.get(f"/orders/{paid_order}/events").json()

    assert [(entry["event_type"], entry["status"], entry["message"]) for entry in timeline] == [
        ("ORDER_CREATED", "CREATED", "Order created"),
        ("ORDER_PROCESSING", "PROCESSING", "Order accepted for processing"),
        ("ORDER_PAID", "PAID", "Payment approved"),
        ("REFUND_REQUESTED", "PAID", "Refund requested"),
        ("ORDER_REFUNDED", "PARTIALLY_REFUNDED", "Refunded"),
        ("CANCELLATION_REQUESTED", "CANCELLING", "Cancellation requested"),
        ("REFUND_REQUESTED", "CANCELLING", "Refund requested"),
        ("ORDER_REFUNDED", "CANCELLING", "Refunded"),
        ("ORDER_CANCELLED", "CANCELLED", "Order cancelled"),
    ]
    # What the stored messages hold (who asked, their notes, the gateway's references) stays in the admin.
    stored = " ".join(OrderTimelineEntry.objects.filter(order_id=paid_order).values_list("message", flat=True))
    assert "private note" in stored and "simr_" in stored and "client" in stored
    shown = " ".join(entry["message"] for entry in timeline)
    assert not any(word in shown for word in ("private note", "simr_", "sim_", "client"))


def test_a_cancel_during_the_charge_shows_on_the_timeline(api_client, new_order):
    order_id = new_order()
    pay_test_order(order_id, gateway=CancelledWhileCharging(api_client, order_id, DECLINE))

    messages = [entry["message"] for entry in api_client.get(f"/orders/{order_id}/events").json()]

    assert messages == [
        "Order created",
        "Order accepted for processing",
        "Cancellation requested",
        "Charge under way resolved",
        "Order cancelled",
    ]
