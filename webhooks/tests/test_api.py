"""The webhooks HTTP API: endpoints (the secret shown once), their deliveries with every attempt,
redelivery through a real Celery queue, each client seeing only its own, and no URL that could
reach the service's own network."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from standardwebhooks import Webhook

from devtools.broker import free_port
from devtools.harness.api_clients import client_with_token
from devtools.harness.bridge import task_args, task_messages
from messaging.routes import SEND_WEBHOOK
from webhooks import services
from webhooks.models import WebhookDelivery, WebhookEndpoint

pytestmark = pytest.mark.django_db

# A public address given as a literal: checked without a name to resolve, and never sent to here.
PUBLIC_URL = "https://1.1.1.1/hooks"
ENDPOINTS = "/webhook-endpoints"


@pytest.fixture(autouse=True)
def unthrottled(settings):
    settings.API = {**settings.API, "throttle_anon": "", "throttle_user": ""}


@pytest.fixture
def production_urls(settings):
    """Production's policy: https only, no loopback (the tests run in development, which allows both)."""
    settings.WEBHOOKS = {**settings.WEBHOOKS, "allow_http": False, "allow_loopback": False, "allow": []}


@pytest.fixture
def quick_retries(settings):
    """Loopback http receivers, and a failed attempt due again at once (three attempts in all)."""
    settings.WEBHOOKS = {**settings.WEBHOOKS, "allow_http": True, "allow_loopback": True, "retry_schedule": [0, 0, 0]}


