"""HTTP as clients really send it, through gunicorn as in production: chunked bodies, and JSON
errors on every API path whatever the environment."""

from __future__ import annotations

import http.client
import json

import pytest

from devtools.harness.process_group import ProcessGroup
from devtools.harness.sample_orders import SEED_ORDER
from devtools.harness.waiting import wait_until
from orders.models import Order

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]


@pytest.fixture(scope="module")
def web(django_db_setup, django_db_blocker, kafka_broker, tmp_path_factory):
    group, port = ProcessGroup.with_web_port(
        kafka_brokers=kafka_broker.bootstrap_servers,
        work_dir=tmp_path_factory.mktemp("web"),
        HTTP_MAX_BODY_BYTES="4096",
        DJANGO_DEBUG="true",  # Django's debug pages are the ones that listed every URL pattern
    )
    with django_db_blocker.unblock():
        group.start("web")
        wait_until(lambda: _status(port, "GET", "/health") == 200, timeout=30, interval=0.3, message="web did not start")
        yield port
        group.stop_all()


def _status(port: int, method: str, path: str) -> int | None:
    try:
        return send(port, method, path)[0]
    except OSError:
        return None


def send(port: int, method: str, path: str, *, chunks: list[bytes] | None = None, headers: dict | None = None):
    """The request as http.client sends it; ``chunks``: a body with Transfer-Encoding: chunked."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=iter(chunks) if chunks is not None else None, headers=headers or {}, encode_chunked=chunks is not None)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        connection.close()


JSON = {"Content-Type": "application/json", "Accept": "application/json"}


def test_a_chunked_order_is_read_and_created_like_any_other(web):
    body = json.dumps(SEED_ORDER).encode()

    status, _type, answer = send(web, "POST", "/orders", chunks=[body[:40], body[40:]], headers=JSON)

    assert status == 201, answer
    order = Order.objects.get(pk=json.loads(answer)["order_id"])
    assert (order.user_id, str(order.total_amount), order.items.count()) == ("customer_123", "75.97", 2)


def test_a_chunked_body_over_the_limit_gets_413_and_writes_nothing(web):
    padded = {**SEED_ORDER, "user_id": "x" * 20}
    body = json.dumps(padded).encode() + b" " * 300_000

    status, content_type, answer = send(web, "POST", "/orders", chunks=[body[i : i + 8192] for i in range(0, len(body), 8192)], headers=JSON)

    assert (status, content_type) == (413, "application/json")
    assert "the limit is 4096 bytes" in json.loads(answer)["error"]
    assert not Order.objects.exists()


def test_a_chunked_invalid_order_gets_its_field_errors(web):
    status, _type, answer = send(web, "POST", "/orders", chunks=[b'{"user_id": "", "email": "nope", "items": []}'], headers=JSON)

    assert status == 400
    fields = json.loads(answer)["fields"]
    # The body was read: the errors are about its values, not missing fields.
    assert fields["user_id"] == ["This field may not be blank."]
    assert fields["email"] == ["Enter a valid email address."]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/orders/not-a-uuid", 404),
        ("GET", "/no/such/path", 404),
        ("DELETE", "/orders", 405),
        ("PUT", "/health", 405),
    ],
)
def test_api_paths_answer_errors_as_json_even_with_debug_on(web, method, path, status):
    got, content_type, answer = send(web, method, path, headers={"Accept": "application/json"})

    assert (got, content_type) == (status, "application/json")
    error = json.loads(answer)["error"]
    assert path in error or method in error
    assert b"URLconf" not in answer and b"<html" not in answer.lower()
