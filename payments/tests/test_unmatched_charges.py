"""Charges the provider made and the database lost (a restore to an older backup): the admin's page
of unreconciled money lists them, and an operator adopts one into its order or refunds it (each
with its own permission: orders/tests/test_admin_permissions.py). Against the simulated provider's
real ledger."""

from __future__ import annotations

import io
from decimal import Decimal

import pytest
from django.conf import settings
from django.core.management import call_command
from django.urls import reverse

from devtools.harness.admin_orders import APPROVE, charged_order, lost_charge, processing_order
from devtools.harness.provider import APPROVING_SIMULATOR, CHARGE_ONLY_GATEWAY
from events.models import OutboxEvent
from orders.models import Order, OrderStatus, OrderTimelineEntry
from payments import selectors, services
from payments.models import Payment, PaymentStatus, Refund, RefundStatus, SimulatedCharge, SimulatedRefund, UnmatchedChargeRefund

pytestmark = pytest.mark.django_db
PAGE = "/admin/payments/unreconciledmoney/"


@pytest.fixture(autouse=True)
def simulated_provider(settings):
    """The configured gateway is the simulator, approving and always answering."""
    settings.PAYMENTS = {**settings.PAYMENTS, **APPROVING_SIMULATOR}


def adopt_url(reference: str) -> str:
    return reverse("admin:payments_adopt_unmatched_charge", args=[reference])


def refund_url(reference: str) -> str:
    return reverse("admin:payments_refund_unmatched_charge", args=[reference])


def first_attempt(order: Order, *, key: str, status: str) -> Payment:
    """The order's first payment attempt, as the database recorded it."""
    return Payment.objects.create(
        order=order, attempt=1, idempotency_key=key, amount=order.total_amount, currency=settings.PAYMENTS["currency"], status=status
    )


def reconcile_payments() -> list[str]:
    out = io.StringIO()
    call_command("reconcile_payments", stdout=out, stderr=io.StringIO())
    return out.getvalue().splitlines()


def written() -> dict:
    """Everything adopting or refunding could write."""
    return {
        "orders": sorted(Order.objects.values_list("id", "status")),
        "payments": sorted(Payment.objects.values_list("idempotency_key", "status")),
        "outbox": OutboxEvent.objects.count(),
        "timeline": OrderTimelineEntry.objects.count(),
        "refunds": sorted(UnmatchedChargeRefund.objects.values_list("charge_reference", "status", "gateway_calls")),
        "provider_refunds": SimulatedRefund.objects.count(),
    }


def test_the_page_lists_what_the_provider_moved_and_the_database_does_not_know(staff_client):
    known = processing_order()
    charge = lost_charge(known)
    gone = charged_order(APPROVE)
    gone_charge = SimulatedCharge.objects.get(order_id=str(gone.id))
    Payment.objects.filter(order=gone).delete()
    Order.objects.filter(pk=gone.pk).delete()  # the order itself came after the backup

    page = staff_client.get(PAGE).content.decode()

    assert charge.reference in page and gone_charge.reference in page
    assert f'href="{reverse("admin:orders_order_change", args=[known.id])}"' in page and "PROCESSING" in page
    assert f"<code>{gone.id}</code> unknown to the database" in page
    assert f'href="{adopt_url(charge.reference)}"' in page and f'href="{refund_url(charge.reference)}"' in page
    assert f'href="{adopt_url(gone_charge.reference)}"' not in page  # no order to adopt it into
    assert f'href="{refund_url(gone_charge.reference)}"' in page


def test_the_page_is_linked_from_the_index_and_the_payment_list(staff_client):
    assert f'href="{PAGE}"' in staff_client.get("/admin/").content.decode()
    assert f'href="{PAGE}"' in staff_client.get("/admin/payments/payment/").content.decode()


def test_a_gateway_that_cannot_list_its_records_is_said_so(staff_client, settings):
    settings.PAYMENTS = {**settings.PAYMENTS, "gateway_class": CHARGE_ONLY_GATEWAY}
    page = staff_client.get(PAGE).content.decode()
    assert "The gateway ChargeOnlyGateway cannot list the provider's records" in page


