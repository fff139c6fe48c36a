"""Operators do only what their permissions allow: each admin action, and each form on the order's
page (cancel, refund) or on the page of unreconciled money (adopt or refund a charge the database
lost), needs its own permission, and view-only staff change nothing anywhere in the
admin. Real users, logged in through the test client."""

from __future__ import annotations

import itertools
import json
import uuid
from decimal import Decimal

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.test import Client, RequestFactory
from django.urls import resolve, reverse
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from devtools.harness.bridge import celery_broker
from devtools.harness.process_group import celery_broker_url
from common.admin import OPERATORS, READONLY_OPERATORS, ensure_operator_groups, operator_action, operator_permissions, operator_view
from devtools.harness.admin_orders import (
    APPROVE,
    DECLINE,
    archive_outbox_dead_letter,
    charged_order,
    created_event,
    give_up_refunds,
    lost_charge,
    new_order,
    processing_order,
)
from events.models import DeadLetter, InboxEntry, OutboxEvent
from orders import services
from orders.models import Order, OrderStatus, OrderTimelineEntry
from payments import services as payment_services
from payments.models import Cancellation, Payment, Refund, RefundStatus, SimulatedCharge, UnmatchedChargeRefund
from recovery.models import Redrive
from recovery.tests.support import publish_all
from webhooks import services as webhook_services
from webhooks.models import DeliveryStatus, WebhookDelivery

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def own_celery_broker(tmp_path):
    """Redeliver queues a send task: onto a broker of this test's own, not the shared one."""
    with celery_broker(celery_broker_url(work_dir=tmp_path)):
        yield

# Each operator action: where it is, and the one permission it needs.
ACTIONS = {
    "retry_payment": ("orders/order", "orders.retry_payment"),
    "retry_refund": ("payments/refund", "payments.retry_refund"),
    "redrive_now": ("recovery/unfinishedorder", "recovery.redrive_order"),
    "republish": ("events/deadletter", "events.republish_deadletter"),
    "redeliver": ("webhooks/webhookdelivery", "webhooks.redeliver_webhookdelivery"),
}
# Each form an operator's page leads to: its URL name, what it is sent, and the one permission it needs.
FORMS = {
    "cancel": ("admin:payments_cancel_order", {"reason": "r"}, "orders.cancel_order"),
    "refund": ("admin:payments_refund_order", {"amount": "1.00", "reason": "r"}, "payments.refund_order"),
    "adopt_unmatched_charge": ("admin:payments_adopt_unmatched_charge", {}, "payments.adopt_unmatched_charge"),
    "refund_unmatched_charge": ("admin:payments_refund_unmatched_charge", {}, "payments.refund_unmatched_charge"),
}
# The forms about a charge the database lost, led to from the page of unreconciled money (by the
# charge's reference); the others from the order's page.
CHARGE_FORMS = {"adopt_unmatched_charge", "refund_unmatched_charge"}
UNRECONCILED_MONEY = "/admin/payments/unreconciledmoney/"
PERMISSION = {
    **{action: permission for action, (_page, permission) in ACTIONS.items()},
    **{form: permission for form, (_url_name, _data, permission) in FORMS.items()},
}
CUSTOM_PERMISSIONS = sorted(PERMISSION.values())
usernames = itertools.count()


def permission(name: str) -> Permission:
    app_label, codename = name.split(".")
    return Permission.objects.get(content_type__app_label=app_label, codename=codename)


def operator_user(*permissions: str):
    """A new staff user holding every view_* permission and ``permissions``."""
    user = get_user_model().objects.create_user(f"operator-{next(usernames)}", is_staff=True)  # force_login needs no password
    user.user_permissions.set([*Permission.objects.filter(codename__startswith="view_"), *map(permission, permissions)])
    return user


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    client.operator = user
    return client


def operator(*permissions: str) -> Client:
    """A client logged in as a new ``operator_user``."""
    return logged_in(operator_user(*permissions))


