"""The Celery no-op baseline: N tasks through Redis to a threads-pool worker doing nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from devtools.bench.env import BASE_DIR, REDIS_URL


def run_noop_baseline(*, tasks: int, concurrency: int, log_dir: Path, run_id: str, register) -> dict[str, Any]:
    """Start the worker (``register`` keeps the Popen for clean-up), send ``tasks`` tasks, time
    until the worker ran them all."""
    queue = f"bench-noop-{run_id}"
    os.environ["BENCH_CELERY_BROKER_URL"] = REDIS_URL
    os.environ["BENCH_NOOP_QUEUE"] = queue
    from devtools.bench import noop  # reads the two variables above

    # Without DJANGO_SETTINGS_MODULE Celery's Django fix-up stays off, so the product's app is not
    # loaded: its worker_init handler would run for this app too and point it at the pipeline's queue.
    env = {**{k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}, "PYTHONUNBUFFERED": "1"}
    log_path = log_dir / "noop-worker.log"
    command = [
        sys.executable, "-m", "celery", "-A", "devtools.bench.noop", "worker", "--pool", "threads", "-c", str(concurrency),
        "--without-gossip", "--without-mingle", "--loglevel", "INFO", "-Q", queue, "--hostname", f"bench-noop-{run_id}@%h",
    ]
    process = subprocess.Popen(
        command, cwd=BASE_DIR, env=env, stdout=log_path.open("ab"), stderr=subprocess.STDOUT, start_new_session=True
    )
    register(process)
    try:
        deadline = time.monotonic() + 60
        while " ready." not in log_path.read_text(errors="replace"):
            if process.poll() is not None:
                raise RuntimeError(f"no-op worker exited ({process.returncode}); see {log_path}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no-op worker not ready in 60 s; see {log_path}")
            time.sleep(0.2)
        client = noop.counter()
        client.delete(noop.COUNTER_KEY)
        started = time.perf_counter()
        with noop.app.producer_or_acquire() as producer:
            for index in range(tasks):
                noop.noop.apply_async((index,), producer=producer)
        sent = time.perf_counter()
        done_when_sent = int(client.get(noop.COUNTER_KEY) or 0)
        deadline = time.monotonic() + 180
        while int(client.get(noop.COUNTER_KEY) or 0) < tasks:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no-op tasks not done in 180 s ({client.get(noop.COUNTER_KEY)} of {tasks})")
            time.sleep(0.02)
        done = time.perf_counter()
        return {
            "tasks": tasks,
            "concurrency": concurrency,
            "send_rate": tasks / (sent - started),
            "rate": tasks / (done - started),
            "elapsed_s": done - started,
            # Once all were sent: how fast the worker worked off the rest of the queue.
            "drain_rate": (tasks - done_when_sent) / (done - sent) if done > sent and tasks > done_when_sent else None,
        }
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
