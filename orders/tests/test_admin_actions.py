"""Admin actions: retry a payment, cancel an order (the form on its page), re-publish a dead letter."""

from __future__ import annotations

import base64
import json
import uuid

import pytest
from django.db import IntegrityError
from django.urls import reverse

from devtools.harness.admin_orders import APPROVE, DECLINE, archive_outbox_dead_letter, charged_order, created_event, new_order
from events import services as event_services
from events.models import DeadLetter, OutboxEvent
from orders import services
from orders.models import OrderStatus
from payments import services as payment_services
from payments.models import Payment, PaymentStatus, SimulatedCharge

pytestmark = pytest.mark.django_db

def run_action(client, model_path: str, action: str, *pks) -> str:
    response = client.post(
        f"/admin/{model_path}/", {"action": action, "_selected_action": [str(pk) for pk in pks]}, follow=True
    )
    assert response.status_code == 200
    return response.content.decode()


def test_retry_payment_charges_a_new_attempt_and_records_it(staff_client):
    order = charged_order(DECLINE)
    assert order.status == OrderStatus.PAYMENT_FAILED

    page = run_action(staff_client, "orders/order", "retry_payment", order.pk)

    assert "Payment retry requested: 1" in page
    order.refresh_from_db()
    assert order.status == OrderStatus.PROCESSING
    retry_event = OutboxEvent.objects.filter(key=str(order.id), event_type="ORDER_PROCESSING").latest("id")
    assert retry_event.payload["metadata"]["attempt"] == 2
    assert order.timeline.filter(message="Payment retry, attempt 2, requested by admin:operator").exists()

    payment_services.charge_order(order_id=order.id, event_id=retry_event.event_id, source="test", gateway=APPROVE)

    order.refresh_from_db()
    assert order.status == OrderStatus.PAID
    assert list(Payment.objects.filter(order=order).values_list("attempt", "status")) == [(1, "DECLINED"), (2, "APPROVED")]
    assert SimulatedCharge.objects.filter(idempotency_key__startswith=str(order.id)).count() == 2


def test_retry_payment_is_refused_for_an_order_that_did_not_fail_payment(staff_client):
    order = charged_order(APPROVE)

    page = run_action(staff_client, "orders/order", "retry_payment", order.pk)

    assert "cannot go from PAID to PROCESSING: it is paid: refund it, or cancel it (which refunds it)" in page
    order.refresh_from_db()
    assert order.status == OrderStatus.PAID
    assert Payment.objects.filter(order=order).count() == 1


def test_an_order_can_never_have_two_approved_payments():
    order = charged_order(APPROVE)
    with pytest.raises(IntegrityError):
        Payment.objects.create(
            order=order, attempt=2, idempotency_key=f"{order.id}:2", amount=order.total_amount, currency="USD",
            status=PaymentStatus.APPROVED,
        )


def cancel(client, order, reason: str = "") -> str:
    """Submit the order page's cancel form; the order page it leads back to."""
    response = client.post(reverse("admin:payments_cancel_order", args=[order.pk]), {"reason": reason}, follow=True)
    assert response.redirect_chain == [(reverse("admin:orders_order_change", args=[order.pk]), 302)]
    return response.content.decode()


def test_cancel_an_unpaid_order_and_the_pipeline_leaves_it_alone(staff_client):
    order = new_order()

    page = cancel(staff_client, order)

    assert f"Cancellation of order {order.pk} recorded: it is CANCELLED" in page
    order.refresh_from_db()
    assert order.status == OrderStatus.CANCELLED
    assert order.timeline.filter(event_type="ORDER_CANCELLED", message="Cancelled by admin:operator").exists()
    # The ORDER_CREATED event may still be on its way: it finds a cancelled order and does nothing.
    envelope = created_event(order)
    assert services.start_processing(order_id=order.id, event_id=envelope["event_id"], source="test") is False
    assert payment_services.charge_order(order_id=order.id, event_id=envelope["event_id"], source="test") is None
    assert not Payment.objects.filter(order=order).exists()


def test_a_processing_order_cancelled_before_its_charge_is_never_charged(staff_client):
    order = new_order()
    envelope = created_event(order)
    services.start_processing(order_id=order.id, event_id=envelope["event_id"], source="test")

    page = cancel(staff_client, order, reason="ordered twice")

    assert "it is CANCELLED" in page and "Cancelled by admin:operator: ordered twice" in page
    assert payment_services.charge_order(order_id=order.id, event_id=envelope["event_id"], source="test", gateway=APPROVE) is None
    assert not SimulatedCharge.objects.filter(order_id=str(order.id)).exists()