def post_action(client: Client, action: str, *pks) -> str:
    page, _permission = ACTIONS[action]
    response = client.post(f"/admin/{page}/", {"action": action, "_selected_action": [str(pk) for pk in pks]}, follow=True)
    assert response.status_code == 200
    return response.content.decode()


def form_url(form: str, pk) -> str:
    return reverse(FORMS[form][0], args=[pk])


def submit_form(client: Client, form: str, pk) -> int:
    """POST the form; the status it answers with (302 back to the page it came from, or 403)."""
    return client.post(form_url(form, pk), FORMS[form][1]).status_code


def do(client: Client, operation: str, pk) -> None:
    """Run an action or submit a form, as the user may try whatever the page offers."""
    if operation in ACTIONS:
        post_action(client, operation, pk)
    else:
        assert submit_form(client, operation, pk) == (302 if client.operator.has_perm(PERMISSION[operation]) else 403)


def offered(client: Client, operation: str, pk) -> bool:
    """Whether the page offers the operation: the action in its list, the form's button on the order's
    page (or on the page of unreconciled money)."""
    if operation in ACTIONS:
        return operation in offered_actions(client, ACTIONS[operation][0])
    page = client.get(UNRECONCILED_MONEY if operation in CHARGE_FORMS else f"/admin/orders/order/{pk}/change/")
    assert page.status_code == 200
    return f'href="{form_url(operation, pk)}"' in page.content.decode()


def offered_actions(client: Client, page: str) -> set[str]:
    response = client.get(f"/admin/{page}/")
    assert response.status_code == 200
    form = response.context["action_form"]  # None when no action is offered
    return {value for value, _label in form.fields["action"].choices if value} if form else set()


def database_state() -> dict:
    """Everything an action could write."""
    return {
        "orders": sorted(Order.objects.values_list("id", "status")),
        "outbox": OutboxEvent.objects.count(),
        "timeline": OrderTimelineEntry.objects.count(),
        "redrives": Redrive.objects.count(),
        "payments": Payment.objects.count(),
        "charges": SimulatedCharge.objects.count(),
        "refunds": sorted(Refund.objects.values_list("id", "status", "attempt")),
        "cancellations": Cancellation.objects.count(),
        "unmatched_charge_refunds": UnmatchedChargeRefund.objects.count(),
        "inbox": InboxEntry.objects.count(),
        "dead_letters": sorted(DeadLetter.objects.values_list("id", "fixed_value", "republished_at")),
        "webhook_deliveries": sorted(WebhookDelivery.objects.values_list("id", "status", "attempts")),
    }


def parked_dead_letter() -> DeadLetter:
    order = new_order()
    envelope = created_event(order)
    services.start_processing(order_id=order.id, event_id=envelope["event_id"], source="test")
    services.park_order(order_id=order.id, reason="payment_gave_up", error="GatewayTimeout: t", original_event=envelope, source="test")
    return archive_outbox_dead_letter(OutboxEvent.objects.get(key=str(order.id), topic="dlq"))


def failed_refund() -> Refund:
    order = charged_order(APPROVE)
    payment_services.request_refund(order_id=order.pk, requested_by="client", amount=Decimal("2.00"), source="test")
    give_up_refunds(order)
    return Refund.objects.get(order=order, status=RefundStatus.FAILED)


def target_of(action: str):
    """An object the action or form would change for an operator allowed to use it."""
    if action == "cancel":
        return new_order().pk
    if action == "refund":
        return charged_order(APPROVE).pk
    if action in CHARGE_FORMS:
        return lost_charge(processing_order()).reference
    if action == "retry_refund":
        return failed_refund().pk
    if action == "retry_payment":
        return charged_order(DECLINE).pk
    if action == "redrive_now":
        order = new_order()
        publish_all()
        return order.pk
    if action == "redeliver":
        endpoint = webhook_services.create_endpoint(owner=None, url="http://127.0.0.1:9/hooks", event_types=[])
        delivery = WebhookDelivery.objects.get(endpoint=endpoint, order_id=new_order().pk)
        gone = webhook_services.Answer(status_code=410)  # failed for good at once
        webhook_services.record_attempt(delivery=delivery, answer=gone, started=delivery.created_at, duration=0.01)
        return delivery.pk
    return parked_dead_letter().pk


