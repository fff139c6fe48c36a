"""Property-based tests (hypothesis): order validation and the order state machine."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from django.conf import settings as django_settings
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from events.models import OutboxEvent
from orders import services
from orders.models import Order, OrderStatus
from rest_framework import serializers

from orders.serializers import OrderCreateSerializer
from orders_project.testing import create_test_order

LIMITS = django_settings.ORDER_LIMITS
# Text a person could type: no NUL or surrogates, not only spaces (both are refused, on purpose).
text = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=64).filter(str.strip)
prices = st.decimals(min_value=Decimal("0.01"), max_value=Decimal(LIMITS["max_price"]), places=2, allow_nan=False)
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
FAST = hypothesis_settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(valid_orders)
def test_every_valid_order_is_accepted_with_an_exact_total(order):
    serializer = OrderCreateSerializer(data=order)

    assert serializer.is_valid(), serializer.errors
    total = services.order_total(items=serializer.validated_data["items"])
    assert total == sum(item["price"] * item["quantity"] for item in order["items"])
    assert total.as_tuple().exponent == -2  # cents, never float noise


BREAKERS = {
    "quantity": st.one_of(st.integers(max_value=0), st.integers(min_value=LIMITS["max_quantity"] + 1), st.text(), st.booleans(), st.floats()),
    "price": st.one_of(
        st.decimals(max_value=Decimal("0"), places=2, allow_nan=False),
        st.decimals(min_value=Decimal("0.001"), max_value=Decimal("1000"), places=3, allow_nan=False).filter(
            lambda d: d != d.quantize(Decimal("0.01"))
        ),
        st.booleans(),
        st.none(),
        st.text(alphabet="abc-", min_size=1),
    ),
    "product_id": st.one_of(st.just(""), st.text(min_size=65, max_size=80), st.integers(), st.none()),
}


@FAST
@given(valid_orders, st.sampled_from(sorted(BREAKERS)), st.data())
def test_one_bad_item_field_makes_the_whole_order_invalid(order, field, data):
    position = data.draw(st.integers(min_value=0, max_value=len(order["items"]) - 1))
    order["items"][position][field] = data.draw(BREAKERS[field])

    serializer = OrderCreateSerializer(data=order)

    assert not serializer.is_valid()
    assert field in serializer.errors["items"][position]


class DrfPathOnly(OrderCreateSerializer):
    """The same fields through DRF's generic path only, without DeclaredFieldsFastPath."""

    def to_internal_value(self, data):
        return serializers.Serializer.to_internal_value(self, data)

    def run_validators(self, value):
        serializers.Serializer.run_validators(self, value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
    | st.decimals(allow_nan=False, allow_infinity=False, places=3),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)


@FAST
@given(valid_orders, st.data())
def test_the_fast_path_decides_exactly_as_drf(order, data):
    """Whatever the body, valid or broken anywhere, both paths give the same verdict, the same
    values and the same errors."""
    if data.draw(st.booleans()):
        position = data.draw(st.integers(min_value=0, max_value=len(order["items"]) - 1))
        field = data.draw(st.sampled_from(sorted(BREAKERS)))
        order["items"][position][field] = data.draw(BREAKERS[field] | json_values)
    if data.draw(st.booleans()):
        length = data.draw(st.sampled_from([0, LIMITS["max_items"], LIMITS["max_items"] + 1]))
        order["items"] = order["items"][:1] * length
    if data.draw(st.booleans()):
        key = data.draw(st.sampled_from(["user_id", "email", "items", "extra"]))
        order[key] = data.draw(json_values)
    if data.draw(st.booleans()):
        del order[data.draw(st.sampled_from(sorted(order)))]
    body = data.draw(st.sampled_from([order, order, order, [order], "order", None]))

    fast, drf = OrderCreateSerializer(data=body), DrfPathOnly(data=body)

    assert fast.is_valid() == drf.is_valid()
    assert fast.errors == drf.errors
    if drf.is_valid():
        assert fast.validated_data == drf.validated_data


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
    return services.reopen_for_payment(order_id=order.id, attempt=2, requested_by="prop")


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
