"""Refunds and cancellations in the admin: the forms on the order's page (cancel, refund), the
refund list with its filters, and the operator's retry of a failed refund. Logged in through the
test client as a superuser (staff_client); who may do what is orders/tests/test_admin_permissions.py."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from devtools.harness.admin_orders import APPROVE, charged_order, give_back_refunds, give_up_refunds, new_order
from events.models import OutboxEvent
from orders.models import OrderStatus
from payments import services
from payments.models import Cancellation, Payment, Refund, RefundStatus, SimulatedRefund

pytestmark = pytest.mark.django_db


def order_page(order) -> str:
    return reverse("admin:orders_order_change", args=[order.pk])


def cancel_url(order) -> str:
    return reverse("admin:payments_cancel_order", args=[order.pk])


def refund_url(order) -> str:
    return reverse("admin:payments_refund_order", args=[order.pk])


def submit(client, url: str, **data):
    """POST a form; the page it redirects to, which must be the order's."""
    response = client.post(url, data, follow=True)
    assert response.status_code == 200
    return response


def money_written() -> dict:
    """Everything cancelling or refunding could write."""
    return {
        "refunds": sorted(Refund.objects.values_list("id", "status", "amount")),
        "cancellations": Cancellation.objects.count(),
        "reserved": sorted(Payment.objects.values_list("id", "refund_reserved")),
        "outbox": OutboxEvent.objects.count(),
    }


def test_the_order_page_leads_to_the_forms_that_apply_to_its_status(staff_client):
    paid = charged_order(APPROVE)
    created = new_order()

    paid_page = staff_client.get(order_page(paid)).content.decode()
    created_page = staff_client.get(order_page(created)).content.decode()

    assert f'href="{cancel_url(paid)}">Cancel order…' in paid_page and f'href="{refund_url(paid)}">Refund…' in paid_page
    assert f'href="{cancel_url(created)}">Cancel order…' in created_page
    assert "Refund…" not in created_page  # nothing was charged


def test_refunding_part_of_a_paid_order_through_the_form(staff_client):
    order = charged_order(APPROVE)

    form = staff_client.get(refund_url(order)).content.decode()
    assert 'name="amount"' in form and 'value="12.50"' in form  # all that remains, by default
    assert "Left to refund: 12.50 of 12.50" in form

    response = submit(staff_client, refund_url(order), amount="5.00", reason="damaged box")

    assert response.redirect_chain == [(order_page(order), 302)]
    page = response.content.decode()
    assert f"Refund of 5.00 requested for order {order.pk}" in page
    refund = Refund.objects.get(order=order)
    assert (refund.amount, refund.status, refund.reason, refund.requested_by) == (
        Decimal("5.00"), RefundStatus.REQUESTED, "damaged box", "admin:operator"
    )
    assert OutboxEvent.objects.filter(key=str(order.id), event_type="REFUND_REQUESTED").count() == 1
    assert "<td>5.00</td><td>Requested</td><td>damaged box</td><td>admin:operator</td>" in page  # the order page lists its refunds

    give_back_refunds(order)

    assert order.status == OrderStatus.PARTIALLY_REFUNDED
    refund.refresh_from_db()
    page = staff_client.get(order_page(order)).content.decode()
    assert refund.status == RefundStatus.SUCCEEDED and refund.gateway_reference in page
    assert 'value="7.50"' in staff_client.get(refund_url(order)).content.decode()


def test_a_refund_left_blank_refunds_all_that_remains(staff_client):
    order = charged_order(APPROVE)
    submit(staff_client, refund_url(order), amount="2.50", reason="")

    submit(staff_client, refund_url(order), amount="", reason="the rest")

    assert sorted(Refund.objects.values_list("amount", flat=True)) == [Decimal("2.50"), Decimal("10.00")]
    give_back_refunds(order)
    assert order.status == OrderStatus.REFUNDED
    assert "Refund…" not in staff_client.get(order_page(order)).content.decode()


@pytest.mark.parametrize("amount", ["0", "-1", "abc", "1.234", "1e400"])
def test_a_malformed_amount_is_shown_on_the_form_and_nothing_is_written(staff_client, amount):
    order = charged_order(APPROVE)
    before = money_written()

    response = staff_client.post(refund_url(order), {"amount": amount, "reason": "x"})

    assert response.status_code == 200  # the form again, with the error
    assert 'class="errorlist' in response.content.decode()
    assert money_written() == before


def test_the_service_s_refusals_are_shown_on_the_order_page_and_nothing_is_written(staff_client):
    paid = charged_order(APPROVE)
    unpaid = new_order()
    submit(staff_client, refund_url(paid), amount="10.00", reason="")
    before = money_written()

    too_much = submit(staff_client, refund_url(paid), amount="3.00", reason="").content.decode()
    not_paid = submit(staff_client, refund_url(unpaid), amount="", reason="").content.decode()

    assert f"Order {paid.pk}: a refund of 3.00 is more than remains of its charge (2.50)" in too_much
    assert f"Order {unpaid.pk} is CREATED, not paid" in not_paid
    assert 'class="error"' in too_much and 'class="error"' in not_paid  # Django's error message style
    assert money_written() == before