def ran(action: str, pk) -> bool:
    """Whether ``action`` did its work on ``pk``."""
    if action == "cancel":
        return Order.objects.get(pk=pk).status == OrderStatus.CANCELLED
    if action == "refund":
        return Refund.objects.filter(order_id=pk).exists()
    if action == "adopt_unmatched_charge":
        return Payment.objects.filter(gateway_reference=pk).exists()
    if action == "refund_unmatched_charge":
        return UnmatchedChargeRefund.objects.filter(charge_reference=pk).exists()
    if action == "retry_refund":
        return Refund.objects.get(pk=pk).status == RefundStatus.REQUESTED
    if action == "retry_payment":
        return Order.objects.get(pk=pk).status == OrderStatus.PROCESSING
    if action == "redrive_now":
        return Redrive.objects.filter(order_id=pk).exists()
    if action == "redeliver":
        return WebhookDelivery.objects.get(pk=pk).status == DeliveryStatus.PENDING
    return DeadLetter.objects.get(pk=pk).republished_at is not None


def test_every_operator_action_and_form_declares_its_permission_and_the_admin_checks_exactly_it():
    assert operator_permissions() == set(CUSTOM_PERMISSIONS)
    for form, (url_name, _data, permission) in FORMS.items():
        assert resolve(reverse(url_name, args=[uuid.uuid4()])).func.required_permission == permission, form
    factory = RequestFactory()
    for modeladmin in admin.site._registry.values():
        for action, name, _description in modeladmin._get_base_actions():
            if name == "delete_selected":
                continue  # Django's own, which needs the delete permission
            assert ACTIONS[name][1] == action.required_permission, name
            (codename,) = action.allowed_permissions
            check = getattr(modeladmin, f"has_{codename}_permission")
            others = [other for other in CUSTOM_PERMISSIONS if other != action.required_permission]
            for user, allowed in ((operator_user(action.required_permission), True), (operator_user(*others), False)):
                request = factory.get("/")
                request.user = user
                assert check(request) is allowed, name


def test_an_operator_action_cannot_be_declared_without_a_permission():
    with pytest.raises(TypeError):
        operator_action(description="d", operation=lambda obj, requested_by: None, done="d")
    with pytest.raises(ValueError, match="app_label.codename"):
        operator_action(permission="cancel_order", description="d", operation=lambda obj, requested_by: None, done="d")
    with pytest.raises(ValueError, match="app_label.codename"):
        operator_view(permission="refund_order")


def test_view_only_staff_see_every_page_but_are_offered_no_action_and_their_posts_change_nothing():
    targets = {operation: target_of(operation) for operation in PERMISSION}
    viewer = operator()
    for page in {page for page, _permission in ACTIONS.values()}:
        assert offered_actions(viewer, page) == set()
    for form in FORMS:
        assert not offered(viewer, form, targets[form])
        assert viewer.get(form_url(form, targets[form])).status_code == 403
    before = database_state()

    for operation, pk in targets.items():
        do(viewer, operation, pk)  # Django answers an action with the list, running nothing; a form with 403

    dead_letter = DeadLetter.objects.get(pk=targets["republish"])
    edit = viewer.post(f"/admin/events/deadletter/{dead_letter.pk}/change/", {"fixed_value": json.dumps({"forged": 1})})
    assert edit.status_code == 403
    assert database_state() == before
    assert not any(ran(action, pk) for action, pk in targets.items())


