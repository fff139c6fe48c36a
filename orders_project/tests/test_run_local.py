"""The README's run command: the whole system on the embedded default, stopped with Ctrl-C.

run-local runs here on free ports only (web, the Kafka broker, every metrics endpoint), so the
test passes while a real ``bin/run-local`` (8080, 9092, 9101-9104) runs on the same machine.
"""

from __future__ import annotations

import json
import urllib.request

import pytest

from devtools.harness.run_local import LocalStack, alive, descendants
from devtools.harness.sample_orders import SEED_ORDER
from devtools.harness.waiting import wait_until

pytestmark = pytest.mark.e2e


def _json(url: str, body: dict | None = None):
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode() if body else None,
        headers={"Content-Type": "application/json"},
        method="POST" if body else "GET",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.load(response)
    except OSError:
        return None, None


def _terminal_order(url: str) -> dict | None:
    _status, order = _json(url)
    return order if order and order["status"] in ("PAID", "PAYMENT_FAILED") else None


def _json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def test_run_local_serves_the_seed_curl_to_a_terminal_state_and_stops_on_ctrl_c(tmp_path):
    stack = LocalStack(work_dir=tmp_path).start()
    base = stack.base_url
    children: set[int] = set()
    try:
        wait_until(lambda: _json(f"{base}/health")[0] == 200, timeout=60, interval=0.5, message="run-local did not come up")
        children = descendants(stack.process.pid)
        status, created = _json(f"{base}/orders", SEED_ORDER)
        assert status == 201
        assert created["status"] == "CREATED"

        order = wait_until(
            lambda: _terminal_order(f"{base}/orders/{created['order_id']}"),
            timeout=60,
            interval=0.5,
            message="the order did not reach PAID or PAYMENT_FAILED",
        )
        assert order["total_amount"] == "75.97"
    finally:
        # Ctrl-C in a terminal: SIGINT to run-local and the broker (its process group).
        exit_code = stack.ctrl_c()
    output = stack.output()
    assert exit_code == 0, output[-3000:]

    # Every line is one JSON object, run-local's own and the processes' (emails included).
    assert [line for line in output.splitlines() if not _json_object(line)] == []
    assert stack.events("email_sent"), "the order's emails are logged"
    own = stack.events(logger="run-local")
    assert {"process_started", "run_local_up", "processes_stopped", "run_local_stopped"} <= {e["event"] for e in own}
    (up,) = stack.events("run_local_up", logger="run-local")
    assert up["api"] == f"http://localhost:{stack.port}/orders"
    assert up["admin"] == f"http://localhost:{stack.port}/admin/"
    assert up["docs"] == f"http://localhost:{stack.port}/api/docs/"
    assert up["kafka"] == stack.env["KAFKA_BROKERS"]
    assert up["api"] in up["message"] and up["level"] == "info" and up["ts"]

    # No process died on the way (a port in use makes relay, bridge, worker or reconciler exit).
    assert not stack.events("process_exited", logger="run-local"), stack.events("process_exited")
    # Ctrl-C: every process stopped cleanly on SIGTERM while the broker still ran; then the broker.
    (stopped,) = stack.events("processes_stopped", logger="run-local")
    assert stopped["exit_codes"] == {name: 0 for name in ("web", "relay", "bridge", "reconciler", "worker", "webhook-worker")}
    assert stopped["kafka_broker_running"] is True
    assert children, "run-local started no processes"
    assert not [pid for pid in children if alive(pid)], "a process outlived run-local"