def create(client, **body):
    response = client.post(ENDPOINTS, {"url": PUBLIC_URL, **body}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def assert_error(response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.content[:300])
    body = response.json()
    assert isinstance(body["error"], str) and body["error"]
    return body


# --- endpoints -----------------------------------------------------------------------------------


def test_the_secret_is_in_the_creation_answer_and_never_again(api_client):
    created = api_client.post(ENDPOINTS, {"url": PUBLIC_URL, "description": "shop"}, format="json")

    assert created.status_code == 201
    endpoint = created.json()
    assert endpoint["secret"].startswith("whsec_")
    assert endpoint["secret"] == WebhookEndpoint.objects.get(pk=endpoint["id"]).secret
    assert created["Location"] == f"/webhook-endpoints/{endpoint['id']}"
    assert (endpoint["url"], endpoint["description"], endpoint["event_types"], endpoint["enabled"]) == (
        PUBLIC_URL,
        "shop",
        [],  # every order event
        True,
    )
    shown = api_client.get(f"{ENDPOINTS}/{endpoint['id']}").json()
    listed = api_client.get(ENDPOINTS).json()["results"]
    assert "secret" not in shown and "previous_secret" not in shown
    assert [row["id"] for row in listed] == [endpoint["id"]]
    assert all("secret" not in row for row in listed)
    assert endpoint["secret"] not in (api_client.get(f"{ENDPOINTS}/{endpoint['id']}").content + api_client.get(ENDPOINTS).content).decode()


def test_an_endpoint_is_listed_shown_changed_and_deleted(api_client):
    first = create(api_client, event_types=["order.paid", "order.created", "order.paid"])
    second = create(api_client)
    path = f"{ENDPOINTS}/{first['id']}"

    assert first["event_types"] == ["order.created", "order.paid"]
    page = api_client.get(ENDPOINTS, {"page_size": 1}).json()
    assert (page["count"], [row["id"] for row in page["results"]]) == (2, [first["id"]])

    changed = api_client.patch(
        path, {"url": "https://1.0.0.1/v2", "event_types": ["order.refunded"], "description": "v2", "enabled": False}, format="json"
    )
    assert changed.status_code == 200
    assert {key: changed.json()[key] for key in ("url", "event_types", "description", "enabled", "disabled_reason")} == {
        "url": "https://1.0.0.1/v2",
        "event_types": ["order.refunded"],
        "description": "v2",
        "enabled": False,
        "disabled_reason": "disabled by its client",
    }
    enabled = api_client.patch(path, {"enabled": True}, format="json").json()
    assert (enabled["enabled"], enabled["disabled_reason"], enabled["url"]) == (True, "", "https://1.0.0.1/v2")

    assert api_client.delete(path).status_code == 204
    assert_error(api_client.get(path), 404)
    assert [row["id"] for row in api_client.get(ENDPOINTS).json()["results"]] == [second["id"]]


def test_enabling_a_failing_endpoint_that_is_enabled_does_not_restart_its_failing_streak(api_client):
    endpoint = create(api_client)
    failing_since = timezone.now() - dt.timedelta(days=4)
    WebhookEndpoint.objects.filter(pk=endpoint["id"]).update(failing_since=failing_since)

    answer = api_client.patch(f"{ENDPOINTS}/{endpoint['id']}", {"enabled": True}, format="json").json()

    # Else a client could keep a dead receiver from being disabled after disable_after_days.
    assert dt.datetime.fromisoformat(answer["failing_since"]) == failing_since


def test_rotating_the_secret_answers_the_new_one_and_keeps_the_old_one_for_the_grace(api_client, settings):
    endpoint = create(api_client)

    response = api_client.post(f"{ENDPOINTS}/{endpoint['id']}/rotate-secret")

    assert response.status_code == 200
    rotated = response.json()
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != endpoint["secret"]
    grace_end = dt.datetime.fromisoformat(rotated["previous_secret_expires_at"])
    expected = timezone.now() + dt.timedelta(hours=settings.WEBHOOKS["rotation_grace_hours"])
    assert abs(grace_end - expected) < dt.timedelta(minutes=5)
    stored = WebhookEndpoint.objects.get(pk=endpoint["id"])
    assert (stored.secret, stored.previous_secret) == (rotated["secret"], endpoint["secret"])
    assert "secret" not in api_client.get(f"{ENDPOINTS}/{endpoint['id']}").json()


# --- no server-side request forgery --------------------------------------------------------------


@pytest.mark.parametrize(
    "url, reason",
    [
        ("https://127.0.0.1/hooks", "127.0.0.1, which is not a public address"),
        ("https://[::1]/hooks", "::1, which is not a public address"),
        ("https://10.0.0.1/hooks", "10.0.0.1, which is not a public address"),
        ("https://169.254.169.254/latest/meta-data/", "169.254.169.254, which is not a public address"),
        ("https://2130706433/hooks", "127.0.0.1, which is not a public address"),  # decimal form
        ("https://localhost/hooks", "which is not a public address"),
        ("http://1.1.1.1/hooks", "must be https, not http"),
    ],
)
def test_a_url_that_could_reach_inside_is_refused_with_its_reason(production_urls, api_client, url, reason):
    endpoint = create(api_client)

    refused = assert_error(api_client.post(ENDPOINTS, {"url": url}, format="json"), 422)
    changed = assert_error(api_client.patch(f"{ENDPOINTS}/{endpoint['id']}", {"url": url}, format="json"), 422)

    assert reason in refused["error"] and reason in changed["error"]
    assert list(WebhookEndpoint.objects.values_list("url", flat=True)) == [PUBLIC_URL]


def test_the_local_default_takes_loopback_receivers_but_never_private_or_metadata_addresses(api_client):
    assert create(api_client, url="http://127.0.0.1:8080/hooks")["url"] == "http://127.0.0.1:8080/hooks"
    for url in ("http://10.0.0.1/hooks", "http://169.254.169.254/latest/meta-data/", "http://[::ffff:10.0.0.1]/hooks"):
        assert "not a public address" in assert_error(api_client.post(ENDPOINTS, {"url": url}, format="json"), 422)["error"]


# --- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "url"),
        ({"url": 123}, "url"),
        ({"url": ""}, "url"),
        ({"url": "https://1.1.1.1/" + "a" * 2000}, "url"),
        ({"url": PUBLIC_URL, "event_types": ["order.shipped"]}, "event_types"),
        ({"url": PUBLIC_URL, "event_types": "order.paid"}, "event_types"),
        ({"url": PUBLIC_URL, "description": "d" * 256}, "description"),
        ({"url": PUBLIC_URL, "description": None}, "description"),
    ],
)
def test_invalid_input_is_a_400_naming_the_field(api_client, body, field):
    refused = assert_error(api_client.post(ENDPOINTS, body, format="json"), 400)

    assert field in refused["fields"]
    assert not WebhookEndpoint.objects.exists()