def test_view_only_staff_can_add_change_or_delete_nothing_on_any_admin_page():
    user = operator_user()  # auth's and tokens' view permissions too
    client = logged_in(user)
    parked_dead_letter()  # a dead letter, an order, its outbox rows and timeline
    request = RequestFactory().get("/")
    request.user = user
    for model, modeladmin in admin.site._registry.items():
        opts = model._meta
        assert client.get(f"/admin/{opts.app_label}/{opts.model_name}/").status_code == 200, opts.label
        assert client.get(f"/admin/{opts.app_label}/{opts.model_name}/add/").status_code == 403, opts.label
        obj = modeladmin.get_queryset(request).first()
        assert not modeladmin.has_add_permission(request), opts.label
        assert not modeladmin.has_change_permission(request, obj), opts.label
        assert not modeladmin.has_delete_permission(request, obj), opts.label
        if obj is not None:
            change_url = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk])
            assert client.post(change_url, {}).status_code == 403, opts.label
            delete_url = reverse(f"admin:{opts.app_label}_{opts.model_name}_delete", args=[obj.pk])
            assert client.post(delete_url, {"post": "yes"}).status_code == 403, opts.label
            assert type(obj).objects.filter(pk=obj.pk).exists(), opts.label


@pytest.mark.parametrize("granted", list(PERMISSION))
def test_an_operator_with_one_permission_is_offered_and_can_do_exactly_that(granted):
    targets = {operation: target_of(operation) for operation in PERMISSION}
    client = operator(PERMISSION[granted])
    for page in {page for page, _permission in ACTIONS.values()}:
        assert offered_actions(client, page) == {action for action in ACTIONS if action == granted and ACTIONS[action][0] == page}
    assert {form for form in FORMS if offered(client, form, targets[form])} == {granted} & set(FORMS)

    for operation, pk in targets.items():
        do(client, operation, pk)

    assert {operation for operation, pk in targets.items() if ran(operation, pk)} == {granted}


def test_storing_a_fixed_value_takes_the_republish_permission_and_not_django_s_change_permission():
    dead_letter = parked_dead_letter()
    value = json.dumps(json.loads(dead_letter.value), indent=2)
    change_url = f"/admin/events/deadletter/{dead_letter.pk}/change/"

    assert operator("events.change_deadletter").post(change_url, {"fixed_value": value}).status_code == 403
    page = operator("events.republish_deadletter").get(change_url).content.decode()
    assert 'name="fixed_value"' in page and 'name="_save"' in page
    assert operator("events.republish_deadletter").post(change_url, {"fixed_value": value}).status_code == 302
    dead_letter.refresh_from_db()
    assert dead_letter.fixed_value == value

    post_action(operator("events.republish_deadletter"), "republish", dead_letter.pk)
    page = operator("events.republish_deadletter").get(change_url).content.decode()
    assert 'name="fixed_value"' not in page and 'name="_save"' not in page  # re-published: read-only


@hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(held=st.sets(st.sampled_from(CUSTOM_PERMISSIONS)), action=st.sampled_from(sorted(PERMISSION)))
def test_an_action_or_form_works_if_and_only_if_its_permission_is_held(held, action):
    pk = target_of(action)
    client = operator(*held)
    before = database_state()

    do(client, action, pk)

    allowed = PERMISSION[action] in held
    assert ran(action, pk) == allowed
    if not allowed:
        assert database_state() == before


def test_the_operator_groups_give_view_only_and_view_plus_every_action():
    granted = ensure_operator_groups()
    assert ensure_operator_groups() == granted  # run again: the same groups, the same permissions

    assert all(name.split(".")[1].startswith("view_") for name in granted[READONLY_OPERATORS])
    assert "orders.view_order" in granted[READONLY_OPERATORS] and "auth.view_user" not in granted[READONLY_OPERATORS]
    assert set(granted[OPERATORS]) == set(granted[READONLY_OPERATORS]) | set(CUSTOM_PERMISSIONS)
    user_model = get_user_model()
    reader = user_model.objects.create_user("reader", is_staff=True)
    reader.groups.add(Group.objects.get(name=READONLY_OPERATORS))
    ops = user_model.objects.create_user("ops", is_staff=True)
    ops.groups.add(Group.objects.get(name=OPERATORS))
    targets = {form: target_of(form) for form in FORMS}
    for user, actions, forms in ((reader, set(), set()), (ops, set(ACTIONS), set(FORMS))):
        client = logged_in(user)
        assert set().union(*(offered_actions(client, page) for page, _permission in ACTIONS.values())) == actions
        assert {form for form in FORMS if offered(client, form, targets[form])} == forms
