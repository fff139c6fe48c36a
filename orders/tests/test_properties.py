"""Property-based tests (hypothesis): order validation, and the order state machine with its money."""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass, field
from decimal import Decimal

import pytest
from django.conf import settings as django_settings
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from devtools.harness.sample_orders import create_test_order
from events.models import OutboxEvent
from orders import services
from orders.models import Order, OrderStatus
from orders.serializers import OrderCreateSerializer
from payments import services as payment_services
from payments.gateway import GatewayTimeout, RefundResult
from payments.models import Cancellation, Payment, PaymentStatus, Refund, RefundStatus
from payments.simulator import SimulatedGateway

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


# The state machine: random sequences of pipeline steps, client requests and operator actions on
# one order, against a model of what each step does to the order and its money. A refused step
# changes nothing; whatever the sequence, the money holds: refunded <= reserved <= charged, and a
# cancelled order keeps nothing.
TOTAL = Decimal("10.00")
# The model's own statement of where refunds and cancellations are taken, not the services' sets:
# a mistake in those must show as a difference.
REFUNDABLE = {OrderStatus.PAID, OrderStatus.PARTIALLY_REFUNDED}
CANCELLABLE = {OrderStatus.CREATED, OrderStatus.PROCESSING, OrderStatus.PAYMENT_FAILED, OrderStatus.FAILED, *REFUNDABLE}
GATEWAY = {"timeout_rate": 0.0, "refund_timeout_rate": 0.0, "refund_failure_rate": 0.0, "seed": "prop"}
APPROVE = SimulatedGateway(success_rate=1.0, **GATEWAY)
DECLINE = SimulatedGateway(success_rate=0.0, **GATEWAY)


class Unanswered:
    """A gateway that never answers: the charge's attempt stays pending (a charge under way)."""

    def charge(self, **call):
        raise GatewayTimeout("no answer")


class RefusingRefunds:
    def refund(self, **call):
        return RefundResult(approved=False, reference="", decline_reason="refused")


@dataclass
class Model:
    """What the order should be after each step: its status and its money."""

    status: str = OrderStatus.CREATED
    pending: bool = False  # a charge under way (a pending attempt)
    charged: bool = False  # an approved charge of TOTAL
    reserved: Decimal = Decimal("0")
    refunded: Decimal = Decimal("0")
    refunds: list = field(default_factory=list)  # [amount, status], oldest first
    cancelled: bool = False  # a cancellation was recorded

    def _first(self, status: str) -> int | None:
        return next((index for index, (_, refund_status) in enumerate(self.refunds) if refund_status == status), None)

    def _kept(self) -> Decimal:
        return (TOTAL if self.charged else Decimal("0")) - self.refunded

    def _add_refund(self, amount: Decimal) -> None:
        self.refunds.append([amount, RefundStatus.REQUESTED])
        self.reserved += amount

    def _settle(self) -> None:
        if self.status == OrderStatus.CANCELLING and not self.pending and self._first(RefundStatus.REQUESTED) is None:
            if self._kept() == 0:
                self.status = OrderStatus.CANCELLED

    # Each step: whether it acts (False: refused, nothing may change), having applied itself.
    def process(self) -> bool:
        if self.status != OrderStatus.CREATED:
            return False
        self.status = OrderStatus.PROCESSING
        return True

    def charge_unanswered(self) -> bool:
        if self.status != OrderStatus.PROCESSING or self.pending:
            return False
        self.pending = True
        return True

    def charge(self, approved: bool) -> bool:
        if self.status == OrderStatus.PROCESSING:
            self.status = OrderStatus.PAID if approved else OrderStatus.PAYMENT_FAILED
        elif not (self.status == OrderStatus.CANCELLING and self.pending):
            return False
        self.pending, self.charged = False, approved
        if self.status == OrderStatus.CANCELLING:
            # Approved after the order was cancelled: refunded in full.
            self._add_refund(TOTAL) if approved else self._settle()
        return True

    def park(self) -> bool:
        if self.status not in (OrderStatus.CREATED, OrderStatus.PROCESSING, OrderStatus.CANCELLING):
            return False
        self.status = OrderStatus.FAILED
        return True

    def retry(self) -> bool:
        if self.status != OrderStatus.PAYMENT_FAILED:
            return False
        self.status = OrderStatus.PROCESSING
        return True

    def cancel(self) -> bool:
        # Refused, or repeated while cancelling (the first answer, nothing more).
        if self.status not in CANCELLABLE:
            return False
        if not self.charged and not self.pending:
            self.status = OrderStatus.CANCELLED
        else:
            self.status = OrderStatus.CANCELLING
            if self.charged and TOTAL > self.reserved:
                self._add_refund(TOTAL - self.reserved)
            if self.charged:
                self._settle()
        self.cancelled = True
        return True

    def refund(self, amount: Decimal | None) -> bool:
        remaining = TOTAL - self.reserved
        if self.status not in REFUNDABLE or remaining <= 0 or (amount is not None and amount > remaining):
            return False
        self._add_refund(remaining if amount is None else amount)
        return True

    def give(self, approved: bool) -> bool:
        index = self._first(RefundStatus.REQUESTED)
        if index is None:
            return False
        amount = self.refunds[index][0]
        if not approved:
            self.refunds[index][1] = RefundStatus.FAILED
            self.reserved -= amount
            return True
        self.refunds[index][1] = RefundStatus.SUCCEEDED
        self.refunded += amount
        if self.status in REFUNDABLE:
            self.status = OrderStatus.PARTIALLY_REFUNDED if self._kept() > 0 else OrderStatus.REFUNDED
        self._settle()
        return True

    def retry_refund(self) -> bool:
        index = self._first(RefundStatus.FAILED)
        if index is None or self.refunds[index][0] > TOTAL - self.reserved:
            return False
        self.refunds[index][1] = RefundStatus.REQUESTED
        self.reserved += self.refunds[index][0]
        return True