def test_a_cancelled_order_cannot_be_cancelled_again_and_the_operator_is_told_why(staff_client):
    order = new_order()
    cancel(staff_client, order)
    outbox_before = OutboxEvent.objects.count()

    page = cancel(staff_client, order, reason="again")

    assert f"Order {order.pk} cannot be cancelled: it is cancelled and final" in page
    assert OutboxEvent.objects.count() == outbox_before
    assert not order.timeline.filter(message__contains="again").exists()


def test_republish_a_parked_order_resumes_it_and_the_payment_completes_once(staff_client):
    order = new_order()
    envelope = created_event(order)
    services.start_processing(order_id=order.id, event_id=envelope["event_id"], source="test")
    services.park_order(order_id=order.id, reason="payment_gave_up", error="GatewayTimeout: t", original_event=envelope, source="test")
    dead_letter = archive_outbox_dead_letter(OutboxEvent.objects.get(topic="dlq"))
    assert archive_outbox_dead_letter(OutboxEvent.objects.get(topic="dlq")).pk == dead_letter.pk  # archived once
    assert (dead_letter.reason, dead_letter.event_type, dead_letter.key) == ("payment_gave_up", "ORDER_CREATED", str(order.id))

    page = run_action(staff_client, "events/deadletter", "republish", dead_letter.pk)

    assert "Re-published: 1" in page
    order.refresh_from_db()
    assert order.status == OrderStatus.PROCESSING
    republished = OutboxEvent.objects.filter(topic="orders", event_id=envelope["event_id"]).order_by("id")
    assert republished.count() == 2 and republished.last().published_at is None
    dead_letter.refresh_from_db()
    assert dead_letter.republished_by == "admin:operator" and dead_letter.republished_event == republished.last()
    messages = list(order.timeline.values_list("event_type", "message"))
    assert ("RESUMED", "Resumed by admin:operator to retry ORDER_CREATED") in messages
    assert ("ORDER_CREATED", "Re-published from dlq by admin:operator (was: payment_gave_up)") in messages

    # The re-delivered event: processing was done (inbox), the charge was not.
    assert services.start_processing(order_id=order.id, event_id=envelope["event_id"], source="test") is False
    payment_services.charge_order(order_id=order.id, event_id=envelope["event_id"], source="test", gateway=APPROVE)
    order.refresh_from_db()
    assert order.status == OrderStatus.PAID

    again = run_action(staff_client, "events/deadletter", "republish", dead_letter.pk)
    assert "re-published already" in again and "its new dead letter is the one to re-publish" in again


def test_a_parked_order_resumes_from_the_status_it_was_parked_from_whatever_came_after(staff_client):
    # The ORDER_CREATED notification runs beside process_order: its timeline entry can carry
    # CREATED (read before processing committed) and still come after the PROCESSING entry.
    order = new_order()
    envelope = created_event(order)
    services.start_processing(order_id=order.id, event_id=envelope["event_id"], source="test")
    order.timeline.create(status=OrderStatus.CREATED, event_type="NOTIFICATION_SENT", message="email sent for ORDER_CREATED")
    services.park_order(order_id=order.id, reason="payment_gave_up", error="GatewayTimeout: t", original_event=envelope, source="test")
    order.timeline.create(status=OrderStatus.FAILED, event_type="NOTIFICATION_SENT", message="email sent for ORDER_PROCESSING")
    dead_letter = archive_outbox_dead_letter(OutboxEvent.objects.get(topic="dlq"))

    run_action(staff_client, "events/deadletter", "republish", dead_letter.pk)

    order.refresh_from_db()
    assert order.status == OrderStatus.PROCESSING
    changes = list(order.timeline.exclude(previous_status="").values_list("previous_status", "status"))
    assert changes == [("CREATED", "PROCESSING"), ("PROCESSING", "FAILED"), ("FAILED", "PROCESSING")]