def test_adopting_a_charge_makes_its_order_paid_through_the_approval_path_and_the_line_goes(staff_client):
    order = processing_order()
    charge = lost_charge(order)

    confirmation = staff_client.get(adopt_url(charge.reference)).content.decode()
    assert "csrfmiddlewaretoken" in confirmation and "Adopt into its order" in confirmation
    response = staff_client.post(adopt_url(charge.reference), follow=True)

    assert response.redirect_chain == [(PAGE, 302)]
    assert f"Charge {charge.reference} adopted: order {order.id} is paid" in response.content.decode()
    order.refresh_from_db()
    assert order.status == OrderStatus.PAID
    payment = Payment.objects.get(order=order)
    assert (payment.attempt, payment.idempotency_key, payment.gateway_reference, payment.amount, payment.status) == (
        1, charge.idempotency_key, charge.reference, charge.amount, PaymentStatus.APPROVED
    )
    assert OutboxEvent.objects.filter(key=str(order.id), event_type="ORDER_PAID").count() == 1
    assert "adopted from the provider's records by admin:operator" in order.timeline.get(status=OrderStatus.PAID).message
    assert charge.reference not in staff_client.get(PAGE).content.decode()
    assert reconcile_payments() == []


def test_an_adopted_charge_is_the_next_attempt_after_a_declined_one():
    order = processing_order()
    first_attempt(order, key=f"{order.id}:1", status=PaymentStatus.DECLINED)
    charge = lost_charge(order, attempt=2)
    record = selectors.unmatched_charge(found=unreconciled(), reference=charge.reference).record
    payment = services.adopt_unmatched_charge(charge=record, refunded=Decimal("0"), requested_by="t", source="test")
    assert (payment.attempt, payment.status) == (2, PaymentStatus.APPROVED)


def unreconciled() -> list[selectors.Unreconciled]:
    return selectors.unreconciled_money(records=APPROVE.money_moved(since=SimulatedCharge.objects.earliest("created_at").created_at))


def cancelled(order: Order) -> None:
    services.cancel_order(order_id=order.id, requested_by="client", source="test")


def paid_by_another_charge(order: Order) -> None:
    lost_charge(order, attempt=9)
    first_attempt(order, key=f"{order.id}:9", status=PaymentStatus.APPROVED)


def charge_under_way(order: Order) -> None:
    first_attempt(order, key=f"{order.id}:7", status=PaymentStatus.PENDING)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (cancelled, "is CANCELLED, and only a PROCESSING order becomes paid (it is cancelled and final); or refund the charge instead"),
        (paid_by_another_charge, "is paid by another charge: refund the charge instead"),
        (charge_under_way, "has a charge under way: wait for its outcome"),
        (lambda order: Order.objects.filter(pk=order.pk).update(total_amount=Decimal("99.00")), "total 99.00: refund the charge instead"),
    ],
    ids=["cancelled", "paid", "charge-under-way", "other-amount"],
)
def test_adopting_is_refused_with_the_reason_and_changes_nothing(staff_client, make, reason):
    order = processing_order()
    charge = lost_charge(order, attempt=5)
    make(order)
    before = written()

    response = staff_client.post(adopt_url(charge.reference), follow=True)

    assert reason in response.content.decode()
    assert written() == before


def test_adopting_a_charge_of_an_order_the_database_does_not_know_is_refused():
    order = processing_order()
    charge = lost_charge(order)
    record = selectors.unmatched_charge(found=unreconciled(), reference=charge.reference).record
    Order.objects.filter(pk=order.pk).delete()
    with pytest.raises(services.NotAdoptable, match="The database knows no order"):
        services.adopt_unmatched_charge(charge=record, refunded=Decimal("0"), requested_by="t", source="test")