def _created_event_id(order: Order) -> uuid.UUID:
    return OutboxEvent.objects.filter(key=str(order.id), event_type="ORDER_CREATED").first().event_id


def _charge(order, gateway):
    # Each charge step as a delivery of its own (a new event), as retries and re-drives are.
    return payment_services.charge_order(order_id=order.id, event_id=uuid.uuid4(), source="prop", gateway=gateway)


def _charge_unanswered(order):
    with contextlib.suppress(GatewayTimeout):
        return _charge(order, Unanswered())


def _oldest_refund(order, status: str) -> Refund | None:
    return Refund.objects.filter(order=order, status=status).order_by("created_at", "id").first()


def _give(gateway):
    def step(order):
        refund = _oldest_refund(order, RefundStatus.REQUESTED)
        if refund is None:
            return None
        # Its latest request (an operator's retry is announced anew).
        events = OutboxEvent.objects.filter(key=str(order.id), event_type="REFUND_REQUESTED").order_by("-id")
        event = next(event for event in events if event.payload["details"]["refund"]["id"] == str(refund.id))
        return payment_services.refund_payment(
            order_id=order.id, event_id=event.event_id, refund_id=refund.id, source="prop", gateway=gateway
        )

    return step


def _retry_refund(order):
    refund = _oldest_refund(order, RefundStatus.FAILED)
    if refund is None:
        return None
    return payment_services.retry_refund(refund_id=refund.id, requested_by="prop", source="prop")


def _refund(amount):
    def step(order):
        return payment_services.request_refund(order_id=order.id, requested_by="prop", amount=amount, source="prop")

    return step


# Name: (the step, its model).
STEPS = {
    "process": (lambda order: services.start_processing(order_id=order.id, event_id=_created_event_id(order), source="prop"), Model.process),
    "charge_unanswered": (_charge_unanswered, Model.charge_unanswered),
    "approve": (lambda order: _charge(order, APPROVE), lambda model: model.charge(True)),
    "decline": (lambda order: _charge(order, DECLINE), lambda model: model.charge(False)),
    "park": (
        lambda order: services.park_order(order_id=order.id, reason="r", error="e", original_event={}, source="prop"),
        Model.park,
    ),
    "retry": (lambda order: services.retry_payment(order_id=order.id, requested_by="prop"), Model.retry),
    "cancel": (
        lambda order: payment_services.cancel_order(order_id=order.id, requested_by="prop", source="prop"),
        Model.cancel,
    ),
    "give": (_give(APPROVE), lambda model: model.give(True)),
    "give_refused": (_give(RefusingRefunds()), lambda model: model.give(False)),
    "retry_refund": (_retry_refund, Model.retry_refund),
}
REFUSALS = (
    services.InvalidTransition,
    payment_services.NotCancellable,
    payment_services.NotRefundable,
    payment_services.NotRetryable,
)
refund_amounts = st.none() | st.decimals(min_value=Decimal("0.01"), max_value=TOTAL + 2, places=2)
any_step = st.sampled_from(sorted(STEPS)).map(lambda name: (name, None)) | st.tuples(st.just("refund"), refund_amounts)
# Random steps seldom get an order paid: most sequences start some way down the forward path.
FORWARD = st.sampled_from(["", "process", "process charge_unanswered", "process approve", "process approve approve"])
steps = st.builds(
    lambda forward, rest: [(name, None) for name in forward.split()] + rest,
    FORWARD,
    st.lists(any_step, min_size=2, max_size=12),
)


