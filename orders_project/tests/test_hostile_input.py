"""No input is a 500: whatever a client sends in a body, a query string or a header, the answer
is a success or a 4xx in the API's error shape (hypothesis), on SQLite and on PostgreSQL alike;
and a client cannot escape the throttle by rewriting X-Forwarded-For."""

from __future__ import annotations

import encodings.aliases
import json
import re

import pytest
from django.core.cache import cache
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from orders.models import Order
from orders.services import IDEMPOTENCY_KEY_MAX_LENGTH
from orders_project.parsers import MAX_DEPTH

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


def post_json(api_client, body: bytes, *, content_type: str = "application/json", **headers):
    return api_client.generic("POST", "/orders", body, content_type=content_type, **headers)


def assert_refused(response, status: int = 400) -> dict:
    assert response.status_code == status, (response.status_code, response.content[:300])
    body = response.json()
    assert isinstance(body["error"], str) and body["error"]
    return body


# --- the JSON body -----------------------------------------------------------------------------


@PROPERTY
@given(document=json_documents)
def test_any_json_document_is_an_order_or_a_400(api_client, document):
    response = post_json(api_client, json.dumps(document).encode())

    assert response.status_code in (201, 400), response.content[:300]
    if response.status_code == 400:
        assert_refused(response)


@PROPERTY
# Up to what the body limit (256 KiB) lets through: far past the interpreter's recursion limit.
@given(depth=st.integers(min_value=MAX_DEPTH + 1, max_value=40_000), opener=st.sampled_from(["[", '{"a":']))
@example(depth=40_000, opener='{"a":')
@example(depth=MAX_DEPTH + 1, opener="[")
def test_json_nested_too_deep_is_a_400(api_client, depth, opener):
    closer = "]" if opener == "[" else "}"
    body = (opener * depth + "1" + closer * depth).encode()

    response = post_json(api_client, body)

    assert "nested deeper" in assert_refused(response)["error"]


@PROPERTY
@given(data=st.binary(max_size=200))
@example(data=b"NaN")
@example(data=b'{"user_id": Infinity}')
@example(data=b"\xff\xfe")
def test_arbitrary_bytes_are_a_400(api_client, data):
    response = post_json(api_client, data)

    assert response.status_code in (201, 400)
    if response.status_code == 400:
        assert_refused(response)


@PROPERTY
@given(charset=st.sampled_from(sorted(set(encodings.aliases.aliases.values()) | {"rot13", "bogus"})), data=st.binary(max_size=50))
def test_any_declared_charset_is_read_or_refused(api_client, charset, data):
    response = post_json(api_client, data, content_type=f"application/json; charset={charset}")

    assert response.status_code in (201, 400), (charset, response.content[:300])


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


@PROPERTY
@given(key=header_text | st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=190, max_size=260))
@example(key="k" * IDEMPOTENCY_KEY_MAX_LENGTH)
@example(key="k" * (IDEMPOTENCY_KEY_MAX_LENGTH + 1))
@example(key="k" * 255)
def test_any_idempotency_key_is_honoured_or_refused(client_with_token, seed_order, key):
    body = json.dumps(seed_order).encode()

    response = post_json(client_with_token, body, HTTP_IDEMPOTENCY_KEY=key)

    if VALID_KEY.fullmatch(key):
        assert response.status_code == 201, response.content[:300]
        replay = post_json(client_with_token, body, HTTP_IDEMPOTENCY_KEY=key)
        assert (replay.status_code, replay["Idempotent-Replayed"]) == (201, "true")
        assert replay.json()["order_id"] == response.json()["order_id"]
    else:
        refused = assert_refused(response)
        assert refused["fields"]["Idempotency-Key"] == [
            f"1 to {IDEMPOTENCY_KEY_MAX_LENGTH} printable ASCII characters without spaces."
        ]


def test_the_longest_key_of_the_client_with_the_longest_id_fits(client_with_token, seed_order, django_user_model):
    user = django_user_model.objects.create(pk=2**31 - 1, username="last")  # auth_user.id is 32 bits
    client_with_token.force_authenticate(user)

    response = post_json(client_with_token, json.dumps(seed_order).encode(), HTTP_IDEMPOTENCY_KEY="k" * IDEMPOTENCY_KEY_MAX_LENGTH)

    assert response.status_code == 201
    assert len(Order.objects.get(pk=response.json()["order_id"]).idempotency_key) <= 255


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