@pytest.mark.parametrize(
    "body, field", [({"enabled": "yes"}, "enabled"), ({"enabled": 1}, "enabled"), ({"url": None}, "url"), ({"event_types": [7]}, "event_types")]
)
def test_an_invalid_change_is_a_400_and_changes_nothing(api_client, body, field):
    endpoint = create(api_client)

    refused = assert_error(api_client.patch(f"{ENDPOINTS}/{endpoint['id']}", body, format="json"), 400)

    assert field in refused["fields"]
    stored = WebhookEndpoint.objects.get(pk=endpoint["id"])
    assert (stored.enabled, stored.url, stored.event_types) == (True, PUBLIC_URL, [])


# Any JSON document, scalars to nested containers, and what a body of this API holds.
json_documents = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
endpoint_bodies = st.fixed_dictionaries(
    {},
    optional={
        "url": st.sampled_from([PUBLIC_URL, "https://10.0.0.1/", "http://1.1.1.1/", "https://[::1]:99999/", "https://"]) | json_documents,
        "event_types": st.lists(st.sampled_from(["order.paid", "order.shipped", ""]), max_size=10) | json_documents,
        "description": st.text(max_size=300) | json_documents,
        "enabled": st.booleans() | json_documents,
    },
)
PROPERTY = hypothesis_settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))


@PROPERTY
@given(body=endpoint_bodies | json_documents)
@example(body={"url": PUBLIC_URL, "event_types": [], "enabled": False})
def test_any_body_is_an_endpoint_a_400_or_a_422(production_urls, api_client, body):
    endpoint = WebhookEndpoint.objects.create(url=PUBLIC_URL, secret="whsec_x")

    for response, success in (
        (api_client.post(ENDPOINTS, body, format="json"), 201),
        (api_client.patch(f"{ENDPOINTS}/{endpoint.pk}", body, format="json"), 200),
    ):
        assert response.status_code in (success, 400, 422), response.content[:300]
        if response.status_code != success:
            assert_error(response, response.status_code)


# --- deliveries ------------------------------------------------------------------------------------


def order_created(client, seed_order) -> str:
    response = client.post("/orders", seed_order, format="json")
    assert response.status_code == 201
    return response.json()["order_id"]


def test_deliveries_newest_first_with_every_attempt_and_a_status_filter(quick_retries, api_client, seed_order, receiver_of):
    receiver = receiver_of([500, 200], body=b"thanks")
    endpoint = create(api_client, url=receiver.url, event_types=["order.created"])
    first_order, second_order = order_created(api_client, seed_order), order_created(api_client, seed_order)
    first, second = (WebhookDelivery.objects.get(order_id=order_id) for order_id in (first_order, second_order))
    for _ in range(2):
        services.send_delivery(delivery_id=first.pk)
    # The second goes to a port nobody listens on: a connection error, retried later.
    api_client.patch(f"{ENDPOINTS}/{endpoint['id']}", {"url": f"http://127.0.0.1:{free_port()}/hooks"}, format="json")
    services.send_delivery(delivery_id=second.pk)

    listed = api_client.get(f"{ENDPOINTS}/{endpoint['id']}/deliveries")

    assert listed.status_code == 200
    page = listed.json()
    assert page["count"] == 2
    newest, oldest = page["results"]
    assert (newest["id"], newest["order_id"], newest["status"]) == (str(second.pk), second_order, "PENDING")
    assert (oldest["id"], oldest["order_id"], oldest["status"]) == (str(first.pk), first_order, "SUCCEEDED")
    assert (oldest["event_type"], oldest["event_id"]) == ("order.created", str(first.event_id))
    assert newest["next_attempt_at"] is not None and oldest["next_attempt_at"] is None
    assert [(a["status_code"], a["response_excerpt"], a["error"]) for a in oldest["attempts"]] == [
        (500, "thanks", ""),
        (200, "thanks", ""),
    ]
    (refused,) = newest["attempts"]
    assert refused["status_code"] is None and "refused" in refused["error"].lower()
    assert all(attempt["duration_ms"] >= 0 and attempt["started_at"] for attempt in oldest["attempts"] + newest["attempts"])

    by_status = {
        status: [row["id"] for row in api_client.get(f"{ENDPOINTS}/{endpoint['id']}/deliveries", {"status": status}).json()["results"]]
        for status in ("SUCCEEDED", "PENDING", "FAILED")
    }
    assert by_status == {"SUCCEEDED": [str(first.pk)], "PENDING": [str(second.pk)], "FAILED": []}
    for bad in ("DELIVERED", ""):
        assert "status" in assert_error(api_client.get(f"{ENDPOINTS}/{endpoint['id']}/deliveries", {"status": bad}), 400)["fields"]


