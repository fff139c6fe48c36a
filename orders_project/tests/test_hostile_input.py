"""No input is a 500: whatever a client sends in a body, a query string or a header, the answer
is a success or a 4xx in the API's error shape (hypothesis), on SQLite and on PostgreSQL alike,
and a refused POST (an order, a cancellation, a refund) writes nothing; and a client cannot escape
the throttle by rewriting X-Forwarded-For."""

from __future__ import annotations

import encodings.aliases
import json
import re
import uuid
from decimal import Decimal

import pytest
from django.core.cache import cache
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from devtools.harness.sample_orders import SEED_ORDER, create_test_order, pay_test_order
from events.models import OutboxEvent
from orders.models import Order, OrderTimelineEntry
from orders.services import IDEMPOTENCY_KEY_MAX_LENGTH
from orders_project.parsers import MAX_DEPTH
from payments.models import Cancellation, Payment, Refund
from payments.simulator import SimulatedGateway

pytestmark = pytest.mark.django_db

PROPERTY = hypothesis_settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))

# Any JSON document, scalars to nested containers.
json_documents = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
# Query-string text: anything a URL can carry (surrogates cannot be encoded at all).
query_text = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=30)


@pytest.fixture(autouse=True)
def unthrottled(settings):
    settings.API = {**settings.API, "throttle_anon": "", "throttle_user": ""}


# The POST endpoints, and what each answers when it takes a request: an order is created; a
# paid order's cancellation or refund is accepted.
TAKEN = {"create": 201, "cancel": 202, "refund": 202}
APPROVE = SimulatedGateway(success_rate=1.0, timeout_rate=0.0, refund_timeout_rate=0.0, refund_failure_rate=0.0, seed="hostile")
ORDER_TOTAL = "10.00"  # of the paid orders cancelled and refunded here


def target(endpoint: str) -> str:
    """The endpoint's path: for a cancellation or a refund, of a new paid order."""
    if endpoint == "create":
        return "/orders"
    order = create_test_order(user_id="hostile", email="hostile@example.com", price=ORDER_TOTAL, correlation_id="hostile")
    pay_test_order(order.id, gateway=APPROVE)
    return f"/orders/{order.id}/{'cancel' if endpoint == 'cancel' else 'refunds'}"


@pytest.fixture
def path(endpoint) -> str:
    """The endpoint's path, shared by every example of a test (a cancellation repeated is taken
    again; once all is refunded, a refund is a 409)."""
    return target(endpoint)


def written() -> tuple:
    """What the POST endpoints write: orders and their statuses, timelines, events, refunds,
    cancellations and what refunds took of each charge."""
    return (
        sorted(Order.objects.values_list("id", "status")),
        OrderTimelineEntry.objects.count(),
        OutboxEvent.objects.count(),
        Refund.objects.count(),
        Cancellation.objects.count(),
        sorted(Payment.objects.values_list("id", "refund_reserved")),
    )


def post_json(api_client, body: bytes, *, path: str = "/orders", content_type: str = "application/json", **headers):
    return api_client.generic("POST", path, body, content_type=content_type, **headers)


def assert_refused(response, status: int = 400) -> dict:
    assert response.status_code == status, (response.status_code, response.content[:300])
    body = response.json()
    assert isinstance(body["error"], str) and body["error"]
    return body


def assert_taken_or_refused(response, endpoint: str, before: tuple, refusals=(400,)) -> bool:
    """The request was taken, or refused (with one of ``refusals``) in the error shape with
    nothing written; whether it was taken."""
    if response.status_code == TAKEN[endpoint]:
        return True
    assert response.status_code in refusals, (response.status_code, response.content[:300])
    assert_refused(response, response.status_code)
    assert written() == before
    return False


# A refund of a JSON amount over the order's charge is a 409.
REFUSALS = {"create": (400,), "cancel": (400,), "refund": (400, 409)}


# --- the JSON body -----------------------------------------------------------------------------


@PROPERTY
@pytest.mark.parametrize("endpoint", TAKEN)
@given(document=json_documents)
def test_any_json_document_is_taken_or_refused_with_nothing_written(api_client, endpoint, path, document):
    before = written()

    response = post_json(api_client, json.dumps(document).encode(), path=path)

    assert_taken_or_refused(response, endpoint, before, REFUSALS[endpoint])


# A refund's amount as clients might write it: numbers, numeric text of every shape, other JSON.
amounts = st.one_of(
    st.decimals(allow_nan=False, allow_infinity=False),
    st.decimals(min_value=Decimal("-1"), max_value=Decimal("12"), places=3),
    st.integers(min_value=-5, max_value=20),
    st.text(alphabet="0123456789.,-+eE _", max_size=14),
    st.decimals(allow_nan=True).map(str),
    json_documents,
)
reasons = st.one_of(st.text(max_size=300), st.text(min_size=250, max_size=260), json_documents)


