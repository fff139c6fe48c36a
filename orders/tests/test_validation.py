"""Every bad request is refused with a clear error and writes nothing."""

from __future__ import annotations

import copy
import json

import pytest

from events.models import OutboxEvent
from orders.models import Order, OrderItem, OrderTimelineEntry

pytestmark = pytest.mark.django_db

GOOD_ITEM = {"product_id": "p1", "product_name": "Widget", "quantity": 1, "price": 9.99}
GOOD = {"user_id": "u1", "email": "a@example.com", "items": [GOOD_ITEM]}


def without(field):
    body = copy.deepcopy(GOOD)
    del body[field]
    return body


def with_fields(**fields):
    return {**copy.deepcopy(GOOD), **fields}


def with_item(**fields):
    return with_fields(items=[{**GOOD_ITEM, **fields}])


def without_item_field(field):
    item = dict(GOOD_ITEM)
    del item[field]
    return with_fields(items=[item])


BAD_BODIES = {
    "missing user_id": (without("user_id"), ["user_id"]),
    "missing email": (without("email"), ["email"]),
    "missing items": (without("items"), ["items"]),
    "empty user_id": (with_fields(user_id=""), ["user_id"]),
    "blank user_id": (with_fields(user_id="   "), ["user_id"]),
    "user_id number": (with_fields(user_id=123), ["user_id"]),
    "user_id too long": (with_fields(user_id="u" * 65), ["user_id"]),
    "null email": (with_fields(email=None), ["email"]),
    "bad email": (with_fields(email="not-an-email"), ["email"]),
    "email list": (with_fields(email=["a@example.com"]), ["email"]),
    "empty items": (with_fields(items=[]), ["items"]),
    "items not a list": (with_fields(items={"product_id": "p1"}), ["items"]),
    "item not an object": (with_fields(items=["p1"]), ["items"]),
    "too many items": (with_fields(items=[GOOD_ITEM] * 101), ["items"]),
    "missing product_id": (without_item_field("product_id"), ["items"]),
    "missing product_name": (without_item_field("product_name"), ["items"]),
    "missing quantity": (without_item_field("quantity"), ["items"]),
    "missing price": (without_item_field("price"), ["items"]),
    "empty product_name": (with_item(product_name=""), ["items"]),
    "quantity zero": (with_item(quantity=0), ["items"]),
    "quantity negative": (with_item(quantity=-3), ["items"]),
    "quantity fractional": (with_item(quantity=1.5), ["items"]),
    "quantity string": (with_item(quantity="2"), ["items"]),
    "quantity boolean": (with_item(quantity=True), ["items"]),
    "quantity absurd": (with_item(quantity=10**9), ["items"]),
    "price zero": (with_item(price=0), ["items"]),
    "price negative": (with_item(price=-1.5), ["items"]),
    "price three decimals": (with_item(price=1.234), ["items"]),
    "price not a number": (with_item(price="abc"), ["items"]),
    "price NaN string": (with_item(price="NaN"), ["items"]),
    "price boolean": (with_item(price=True), ["items"]),
    "price absurd": (with_item(price=10**12), ["items"]),
    "price object": (with_item(price={"amount": 1}), ["items"]),
    "body is a list": ([GOOD], ["non_field_errors"]),
    "body is a string": ("order", ["non_field_errors"]),
}


def assert_nothing_written():
    assert Order.objects.count() == 0
    assert OrderItem.objects.count() == 0
    assert OrderTimelineEntry.objects.count() == 0
    assert OutboxEvent.objects.count() == 0


def test_good_body_is_accepted(api_client):
    """The baseline for the cases below: each differs from this body in one way only."""
    assert api_client.post("/orders", GOOD, format="json").status_code == 201


@pytest.mark.parametrize(("body", "fields"), BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_bad_body_is_refused_with_field_errors(api_client, body, fields):
    response = api_client.post("/orders", body, format="json")

    assert response.status_code == 400, response.content
    payload = response.json()
    assert payload["error"] == "Invalid request"
    assert sorted(payload["fields"]) == fields
    assert_nothing_written()


def test_item_errors_name_the_item_and_field(api_client):
    body = with_fields(items=[GOOD_ITEM, {**GOOD_ITEM, "quantity": 0, "price": 1.234}])

    fields = api_client.post("/orders", body, format="json").json()["fields"]

    assert set(fields["items"]) == {"1"}
    assert set(fields["items"]["1"]) == {"quantity", "price"}


# The whole 400 answer where the shape of the body is wrong, not one field's value.
WORDED = {
    "missing user_id": {"user_id": ["This field is required."]},
    "empty items": {"items": {"non_field_errors": ["This list may not be empty."]}},
    "too many items": {"items": {"non_field_errors": ["Ensure this field has no more than 100 elements."]}},
    "items not a list": {"items": {"non_field_errors": ['Expected a list of items but got type "dict".']}},
    "item not an object": {"items": {"0": {"non_field_errors": ["Invalid data. Expected a dictionary, but got str."]}}},
    "missing price": {"items": {"0": {"price": ["This field is required."]}}},
    "body is a list": {"non_field_errors": ["Invalid data. Expected a dictionary, but got list."]},
    "body is a string": {"non_field_errors": ["Invalid data. Expected a dictionary, but got str."]},
}


@pytest.mark.parametrize(("case", "fields"), WORDED.items(), ids=WORDED.keys())
def test_a_badly_shaped_body_is_refused_with_exact_errors(api_client, case, fields):
    body = BAD_BODIES[case][0]

    response = api_client.post("/orders", body, format="json")

    assert response.status_code == 400
    assert response.json() == {"error": "Invalid request", "fields": fields}


@pytest.mark.parametrize(
    "raw", [b"{not json", b"", b'{"user_id": "u1",', b"\xff\xfe\x00", b"[1, 2"], ids=["garbage", "empty", "truncated", "not utf-8", "open list"]
)
def test_malformed_json_is_refused(api_client, raw):
    response = api_client.generic("POST", "/orders", raw, content_type="application/json")

    assert response.status_code == 400
    assert "error" in response.json()
    assert_nothing_written()


def test_non_json_content_type_is_refused(api_client):
    response = api_client.generic("POST", "/orders", "user_id=u1", content_type="application/x-www-form-urlencoded")

    assert response.status_code == 415
    assert_nothing_written()


def test_body_over_the_limit_is_refused_before_parsing(api_client, settings):
    settings.MAX_REQUEST_BODY_BYTES = 1024
    body = with_fields(user_id="u1", items=[{**GOOD_ITEM, "product_name": "x" * 150}] * 20)
    raw = json.dumps(body).encode()
    assert len(raw) > 1024

    response = api_client.generic("POST", "/orders", raw, content_type="application/json")

    assert response.status_code == 413
    assert "too large" in response.json()["error"]
    assert_nothing_written()


@pytest.mark.parametrize("key", ["", "has space", "k" * 256, "caf\u00e9"], ids=["empty", "space", "too long", "non-ascii"])
def test_bad_idempotency_key_is_refused(api_client, key):
    response = api_client.post("/orders", GOOD, format="json", HTTP_IDEMPOTENCY_KEY=key)

    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["fields"]
    assert_nothing_written()


@pytest.mark.parametrize("price", ["30", 30, "30.00", 30.0], ids=["string", "int", "string cents", "float"])
def test_equivalent_prices_are_the_same_amount(api_client, price):
    response = api_client.post("/orders", with_item(price=price, quantity=2), format="json")

    assert response.status_code == 201
    assert str(Order.objects.get().total_amount) == "60.00"
