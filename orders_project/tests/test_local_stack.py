"""run-local's supervisor (devtools.local_stack) without the stack: restart backoff, the
exit and restart of a process, its JSON lines. test_run_local.py and test_faults_local.py run
the real thing."""

from __future__ import annotations

import json
import os
import sys
import time

from devtools.harness.waiting import wait_until
from devtools.local_stack import Backoff, Child, _logger
from orders_project.config import load_config
from orders_project.logging import SERVICE_NAME


class RecordingLog:
    def __init__(self):
        self.events: list[dict] = []

    def _record(self, level: str):
        return lambda event, **fields: self.events.append({"event": event, "level": level, **fields})

    def __getattr__(self, level: str):
        return self._record(level)


def test_restart_backoff_doubles_from_1_s_to_30_s_and_starts_over_after_a_minute_of_running():
    backoff = Backoff()
    assert [backoff.next_delay(ran_for=0.5) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.next_delay(ran_for=61.0) == 1
    assert backoff.next_delay(ran_for=5.0) == 2


def test_a_process_that_exits_is_logged_with_its_code_and_started_again_after_its_backoff():
    log = RecordingLog()
    child = Child("flaky", [sys.executable, "-c", "import sys; sys.exit(3)"], env=dict(os.environ), log=log)
    child.start()
    first_pid = child.process.pid
    wait_until(lambda: child.process.poll() is not None, timeout=30, message="the process did not exit")

    now = time.monotonic()
    child.supervise(now)
    exited = log.events[-1]
    assert exited["event"] == "process_exited" and exited["level"] == "error"
    assert (exited["process"], exited["pid"], exited["exit_code"], exited["restart_in_s"]) == ("flaky", first_pid, 3, 1.0)
    assert exited["message"].startswith(f"flaky (pid {first_pid}) exited with code 3 after ")
    assert "restarting it in 1 s" in exited["message"]

    child.supervise(now + 0.5)  # not yet
    assert child.process.pid == first_pid
    child.supervise(now + 1.0)
    assert child.process.pid != first_pid
    assert log.events[-1] == {"event": "process_started", "level": "info", "process": "flaky", "pid": child.process.pid, "start": 2}
    child.process.wait(timeout=30)

    child.supervise(time.monotonic())  # exited again at once: the wait doubles
    assert log.events[-1]["restart_in_s"] == 2.0


def test_run_local_prints_json_lines_like_the_processes(capsys):
    config = load_config()
    _logger(config).error("process_exited", process="worker", exit_code=-9, message="worker exited")
    (line,) = capsys.readouterr().out.splitlines()
    event = json.loads(line)
    assert event == {
        "process": "worker",
        "exit_code": -9,
        "message": "worker exited",
        "event": "process_exited",
        "level": "error",
        "logger": "run-local",
        "ts": event["ts"],
        "service": SERVICE_NAME,
        "environment": config["environment"],
    }
