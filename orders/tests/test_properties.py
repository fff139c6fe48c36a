"""Property-based tests (hypothesis): order validation and the order state machine."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from django.conf import settings as django_settings
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from devtools.harness.sample_orders import create_test_order
from events.models import OutboxEvent
from orders import services
from orders.models import Order, OrderStatus
from orders.serializers import OrderCreateSerializer

LIMITS = django_settings.ORDER_LIMITS
MAX_PRICE = Decimal(LIMITS["max_price"])
# Text a person could type: no NUL or surrogates, not only spaces (both are refused, on purpose).
text = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=64).filter(str.strip)
# A price as the JSON parser hands it on: a number (an int, or a Decimal for a fraction) or a string.
cents = st.decimals(min_value=Decimal("0.01"), max_value=MAX_PRICE, places=2, allow_nan=False)
prices = st.one_of(cents, cents.map(str), st.integers(min_value=1, max_value=int(MAX_PRICE)))
items = st.fixed_dictionaries(
    {
        "product_id": text,
        "product_name": text,
        "quantity": st.integers(min_value=1, max_value=LIMITS["max_quantity"]),
        "price": prices,
    }
)
valid_orders = st.fixed_dictionaries(
    {"user_id": text, "email": st.emails().filter(lambda e: len(e) <= 254), "items": st.lists(items, min_size=1, max_size=10)}
)
# Any parsed JSON value: JSON numbers arrive as ints, or Decimals when they have a fraction.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.decimals(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
FAST = hypothesis_settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ITEM_FIELDS = ("product_id", "product_name", "quantity", "price")


def expected_item(item: dict) -> dict:
    return {
        "product_id": item["product_id"].strip(),
        "product_name": item["product_name"].strip(),
        "quantity": item["quantity"],
        "price": Decimal(item["price"]),
    }


def refused_on(order: dict, field: str, value, data) -> None:
    """Puts ``value`` in ``field`` (in one item, drawn, for an item field) of an otherwise valid
    order, and checks that the order is refused with an error on that field and nowhere else."""
    if field in ITEM_FIELDS:
        position = data.draw(st.integers(min_value=0, max_value=len(order["items"]) - 1))
        order["items"][position][field] = value
    else:
        order[field] = value

    serializer = OrderCreateSerializer(data=order)

    assert not serializer.is_valid()
    errors = serializer.errors
    if field in ITEM_FIELDS:
        assert list(errors) == ["items"] and list(errors["items"]) == [position]
        errors = errors["items"][position]
    assert list(errors) == [field], errors


@FAST
@given(valid_orders)
def test_every_valid_order_is_accepted_with_its_values(order):
    serializer = OrderCreateSerializer(data=order)

    assert serializer.is_valid(), serializer.errors
    validated = serializer.validated_data
    # Text is trimmed and prices are amounts, whatever their JSON form.
    assert validated == {
        "user_id": order["user_id"].strip(),
        "email": order["email"],
        "items": [expected_item(item) for item in order["items"]],
    }
    assert all(item["price"].as_tuple().exponent == -2 for item in validated["items"])
    total = services.order_total(items=validated["items"])
    assert total == sum(Decimal(item["price"]) * item["quantity"] for item in order["items"])
    assert total.as_tuple().exponent == -2  # cents, never float noise


def longer_than(limit: int):
    """Text just over ``limit`` characters once trimmed: a limit off by one lets it in."""
    printable = st.characters(blacklist_categories=("Cs", "Cc", "Z"))
    return st.text(alphabet=printable, min_size=limit + 1, max_size=limit + 2).filter(lambda s: len(s.strip()) > limit)


BLANK = st.text(alphabet=" \t\n", max_size=3)
BREAKERS = {
    "user_id": st.one_of(BLANK, longer_than(64), st.just("a\x00b")),
    "email": st.one_of(BLANK, st.text(alphabet=st.characters(blacklist_characters="@"), min_size=1), st.just("a@b")),
    "product_id": st.one_of(BLANK, longer_than(64)),
    "product_name": st.one_of(BLANK, longer_than(200)),
    "quantity": st.one_of(
        st.sampled_from([0, LIMITS["max_quantity"] + 1]),
        st.integers(max_value=0),
        st.integers(min_value=LIMITS["max_quantity"] + 1),
    ),
    "price": st.one_of(
        st.sampled_from([Decimal("0"), Decimal("-0.01"), MAX_PRICE + Decimal("0.01")]),
        st.decimals(max_value=Decimal("0"), places=2, allow_nan=False),
        st.decimals(min_value=MAX_PRICE + Decimal("0.01"), max_value=MAX_PRICE * 10, places=2),
        st.decimals(min_value=Decimal("0.001"), max_value=Decimal("1000"), places=3, allow_nan=False).filter(
            lambda d: d != d.quantize(Decimal("0.01"))
        ),
        st.sampled_from(["", "abc", "NaN", "Infinity", "1,50"]),
    ),
}


@FAST
@given(valid_orders, st.sampled_from(sorted(BREAKERS)), st.data())
def test_one_bad_value_refuses_the_order_on_that_field(order, field, data):
    refused_on(order, field, data.draw(BREAKERS[field]), data)


# The JSON types each field takes; bools are not numbers.
JSON_TYPES = {
    "user_id": (str,),
    "email": (str,),
    "product_id": (str,),
    "product_name": (str,),
    "quantity": (int,),
    "price": (int, Decimal, str),
}


def is_wrong_type(value, field: str) -> bool:
    return isinstance(value, bool) or not isinstance(value, JSON_TYPES[field])


# Values a lax field would take for another type: a number for text, text or a bool for a number.
near_misses = st.one_of(
    st.booleans(),
    st.integers(min_value=1, max_value=9).flatmap(lambda n: st.sampled_from([n, str(n), Decimal(n), Decimal(f"{n}.0")])),
    st.lists(st.sampled_from(["u1", 1]), min_size=1, max_size=1),
)


@FAST
@given(valid_orders, st.sampled_from(sorted(JSON_TYPES)), st.data())
def test_a_value_of_the_wrong_json_type_refuses_the_order_on_that_field(order, field, data):
    wrong = st.one_of(near_misses, json_values).filter(lambda value: is_wrong_type(value, field))
    refused_on(order, field, data.draw(wrong), data)


@FAST
@given(valid_orders, st.data())
def test_containers_of_the_wrong_json_type_are_refused(order, data):
    """The body must be an object, its items a list, and each item an object."""
    not_an_object = json_values.filter(lambda value: not isinstance(value, dict))
    where = data.draw(st.sampled_from(["body", "items", "item"]))
    if where == "body":
        body, expected = data.draw(not_an_object), {"non_field_errors"}
    elif where == "items":
        order["items"] = data.draw(json_values.filter(lambda value: not isinstance(value, list)))
        body, expected = order, {"items"}
    else:
        position = data.draw(st.integers(min_value=0, max_value=len(order["items"]) - 1))
        order["items"][position] = data.draw(not_an_object)
        body, expected = order, {"items"}

    serializer = OrderCreateSerializer(data=body)

    assert not serializer.is_valid()
    assert set(serializer.errors) == expected
    if where == "item":
        assert list(serializer.errors["items"]) == [position]


# Item counts around both ends of the allowed range, 1 to max_items.
item_counts = st.one_of(
    st.integers(min_value=0, max_value=3),
    st.integers(min_value=LIMITS["max_items"] - 1, max_value=LIMITS["max_items"] + 1),
)


@FAST
@given(valid_orders, item_counts)
def test_an_order_is_accepted_with_1_to_max_items_items(order, count):
    order["items"] = (order["items"] * count)[:count]

    serializer = OrderCreateSerializer(data=order)

    if 1 <= count <= LIMITS["max_items"]:
        assert serializer.is_valid(), serializer.errors
        assert len(serializer.validated_data["items"]) == count
    else:
        assert not serializer.is_valid()
        assert list(serializer.errors) == ["items"]


# The state machine: random sequences of pipeline steps and operator actions on one order.
def _created_event_id(order: Order) -> uuid.UUID:
    return OutboxEvent.objects.filter(key=str(order.id), event_type="ORDER_CREATED").first().event_id


def _step_process(order):
    return services.start_processing(order_id=order.id, event_id=_created_event_id(order), source="prop")


def _step_pay(approved):
    def step(order):
        return services.record_payment_outcome(order_id=order.id, approved=approved, message="m", source="prop")

    return step


def _step_park(order):
    return services.park_order(order_id=order.id, reason="r", error="e", original_event={}, source="prop")


def _step_cancel(order):
    return services.cancel_order(order_id=order.id, requested_by="prop")


def _step_retry(order):
    return services.retry_payment(order_id=order.id, requested_by="prop")


STEPS = {
    "process": (_step_process, {OrderStatus.CREATED: OrderStatus.PROCESSING}),
    "approve": (_step_pay(True), {OrderStatus.PROCESSING: OrderStatus.PAID}),
    "decline": (_step_pay(False), {OrderStatus.PROCESSING: OrderStatus.PAYMENT_FAILED}),
    "park": (_step_park, {OrderStatus.CREATED: OrderStatus.FAILED, OrderStatus.PROCESSING: OrderStatus.FAILED}),
    "cancel": (
        _step_cancel,
        {s: OrderStatus.CANCELLED for s in (OrderStatus.CREATED, OrderStatus.PAYMENT_FAILED, OrderStatus.FAILED)},
    ),
    "retry": (_step_retry, {OrderStatus.PAYMENT_FAILED: OrderStatus.PROCESSING}),
}


@pytest.mark.django_db
@hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.sampled_from(sorted(STEPS)), max_size=8))
def test_any_sequence_of_steps_follows_the_state_machine(steps):
    order = create_test_order(user_id="prop", email="prop@example.com", correlation_id="prop")
    expected = OrderStatus.CREATED
    processed = False
    for name in steps:
        step, moves = STEPS[name]
        if name == "process" and processed:
            # The ORDER_CREATED event was applied already: a redelivery changes nothing.
            assert step(order) is False
            continue
        if expected in moves:
            step(order)
            expected = moves[expected]
            processed |= name == "process"
        else:
            before = (Order.objects.get(pk=order.pk).status, order.timeline.count(), OutboxEvent.objects.count())
            try:
                outcome = step(order)
            except services.InvalidTransition:
                outcome = False
            assert outcome in (False, None)
            after = (Order.objects.get(pk=order.pk).status, order.timeline.count(), OutboxEvent.objects.count())
            assert after == before, f"{name} from {expected} changed something"
        assert Order.objects.get(pk=order.pk).status == expected
    # The last timeline entry is the current status.
    assert order.timeline.last().status == expected