def test_a_redelivery_is_queued_at_once_and_lands_with_the_same_webhook_id(
    settings, api_client, seed_order, receiver_of, own_celery
):
    settings.WEBHOOKS = {**settings.WEBHOOKS, "allow_http": True, "allow_loopback": True, "retry_schedule": [0]}
    receiver = receiver_of([500, 200])
    endpoint = create(api_client, url=receiver.url)
    delivery = WebhookDelivery.objects.get(order_id=order_created(api_client, seed_order))
    services.send_delivery(delivery_id=delivery.pk)  # the only attempt of the schedule: failed
    delivery.refresh_from_db()
    assert delivery.status == "FAILED"

    response = api_client.post(f"/webhook-deliveries/{delivery.pk}/redeliver")

    assert response.status_code == 202
    assert (response.json()["status"], [a["status_code"] for a in response.json()["attempts"]]) == ("PENDING", [500])
    (message,) = task_messages(own_celery)
    assert (message.headers["task"], task_args(message)) == (SEND_WEBHOOK, [str(delivery.pk)])
    # What the worker does with the message.
    services.send_delivery(delivery_id=task_args(message)[0])
    delivery.refresh_from_db()
    assert delivery.status == "SUCCEEDED"
    assert [request.headers["webhook-id"] for request in receiver.received] == [str(delivery.event_id)] * 2
    secret = WebhookEndpoint.objects.get(pk=endpoint["id"]).secret
    for request in receiver.received:
        headers, body = request.headers, request.body
        Webhook(secret).verify(body, headers)


# --- each client sees only its own -----------------------------------------------------------------


def test_another_clients_endpoints_and_deliveries_are_404(auth_required, seed_order, own_celery):
    alice, bob, staff = client_with_token("alice"), client_with_token("bob"), client_with_token("ops", staff=True)
    endpoint = create(alice)
    bobs = create(bob)
    delivery = WebhookDelivery.objects.get(order_id=order_created(alice, seed_order))
    path = f"{ENDPOINTS}/{endpoint['id']}"

    assert [row["id"] for row in bob.get(ENDPOINTS).json()["results"]] == [bobs["id"]]
    for response in (
        bob.get(path),
        bob.patch(path, {"enabled": False}, format="json"),
        bob.delete(path),
        bob.post(f"{path}/rotate-secret"),
        bob.get(f"{path}/deliveries"),
        bob.post(f"/webhook-deliveries/{delivery.pk}/redeliver"),
    ):
        assert_error(response, 404)  # not 403: another client's endpoint is not disclosed
    stored = WebhookEndpoint.objects.get(pk=endpoint["id"])
    assert (stored.enabled, stored.secret, stored.owner.username) == (True, endpoint["secret"], "alice")
    assert task_messages(own_celery) == []
    # Bob's orders do not reach Alice's endpoint.
    order_created(bob, seed_order)
    assert [row["id"] for row in alice.get(f"{path}/deliveries").json()["results"]] == [str(delivery.pk)]
    assert {row["id"] for row in staff.get(ENDPOINTS).json()["results"]} == {endpoint["id"], bobs["id"]}


def test_without_a_token_every_webhook_operation_is_refused(auth_required, api_client):
    endpoint = WebhookEndpoint.objects.create(url=PUBLIC_URL, secret="whsec_x")
    path = f"{ENDPOINTS}/{endpoint.pk}"

    for response in (
        api_client.post(ENDPOINTS, {"url": PUBLIC_URL}, format="json"),
        api_client.get(ENDPOINTS),
        api_client.get(path),
        api_client.patch(path, {"enabled": False}, format="json"),
        api_client.delete(path),
        api_client.post(f"{path}/rotate-secret"),
        api_client.get(f"{path}/deliveries"),
    ):
        assert_error(response, 401)
    assert WebhookEndpoint.objects.get().enabled