def test_refunding_a_charge_gives_it_all_back_once_and_both_lines_go(staff_client):
    order = processing_order()
    cancelled(order)  # the database's order was cancelled; the provider charged it all the same
    charge = lost_charge(order)

    assert 'value="Refund"' in staff_client.get(refund_url(charge.reference)).content.decode()
    response = staff_client.post(refund_url(charge.reference), follow=True)

    assert response.redirect_chain == [(PAGE, 302)]
    assert f"Charge {charge.reference} refunded: {charge.amount}" in response.content.decode()
    refund = UnmatchedChargeRefund.objects.get()
    assert (refund.order_id, refund.amount, refund.status, refund.requested_by) == (
        str(order.id), charge.amount, RefundStatus.SUCCEEDED, "admin:operator"
    )
    provider_refund = SimulatedRefund.objects.get()
    assert (provider_refund.charge_reference, provider_refund.amount, provider_refund.approved) == (charge.reference, charge.amount, True)
    assert order.timeline.filter(event_type="UNMATCHED_CHARGE_REFUND").count() == 1
    assert reconcile_payments() == []  # neither the charge nor its refund

    again = staff_client.post(refund_url(charge.reference), follow=True)  # a second click, from a stale page
    assert "is not one the database lacks (any more): nothing done" in again.content.decode()
    record = next(r for r in APPROVE.money_moved(since=charge.created_at) if r.reference == charge.reference)
    assert services.refund_unmatched_charge(charge=record, refunded=Decimal("0"), requested_by="t").pk == refund.pk  # the service alone, too
    assert SimulatedRefund.objects.count() == 1 and UnmatchedChargeRefund.objects.get().gateway_calls == 1


def test_a_charge_the_provider_refunded_in_part_is_refunded_of_the_rest_and_settled_with_its_refunds(staff_client, refunded):
    Refund.objects.all().delete()
    Payment.objects.all().delete()  # the charge (30.03) and its refund (10.00) came after the backup
    charge = SimulatedCharge.objects.get()

    refusal = staff_client.post(adopt_url(charge.reference), follow=True).content.decode()
    assert f"The provider refunded 10.00 of charge {charge.reference} already: refund the rest instead" in refusal
    staff_client.post(refund_url(charge.reference))

    assert UnmatchedChargeRefund.objects.get().amount == Decimal("20.03")
    assert sorted(SimulatedRefund.objects.filter(approved=True).values_list("amount", flat=True)) == [Decimal("10.00"), Decimal("20.03")]
    assert reconcile_payments() == []


def test_a_charge_of_an_order_the_database_does_not_know_is_refunded():
    order = charged_order(APPROVE)
    charge = SimulatedCharge.objects.get(order_id=str(order.id))
    Payment.objects.all().delete()
    Order.objects.all().delete()
    record = selectors.unmatched_charge(found=unreconciled(), reference=charge.reference).record

    refund = services.refund_unmatched_charge(charge=record, refunded=Decimal("0"), requested_by="t")

    assert refund.status == RefundStatus.SUCCEEDED and SimulatedRefund.objects.get().approved
    assert reconcile_payments() == []


def test_a_refund_the_gateway_did_not_answer_stays_requested_and_is_retried_under_its_key(staff_client, settings):
    order = processing_order()
    charge = lost_charge(order)
    settings.PAYMENTS = {**settings.PAYMENTS, "refund_timeout_rate": 1.0}

    response = staff_client.post(refund_url(charge.reference), follow=True)

    assert "The gateway did not answer (GatewayTimeout)" in response.content.decode()
    refund = UnmatchedChargeRefund.objects.get()
    assert (refund.status, refund.gateway_calls) == (RefundStatus.REQUESTED, 1)
    page = staff_client.get(PAGE).content.decode()
    assert "REQUESTED" in page and "Refund again…" in page and f'href="{adopt_url(charge.reference)}"' not in page
    assert [line.kind for line in unreconciled()] == [selectors.CHARGE_WITHOUT_PAYMENT]  # its refund is known

    settings.PAYMENTS = {**settings.PAYMENTS, "refund_timeout_rate": 0.0}
    staff_client.post(refund_url(charge.reference))

    refund.refresh_from_db()
    assert (refund.status, refund.gateway_calls) == (RefundStatus.SUCCEEDED, 2)
    provider_refund = SimulatedRefund.objects.get()  # one refund at the provider, asked twice under one key
    assert (provider_refund.idempotency_key, provider_refund.calls) == (refund.idempotency_key, 2)
    assert reconcile_payments() == []