@PROPERTY
@pytest.mark.parametrize("endpoint", ["cancel", "refund"])
@given(fields=st.fixed_dictionaries({}, optional={"amount": amounts, "reason": reasons}))
@example(fields={"amount": "10.00"})
@example(fields={"amount": "10.01"})
@example(fields={"amount": "0.001"})
@example(fields={"amount": 1e2})
@example(fields={"reason": "r" * 255})
@example(fields={"reason": "r" * 256})
def test_any_amount_and_reason_are_taken_as_given_or_refused_with_nothing_written(api_client, endpoint, fields):
    path = target(endpoint)
    before = written()

    response = post_json(api_client, to_json(fields).encode(), path=path)

    if not assert_taken_or_refused(response, endpoint, before, REFUSALS[endpoint]):
        return
    reason = fields.get("reason", "")
    if endpoint == "cancel":
        assert Cancellation.objects.get(order_id=response.json()["order_id"]).reason == reason.strip()
        return
    refund = Refund.objects.get(pk=response.json()["id"])
    assert refund.reason == reason.strip()
    # Exactly what was asked, a positive amount in cents, or without one all of the charge.
    asked = Decimal(str(fields["amount"]).strip()) if "amount" in fields else Decimal(ORDER_TOTAL)
    assert refund.amount == asked and asked > 0 and asked == asked.quantize(Decimal("0.01"))


