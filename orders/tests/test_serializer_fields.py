"""The order request's strict fields: each takes its own JSON type only (a number is not text, a
bool is not a number), keeps the API's limits, and words each refusal as the API's 400 body does."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.conf import settings
from rest_framework import serializers

from orders.serializers import OrderCreateSerializer, OrderItemInputSerializer

LIMITS = settings.ORDER_LIMITS
MAX_PRICE = Decimal(LIMITS["max_price"])


def field(name: str) -> serializers.Field:
    """The field ``name`` of the order, or of one of its items, as the API declares it."""
    fields = OrderCreateSerializer().fields
    return fields[name] if name in fields else OrderItemInputSerializer().fields[name]


ACCEPTED = {
    "text": ("user_id", "customer_123", "customer_123"),
    "text trimmed": ("product_name", "  Premium Widget\n", "Premium Widget"),
    "longest user_id": ("user_id", "u" * 64, "u" * 64),
    "email": ("email", "customer@example.com", "customer@example.com"),
    "email trimmed": ("email", " customer@example.com ", "customer@example.com"),
    "quantity": ("quantity", 2, 2),
    "largest quantity": ("quantity", LIMITS["max_quantity"], LIMITS["max_quantity"]),
    "price int": ("price", 30, Decimal("30.00")),
    "price string": ("price", "30", Decimal("30.00")),
    "price decimal": ("price", Decimal("29.99"), Decimal("29.99")),
    "price one decimal": ("price", Decimal("29.9"), Decimal("29.90")),
    "price exponent string": ("price", "1e2", Decimal("100.00")),
    "smallest price": ("price", Decimal("0.01"), Decimal("0.01")),
    "largest price": ("price", MAX_PRICE, MAX_PRICE),
}

NOT_A_STRING = ("Not a valid string.", "not_a_string")
NOT_AN_INTEGER = ("A valid integer is required.", "invalid")
NOT_A_NUMBER = ("A valid number is required.", "invalid")
NULL = ("This field may not be null.", "null")
BLANK = ("This field may not be blank.", "blank")

REFUSED = {
    "user_id number": ("user_id", 123, NOT_A_STRING),
    "user_id decimal": ("user_id", Decimal("1.5"), NOT_A_STRING),
    "user_id boolean": ("user_id", True, NOT_A_STRING),
    "user_id list": ("user_id", ["u1"], NOT_A_STRING),
    "user_id object": ("user_id", {"id": "u1"}, NOT_A_STRING),
    "user_id null": ("user_id", None, NULL),
    "user_id empty": ("user_id", "", BLANK),
    "user_id blank": ("user_id", " \t", BLANK),
    "user_id NUL": ("user_id", "u\x001", ("Null characters are not allowed.", "null_characters_not_allowed")),
    "user_id too long": ("user_id", "u" * 65, ("Ensure this field has no more than 64 characters.", "max_length")),
    "product_name too long": ("product_name", "x" * 201, ("Ensure this field has no more than 200 characters.", "max_length")),
    "email number": ("email", 1, NOT_A_STRING),
    "email list": ("email", ["a@example.com"], NOT_A_STRING),
    "email invalid": ("email", "not-an-email", ("Enter a valid email address.", "invalid")),
    "quantity string": ("quantity", "2", NOT_AN_INTEGER),
    "quantity boolean": ("quantity", True, NOT_AN_INTEGER),
    "quantity decimal": ("quantity", Decimal("2.0"), NOT_AN_INTEGER),
    "quantity float": ("quantity", 2.0, NOT_AN_INTEGER),
    "quantity list": ("quantity", [2], NOT_AN_INTEGER),
    "quantity null": ("quantity", None, NULL),
    "quantity zero": ("quantity", 0, ("Ensure this value is greater than or equal to 1.", "min_value")),
    "quantity too large": (
        "quantity",
        LIMITS["max_quantity"] + 1,
        (f"Ensure this value is less than or equal to {LIMITS['max_quantity']}.", "max_value"),
    ),
    "price boolean": ("price", True, NOT_A_NUMBER),
    "price float": ("price", 9.99, NOT_A_NUMBER),
    "price text": ("price", "abc", NOT_A_NUMBER),
    "price NaN string": ("price", "NaN", NOT_A_NUMBER),
    "price NaN": ("price", Decimal("NaN"), NOT_A_NUMBER),
    "price infinite": ("price", "Infinity", NOT_A_NUMBER),
    "price list": ("price", [1], NOT_A_NUMBER),
    "price object": ("price", {"amount": 1}, NOT_A_NUMBER),
    "price null": ("price", None, NULL),
    "price zero": ("price", 0, ("Ensure this value is greater than or equal to 0.01.", "min_value")),
    "price three decimals": ("price", "1.234", ("Ensure that there are no more than 2 decimal places.", "max_decimal_places")),
    "price too large": (
        "price",
        MAX_PRICE + Decimal("0.01"),
        (f"Ensure this value is less than or equal to {MAX_PRICE}.", "max_value"),
    ),
    "price too many digits": ("price", 10**12, ("Ensure that there are no more than 12 digits in total.", "max_digits")),
}


@pytest.mark.parametrize(("name", "value", "expected"), ACCEPTED.values(), ids=ACCEPTED.keys())
def test_a_value_of_the_right_type_is_accepted(name, value, expected):
    result = field(name).run_validation(value)

    # The string form tells 30.00 from 30: amounts are always in cents.
    assert (type(result), str(result)) == (type(expected), str(expected))


@pytest.mark.parametrize(("name", "value", "error"), REFUSED.values(), ids=REFUSED.keys())
def test_a_bad_value_is_refused_with_its_message(name, value, error):
    with pytest.raises(serializers.ValidationError) as refused:
        field(name).run_validation(value)

    assert [(str(detail), detail.code) for detail in refused.value.detail] == [error]


def test_errors_name_the_field_and_the_item():
    item = {"product_id": "p1", "product_name": "Widget", "quantity": 1, "price": Decimal("9.99")}
    bad = {"user_id": "u1", "email": "not-an-email", "items": [item, {**item, "quantity": 0, "price": "1.234"}]}
    serializer = OrderCreateSerializer(data=bad)

    assert not serializer.is_valid()
    assert serializer.errors == {
        "email": ["Enter a valid email address."],
        "items": {
            1: {
                "quantity": ["Ensure this value is greater than or equal to 1."],
                "price": ["Ensure that there are no more than 2 decimal places."],
            }
        },
    }
