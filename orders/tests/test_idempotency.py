"""Idempotency-Key: a retried POST never makes a second order, also under concurrency."""

from __future__ import annotations

import threading

import pytest
from django.db import connection
from rest_framework.test import APIClient

from events.models import OutboxEvent
from orders.models import Order

pytestmark = pytest.mark.django_db


def test_same_key_and_body_returns_the_first_order(api_client, seed_order):
    first = api_client.post("/orders", seed_order, format="json", HTTP_IDEMPOTENCY_KEY="key-1")
    second = api_client.post("/orders", seed_order, format="json", HTTP_IDEMPOTENCY_KEY="key-1")

    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert "Idempotent-Replayed" not in first
    assert second["Idempotent-Replayed"] == "true"
    assert Order.objects.count() == 1
    assert OutboxEvent.objects.count() == 1


def test_same_key_other_body_is_refused(api_client, seed_order):
    first = api_client.post("/orders", seed_order, format="json", HTTP_IDEMPOTENCY_KEY="key-1")
    seed_order["items"][0]["quantity"] = 3

    reused = api_client.post("/orders", seed_order, format="json", HTTP_IDEMPOTENCY_KEY="key-1")

    assert reused.status_code == 422
    assert first.json()["order_id"] in reused.json()["error"]
    assert Order.objects.count() == 1
    assert Order.objects.get().items.get(product_id="prod_001").quantity == 2


def test_different_keys_make_different_orders(api_client, seed_order):
    api_client.post("/orders", seed_order, format="json", HTTP_IDEMPOTENCY_KEY="key-1")
    api_client.post("/orders", seed_order, format="json", HTTP_IDEMPOTENCY_KEY="key-2")
    api_client.post("/orders", seed_order, format="json")

    assert Order.objects.count() == 3


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_with_one_key_make_one_order(seed_order):
    """Requests race on the key's unique constraint; every one gets the winner's order."""
    workers = 8
    barrier = threading.Barrier(workers)
    responses = []

    def post():
        try:
            barrier.wait()
            response = APIClient().post("/orders", seed_order, format="json", HTTP_IDEMPOTENCY_KEY="race-key")
            responses.append(response)
        finally:
            connection.close()

    threads = [threading.Thread(target=post) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert [r.status_code for r in responses] == [201] * workers
    assert len({r.json()["order_id"] for r in responses}) == 1
    assert sum("Idempotent-Replayed" not in r for r in responses) == 1
    assert Order.objects.count() == 1
    assert OutboxEvent.objects.count() == 1