def to_json(value) -> str:
    """JSON text of ``value``, a Decimal written as the number it is, digit for digit."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(key)}:{to_json(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(map(to_json, value)) + "]"
    return json.dumps(value)


@PROPERTY
@pytest.mark.parametrize("endpoint", TAKEN)
# Up to what the body limit (256 KiB) lets through: far past the interpreter's recursion limit.
@given(depth=st.integers(min_value=MAX_DEPTH + 1, max_value=40_000), opener=st.sampled_from(["[", '{"a":']))
@example(depth=40_000, opener='{"a":')
@example(depth=MAX_DEPTH + 1, opener="[")
def test_json_nested_too_deep_is_a_400(api_client, endpoint, path, depth, opener):
    before = written()
    closer = "]" if opener == "[" else "}"
    body = (opener * depth + "1" + closer * depth).encode()

    response = post_json(api_client, body, path=path)

    assert "nested deeper" in assert_refused(response)["error"]
    assert written() == before


@PROPERTY
@pytest.mark.parametrize("endpoint", TAKEN)
@given(data=st.binary(max_size=200))
@example(data=b"NaN")
@example(data=b'{"user_id": Infinity}')
@example(data=b'{"amount": NaN}')
@example(data=b"\xff\xfe")
def test_arbitrary_bytes_are_taken_or_refused_with_nothing_written(api_client, endpoint, path, data):
    before = written()

    response = post_json(api_client, data, path=path)

    assert_taken_or_refused(response, endpoint, before, REFUSALS[endpoint])


@PROPERTY
@pytest.mark.parametrize("endpoint", TAKEN)
@given(charset=st.sampled_from(sorted(set(encodings.aliases.aliases.values()) | {"rot13", "bogus"})), data=st.binary(max_size=50))
def test_any_declared_charset_is_read_or_refused(api_client, endpoint, path, charset, data):
    before = written()

    response = post_json(api_client, data, path=path, content_type=f"application/json; charset={charset}")

    assert_taken_or_refused(response, endpoint, before, REFUSALS[endpoint])


# --- the query string ----------------------------------------------------------------------------


@PROPERTY
@given(parameter=st.sampled_from(["page", "page_size", "status", "user_id"]), value=query_text)
@example(parameter="page_size", value="²")
@example(parameter="page", value="٣")
@example(parameter="page", value="9" * 400)
@example(parameter="page_size", value="0")
@example(parameter="page", value="last")
@example(parameter="user_id", value="\x00")
def test_any_list_parameter_is_read_or_refused(api_client, parameter, value):
    response = api_client.get("/orders", {parameter: value})

    # page: a number past the last page is a 404 ("No such page"), like any missing page.
    assert response.status_code in (200, 400, 404), response.content[:300]
    if response.status_code != 200:
        assert_refused(response, response.status_code)
    if response.status_code == 400:
        assert parameter in response.json()["fields"]


@pytest.mark.parametrize("value", ["²", "٣", "１", "1.0", " 1", "+1", "-1", "0", "101", "9" * 11])
def test_page_size_other_than_ascii_1_to_100_is_a_400(api_client, value):
    body = assert_refused(api_client.get("/orders", {"page_size": value}))

    assert body["fields"]["page_size"] == ["An integer from 1 to 100."]


def test_a_list_page_holds_at_most_100_rows_and_no_items(api_client, seed_order):
    for index in range(3):
        assert post_json(api_client, json.dumps({**seed_order, "user_id": f"u{index}"}).encode()).status_code == 201

    page = api_client.get("/orders", {"page_size": 100}).json()

    assert [row["item_count"] for row in page["results"]] == [2, 2, 2]
    assert all("items" not in row for row in page["results"])


def test_the_largest_list_page_is_about_200_kb(api_client):
    # Every text field at its limit, in characters JSON escapes to six bytes (\u0001), and
    # the largest total: as the API accepts them.
    worst = {
        "user_id": "\x01" * 64,
        "email": '"' + "\x01" * 240 + '"@a.co',
        "items": [{"product_id": "p", "product_name": "n", "quantity": 10_000, "price": "1000000.00"}] * 100,
    }
    created = post_json(api_client, json.dumps(worst).encode())
    assert created.status_code == 201, created.content
    order = Order.objects.get(pk=created.json()["order_id"])
    Order.objects.bulk_create(
        Order(user_id=order.user_id, email=order.email, status=order.status, total_amount=order.total_amount) for _ in range(99)
    )

    page = api_client.get("/orders", {"page_size": 100})

    assert len(page.json()["results"]) == 100
    assert 200_000 < len(page.content) <= 210_000  # README, "HTTP API"


# --- the Idempotency-Key header ------------------------------------------------------------------

# Printable text as a header carries it (latin-1), mostly ASCII, up to twice the limit.
header_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_categories=("Cc",)), max_size=400)
VALID_KEY = re.compile(rf"[\x21-\x7e]{{1,{IDEMPOTENCY_KEY_MAX_LENGTH}}}")


@pytest.fixture
def client_with_token(api_client, settings, django_user_model):
    # With a client, keys are stored with its id in front: the longest keys must still fit.
    settings.API_REQUIRE_AUTH = True
    user = django_user_model.objects.create(username="shop")
    api_client.force_authenticate(user)
    return api_client


# A request each endpoint takes.
BODIES = {"create": SEED_ORDER, "cancel": {"reason": "r"}, "refund": {"amount": "1.00"}}


@PROPERTY
@pytest.mark.parametrize("endpoint", TAKEN)
@given(key=header_text | st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=190, max_size=260))
@example(key="k" * IDEMPOTENCY_KEY_MAX_LENGTH)
@example(key="k" * (IDEMPOTENCY_KEY_MAX_LENGTH + 1))
@example(key="k" * 255)
def test_any_idempotency_key_is_honoured_or_refused(client_with_token, django_user_model, endpoint, key):
    # A new order and a new client (staff: it sees that order) for each example: keys are per client.
    path = target(endpoint)
    client_with_token.force_authenticate(django_user_model.objects.create(username=f"shop-{uuid.uuid4()}", is_staff=True))
    body = json.dumps(BODIES[endpoint]).encode()
    before = written()

    response = post_json(client_with_token, body, path=path, HTTP_IDEMPOTENCY_KEY=key)

    if VALID_KEY.fullmatch(key):
        assert response.status_code == TAKEN[endpoint], response.content[:300]
        replay = post_json(client_with_token, body, path=path, HTTP_IDEMPOTENCY_KEY=key)
        assert (replay.status_code, replay["Idempotent-Replayed"]) == (TAKEN[endpoint], "true")
        assert replay.json() == response.json()
    else:
        refused = assert_refused(response)
        assert refused["fields"]["Idempotency-Key"] == [
            f"1 to {IDEMPOTENCY_KEY_MAX_LENGTH} printable ASCII characters without spaces."
        ]
        assert written() == before


@pytest.mark.parametrize("endpoint", TAKEN)
def test_the_longest_key_of_the_client_with_the_longest_id_fits(client_with_token, django_user_model, endpoint):
    path = target(endpoint)
    # auth_user.id is 32 bits; staff, to see the order.
    client_with_token.force_authenticate(django_user_model.objects.create(pk=2**31 - 1, username="last", is_staff=True))

    response = post_json(client_with_token, json.dumps(BODIES[endpoint]).encode(), path=path, HTTP_IDEMPOTENCY_KEY="k" * IDEMPOTENCY_KEY_MAX_LENGTH)

    assert response.status_code == TAKEN[endpoint]
    stored = [
        key
        for model, column in ((Order, "idempotency_key"), (Refund, "request_key"), (Cancellation, "request_key"))
        for key in model.objects.exclude(**{f"{column}__isnull": True}).values_list(column, flat=True)
    ]
    assert stored == [f"client-{2**31 - 1}:" + "k" * IDEMPOTENCY_KEY_MAX_LENGTH]
    assert len(stored[0]) <= 255


# --- the throttle's client address -----------------------------------------------------------------


@pytest.fixture
def throttled(settings):
    settings.API = {**settings.API, "throttle_anon": "3/minute"}
    cache.clear()
    yield
    cache.clear()


def test_rewriting_x_forwarded_for_does_not_escape_the_throttle(api_client, settings, throttled):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 0}

    statuses = [api_client.get("/orders", HTTP_X_FORWARDED_FOR=f"198.51.100.{n}").status_code for n in range(4)]

    assert statuses == [200, 200, 200, 429]


def test_behind_one_proxy_the_right_most_address_is_the_client(api_client, settings, throttled):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}

    # The client writes what it likes on the left; the proxy appends the address it saw.
    spoofed = [api_client.get("/orders", HTTP_X_FORWARDED_FOR=f"10.0.0.{n}, 203.0.113.7").status_code for n in range(4)]
    other_client = api_client.get("/orders", HTTP_X_FORWARDED_FOR="10.0.0.1, 203.0.113.8").status_code

    assert spoofed == [200, 200, 200, 429]
    assert other_client == 200