def _observed(order: Order) -> Model:
    approved = Payment.objects.filter(order=order, status=PaymentStatus.APPROVED).first()
    return Model(
        status=Order.objects.get(pk=order.pk).status,
        pending=Payment.objects.filter(order=order, status=PaymentStatus.PENDING).exists(),
        charged=approved is not None,
        reserved=approved.refund_reserved if approved else Decimal("0"),
        refunded=approved.refunded_amount if approved else Decimal("0"),
        refunds=[[amount, status] for amount, status in Refund.objects.filter(order=order).order_by("created_at", "id").values_list("amount", "status")],
        cancelled=Cancellation.objects.filter(order=order).exists(),
    )


def _written(order: Order) -> tuple:
    return _observed(order), order.timeline.count(), OutboxEvent.objects.filter(key=str(order.id)).count()


@pytest.mark.django_db
@hypothesis_settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(steps)
# The paths through the money, each taken at least once.
@example([("process", None), ("approve", None), ("refund", Decimal("3.00")), ("give", None), ("cancel", None), ("give", None)])
@example([("process", None), ("charge_unanswered", None), ("cancel", None), ("cancel", None), ("approve", None), ("give", None)])
@example([("process", None), ("charge_unanswered", None), ("park", None), ("cancel", None), ("decline", None)])
@example([("process", None), ("approve", None), ("cancel", None), ("give_refused", None), ("cancel", None), ("retry_refund", None), ("give", None)])
@example([("process", None), ("approve", None), ("refund", None), ("refund", Decimal("0.01")), ("give", None), ("cancel", None)])
# A refund that failed keeps a cancelled order's money, and so the order CANCELLING.
@example([("process", None), ("approve", None), ("refund", Decimal("3.00")), ("cancel", None), ("give_refused", None), ("give", None)])
@example([("process", None), ("decline", None), ("retry", None), ("approve", None), ("refund", Decimal("10.01")), ("refund", Decimal("9.99")), ("give", None)])
def test_any_sequence_of_steps_follows_the_state_machine_and_keeps_the_money_right(steps):
    order = create_test_order(user_id="prop", email="prop@example.com", price=str(TOTAL), correlation_id="prop")
    model = Model()
    for name, amount in steps:
        step, apply = (_refund(amount), lambda model: model.refund(amount)) if name == "refund" else STEPS[name]
        before = _written(order)
        acts = apply(model)
        try:
            outcome = step(order)
        except REFUSALS:
            outcome = False
        observed = _observed(order)
        assert observed == model, f"{name} {amount or ''} from {before[0].status}"
        if not acts:
            # Refused, or reported as nothing done; a cancel repeated while cancelling answers
            # with the first cancellation.
            assert outcome in (False, None) or (name == "cancel" and model.status == OrderStatus.CANCELLING)
            assert _written(order) == before, f"{name} {amount or ''} from {before[0].status} changed something"
        elif observed.status != before[0].status:
            assert services.can_transition(from_status=before[0].status, to_status=observed.status)
        # Never more refunded than asked back, nor asked back than charged; a cancelled order keeps nothing.
        assert observed.refunded <= observed.reserved <= (TOTAL if observed.charged else 0)
        if observed.status == OrderStatus.CANCELLED:
            assert observed.refunded == (TOTAL if observed.charged else 0)
            assert not observed.pending and all(status != RefundStatus.REQUESTED for _, status in observed.refunds)
        # The last timeline entry is the current status.
        assert order.timeline.last().status == observed.status
        # Each event of the order has an id of its own, however often a status comes back.
        event_ids = list(OutboxEvent.objects.filter(key=str(order.id)).values_list("event_id", flat=True))
        assert len(set(event_ids)) == len(event_ids)