def test_a_malformed_dead_letter_is_republished_with_its_fixed_value_only(staff_client):
    order = new_order()
    good = created_event(order)
    broken = json.dumps(good)[:-10].encode()
    dead_letter = event_services.archive_dead_letter(
        key=str(order.id), headers={"dlq_reason": "not_json", "dlq_source": "kafka-bridge"}, value=broken
    )
    assert base64.b64decode(dead_letter.original_value_b64) == broken

    page = run_action(staff_client, "events/deadletter", "republish", dead_letter.pk)
    assert "not_json" in page  # the original still fails the contract: nothing written
    assert "store a corrected JSON event in &#x27;fixed value&#x27;, then re-publish" in page
    assert OutboxEvent.objects.filter(event_id=good["event_id"]).count() == 1

    change = staff_client.post(f"/admin/events/deadletter/{dead_letter.pk}/change/", {"fixed_value": json.dumps(good)})
    assert change.status_code == 302
    assert "Re-published: 1" in run_action(staff_client, "events/deadletter", "republish", dead_letter.pk)
    assert OutboxEvent.objects.filter(event_id=good["event_id"], topic="orders").count() == 2


def forged_dead_letter(event: dict, *, reason: str) -> DeadLetter:
    """What the bridge archives when it refuses a message someone else wrote to a topic."""
    headers = {"dlq_reason": reason, "dlq_error": "refused", "dlq_source": "kafka-bridge", "dlq_original_topic": "payments"}
    return event_services.archive_dead_letter(key=event["order"]["id"], headers=headers, value=json.dumps(event).encode())


def test_forged_events_the_bridge_refused_are_not_republished_even_in_bulk_beside_a_legitimate_one(staff_client):
    # Someone who can write to Kafka tells the customer of an unpaid order that it is paid.
    unpaid = new_order()
    created = created_event(unpaid)
    paid = {**created, "type": "ORDER_PAID", "order": {**created["order"], "status": "PAID"}}
    forged = [
        forged_dead_letter({**paid, "event_id": str(uuid.uuid4())}, reason="unknown_event"),
        forged_dead_letter(paid, reason="event_mismatch"),  # the real event's id, another content
    ]
    parked = new_order()
    parked_event = created_event(parked)
    services.park_order(order_id=parked.id, reason="payment_gave_up", error="t", original_event=parked_event, source="test")
    legitimate = archive_outbox_dead_letter(OutboxEvent.objects.get(key=str(parked.id), topic="dlq"))
    outbox_before = OutboxEvent.objects.count()

    page = run_action(staff_client, "events/deadletter", "republish", *[d.pk for d in forged], legitimate.pk)

    assert "Re-published: 1" in page
    assert "not written by this service" in page and "leave it as the record of what was refused" in page
    assert "differs from what the outbox recorded under its id" in page
    assert "only an event exactly as the outbox recorded it is re-published" in page
    assert list(OutboxEvent.objects.order_by("id").values_list("payload", flat=True)[outbox_before:]) == [parked_event]
    assert not OutboxEvent.objects.filter(event_type="ORDER_PAID").exists()
    assert DeadLetter.objects.filter(pk__in=[d.pk for d in forged], republished_at__isnull=True).count() == 2
    unpaid.refresh_from_db()
    assert unpaid.status == OrderStatus.CREATED and unpaid.timeline.count() == 1


def test_a_fixed_value_is_republished_only_as_the_outbox_recorded_the_dead_letter_s_own_event(staff_client):
    order = new_order()
    envelope = created_event(order)
    services.park_order(order_id=order.id, reason="payment_gave_up", error="t", original_event=envelope, source="test")
    dead_letter = archive_outbox_dead_letter(OutboxEvent.objects.get(key=str(order.id), topic="dlq"))
    other = created_event(new_order())  # recorded, but another order's event
    attempts = {
        "differs from what the outbox recorded under its id": {**envelope, "order": {**envelope["order"], "email": "x@evil.example"}},
        f"the fixed value is event {other['event_id']}, this dead letter is event {envelope['event_id']}": other,
    }
    outbox_before = OutboxEvent.objects.count()

    for refusal, fixed in attempts.items():
        DeadLetter.objects.filter(pk=dead_letter.pk).update(fixed_value=json.dumps(fixed))
        page = run_action(staff_client, "events/deadletter", "republish", dead_letter.pk)
        assert refusal in page and "clear &#x27;fixed value&#x27; to re-publish the original" in page
        assert OutboxEvent.objects.count() == outbox_before
        order.refresh_from_db()
        assert order.status == OrderStatus.FAILED

    # The same event with its keys in another order and other spacing is the recorded event.
    DeadLetter.objects.filter(pk=dead_letter.pk).update(fixed_value=json.dumps(envelope, indent=2, sort_keys=True))
    assert "Re-published: 1" in run_action(staff_client, "events/deadletter", "republish", dead_letter.pk)
    order.refresh_from_db()
    assert order.status == OrderStatus.CREATED
