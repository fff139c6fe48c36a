"""The README's run command: the whole system on the embedded default, stopped with Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request

import pytest

from events.embedded_broker import free_port
from orders_project.config import BASE_DIR
from orders_project.testing import SEED_ORDER, wait_until

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


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as status:
            return "zombie" not in status.read()
    except OSError:
        return False


def _descendants(pid: int) -> set[int]:
    children = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            if parent == pid:
                children |= {int(entry)} | _descendants(int(entry))
    return children


def test_run_local_serves_the_seed_curl_to_a_terminal_state_and_stops_on_ctrl_c(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "HTTP_PORT": str(port),
        "KAFKA_BROKERS": f"127.0.0.1:{free_port()}",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "CELERY_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'celery.sqlite3'}",
    }
    env.pop("CELERY_QUEUE", None)
    log = (tmp_path / "run-local.log").open("wb")
    stack = subprocess.Popen(
        [sys.executable, "-m", "orders_project.local_stack"], cwd=BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _json(f"{base}/health")[0] == 200, timeout=60, interval=0.5, message="run-local did not come up")
        children = _descendants(stack.pid)
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
        stack.send_signal(signal.SIGINT)
        exit_code = stack.wait(timeout=60)
    output = (tmp_path / "run-local.log").read_text()
    assert exit_code == 0, output[-3000:]
    assert "[run-local] stopped" in output
    assert children, "run-local started no processes"
    assert not [pid for pid in children if _alive(pid)], "a process outlived run-local"