def test_cancelling_a_paid_order_through_the_form_refunds_it_in_full_then_cancels(staff_client):
    order = charged_order(APPROVE)
    form = staff_client.get(cancel_url(order)).content.decode()
    assert "All that was charged is refunded, then the order ends CANCELLED." in form

    page = submit(staff_client, cancel_url(order), reason="customer called").content.decode()

    assert f"Cancellation of order {order.pk} recorded: it is CANCELLING, refunding 12.50" in page
    cancellation = Cancellation.objects.get(order=order)
    assert (cancellation.requested_by, cancellation.reason, cancellation.from_status) == ("admin:operator", "customer called", "PAID")
    give_back_refunds(order)
    assert order.status == OrderStatus.CANCELLED
    assert SimulatedRefund.objects.filter(approved=True).values_list("amount", flat=True).get() == Decimal("12.50")
    page = staff_client.get(order_page(order)).content.decode()
    assert "Cancel order…" not in page and "Refund…" not in page


def test_the_refund_list_filters_by_status_date_and_requester_and_finds_an_order_s_refunds(staff_client):
    given_up, succeeded, by_client = (charged_order(APPROVE) for _ in range(3))
    submit(staff_client, refund_url(given_up), amount="1.00", reason="")
    give_up_refunds(given_up)
    submit(staff_client, refund_url(succeeded), amount="2.00", reason="")
    give_back_refunds(succeeded)
    services.request_refund(order_id=by_client.pk, requested_by="client 7", amount=Decimal("3.00"), source="test")

    Refund.objects.filter(order=given_up).update(created_at=timezone.now() - timedelta(days=30))

    def listed(query: str) -> set:
        response = staff_client.get(f"/admin/payments/refund/{query}")
        assert response.status_code == 200
        return {refund.order_id for refund in response.context["cl"].result_list}

    def filter_link(field: str, display: str) -> str:
        """The query string of the list's filter link ``display`` under ``field``, as an operator clicks it."""
        changelist = staff_client.get("/admin/payments/refund/").context["cl"]
        spec = next(spec for spec in changelist.filter_specs if spec.field_path == field)
        return next(choice["query_string"] for choice in spec.choices(changelist) if choice["display"] == display)

    assert listed("") == {given_up.pk, succeeded.pk, by_client.pk}
    assert listed(filter_link("status", "Failed")) == {given_up.pk}
    assert listed(filter_link("status", "Succeeded")) == {succeeded.pk}
    assert listed(filter_link("requested_by", "client 7")) == {by_client.pk}
    assert listed(filter_link("requested_by", "admin:operator")) == {given_up.pk, succeeded.pk}
    assert listed(filter_link("created_at", "Past 7 days")) == {succeeded.pk, by_client.pk}
    assert listed(f"?q={succeeded.pk}") == {succeeded.pk}
    page = staff_client.get("/admin/payments/refund/").content.decode()
    assert f'href="{order_page(by_client)}"' in page  # each refund links to its order


def test_an_operator_retries_a_failed_refund_and_a_refund_not_failed_is_refused(staff_client):
    failed = charged_order(APPROVE)
    submit(staff_client, refund_url(failed), amount="4.00", reason="")
    give_up_refunds(failed)
    done = charged_order(APPROVE)
    submit(staff_client, refund_url(done), amount="4.00", reason="")
    give_back_refunds(done)
    failed_refund, done_refund = Refund.objects.get(order=failed), Refund.objects.get(order=done)
    assert failed_refund.status == RefundStatus.FAILED

    response = staff_client.post(
        "/admin/payments/refund/",
        {"action": "retry_refund", "_selected_action": [str(failed_refund.pk), str(done_refund.pk)]},
        follow=True,
    )

    page = response.content.decode()
    assert "Refund retried: 1" in page
    assert f"Refund {done_refund.pk} is SUCCEEDED: only a failed refund can be retried" in page
    failed_refund.refresh_from_db()
    assert failed_refund.status == RefundStatus.REQUESTED
    give_back_refunds(failed)
    failed_refund.refresh_from_db()
    assert (failed_refund.status, failed.status) == (RefundStatus.SUCCEEDED, OrderStatus.PARTIALLY_REFUNDED)
    assert failed.timeline.filter(message__contains="retried by admin:operator").exists()


def test_the_cancellation_list_is_read_only_and_links_each_to_its_order(staff_client):
    order = new_order()
    submit(staff_client, cancel_url(order), reason="duplicate")

    page = staff_client.get("/admin/payments/cancellation/").content.decode()

    assert f'href="{order_page(order)}"' in page and "admin:operator" in page
    cancellation = Cancellation.objects.get()
    assert "duplicate" in staff_client.get(f"/admin/payments/cancellation/{cancellation.pk}/change/").content.decode()
    assert staff_client.post(f"/admin/payments/cancellation/{cancellation.pk}/change/", {"reason": "x"}).status_code == 403
    assert staff_client.get("/admin/payments/cancellation/add/").status_code == 403
