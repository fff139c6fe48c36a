"""The system under test (web, relay, bridge, worker as separate processes) and the API and
end-to-end measurements against it."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

from devtools.bench import cpu
from devtools.bench.env import BASE_DIR
from devtools.bench.httpload import PostLog, backlog_limited, closed_loop, paced
from devtools.bench.mix import Tracker
from devtools.bench.stats import epoch, summary

TERMINAL = ("PAID", "PAYMENT_FAILED", "FAILED", "CANCELLED", "PARTIALLY_REFUNDED", "REFUNDED")
# The timeline entries of an order reaching its first terminal status (a cancelled order may never be paid).
TERMINAL_EVENTS = ["ORDER_PAID", "PAYMENT_FAILED", "ORDER_CANCELLED"]
POSTERS = 4  # client threads of the saturation run
WEBHOOK_WORKER = "webhook-worker"
# The CPU session of the benchmark's webhook receiver: the shop's side, not the system's.
WEBHOOK_RECEIVER = "webhook receiver"


class System:
    """The processes of a system under test through devtools.harness.process_group.ProcessGroup (the pipeline's
    web, relay, bridge and workers, or the peer's web and workers); every one is killed in stop()."""

    def __init__(self, *, env: dict[str, str], log_dir: Path, http_port: int, workers: int = 1):
        from devtools.harness.process_group import ProcessGroup

        self.group = ProcessGroup(env=env, log_dir=log_dir)
        # Worker processes, each a `celery worker` of its own (one per core is the default).
        self.workers = ["worker", *(f"worker-{n}" for n in range(2, workers + 1))]
        self.port = http_port
        self.base_url = f"http://127.0.0.1:{http_port}"
        self.started: dict[str, subprocess.Popen] = {}

    def start(self, *names: str) -> None:
        for name in names:
            self.started[name] = self.group.start(name, command="worker" if name in self.workers else None)

    def _alive(self, name: str) -> None:
        process = self.started[name]
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}; see {self.group.log_dir / (name + '.log')}")

    def _wait(self, name: str, check, *, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            self._alive(name)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not seen in {timeout:.0f} s; see {self.group.log_dir / (name + '.log')}")
            time.sleep(0.25)

    def wait_web(self, timeout: float = 60) -> None:
        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"{self.base_url}/health", timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False

        self._wait("web", healthy, timeout=timeout, what="web /health")

    def wait_bridge(self, timeout: float = 90) -> None:
        self._wait(
            "bridge",
            lambda: any(e.get("event") == "partitions_assigned" and e.get("partitions") for e in self.group.log_events("bridge")),
            timeout=timeout,
            what="bridge partitions_assigned",
        )

    def wait_workers(self, timeout: float = 60) -> None:
        """The Celery workers started ready: the pipeline's, and the webhook worker if it runs."""
        for name in [name for name in self.started if name in self.workers or name == WEBHOOK_WORKER]:
            self._wait(name, lambda: " ready." in self.group.log(name), timeout=timeout, what=f"{name} ready")

    def wait_relay(self, timeout: float = 60) -> None:
        self._wait(
            "relay", lambda: any(e.get("event") == "relay_started" for e in self.group.log_events("relay")),
            timeout=timeout, what="relay_started",
        )

    def restart_workers(self, timeout: float = 90, **env_overrides: str) -> None:
        """Every Celery worker of the system stopped and started again with ``env_overrides``
        (the gateway's latency, read once at a process's start)."""
        for name in self.workers:
            ready_before = self.group.log(name).count(" ready.")
            self.group.stop(name, timeout=30)
            self.group.env = {**self.group.env, **env_overrides}
            self.start(name)
            self._wait(name, lambda: self.group.log(name).count(" ready.") > ready_before, timeout=timeout,
                       what=f"{name} ready again")

    def start_webhook_receiver(self, timeout: float = 30) -> str:
        """The receiver process of ``devtools.bench.webhook_sink`` (killed in stop()); its URL."""
        with (self.group.log_dir / "webhook-receiver.log").open("ab") as log:
            process = self.started[WEBHOOK_RECEIVER] = subprocess.Popen(
                [sys.executable, "-m", "devtools.bench.webhook_sink"], cwd=BASE_DIR, env=self.group.env,
                stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True,
            )
        if not select.select([process.stdout], [], [], timeout)[0]:
            raise TimeoutError(f"the webhook receiver printed no port in {timeout:.0f} s")
        port = process.stdout.readline().strip()
        if not port.isdigit():
            raise RuntimeError(f"the webhook receiver exited with {process.poll()} before listening")
        return f"http://127.0.0.1:{port}/hooks"

    def stop(self) -> None:
        """SIGTERM each (clean stop), SIGKILL after 30 s, then SIGKILL whatever is left in their sessions."""
        for name in list(self.group.processes):
            try:
                self.group.stop(name, timeout=30)
            except Exception:  # noqa: BLE001 - go on stopping the others
                pass
        for process in self.started.values():
            try:
                os.killpg(process.pid, signal.SIGKILL)  # start_new_session: the group id is its pid
            except (ProcessLookupError, PermissionError):
                pass
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def cpu_snapshot(self, *, broker_pid: int | None) -> dict[str, float]:
        pids = {"benchmark client": os.getpid()}
        if broker_pid:
            pids["kafka broker (Tansu)"] = broker_pid
        sessions: dict[str, list[int]] = {}
        for name, process in self.started.items():
            sessions.setdefault("worker" if name in self.workers else name, []).append(process.pid)
        return cpu.snapshot(
            sessions=sessions,
            pids=pids,
            commands={"postgresql": "postgres", "redis": "redis-server"},
        )

    # --- logs -------------------------------------------------------------------------------

    def log_events(self, name: str) -> list[dict[str, Any]]:
        """The JSON lines of process ``name``; none for a process this system does not run (the peer's relay)."""
        return self.group.log_events(name) if name in self.started else []

    def log_times(self, name: str, event: str) -> list[float]:
        return [epoch(e["ts"]) for e in self.log_events(name) if e.get("event") == event and e.get("ts")]

    def dispatched_order_created(self) -> dict[str, float]:
        return {
            e["event_id"]: epoch(e["ts"])
            for e in self.log_events("bridge")
            if e.get("event") == "event_dispatched" and e.get("event_type") == "ORDER_CREATED" and e.get("event_id")
        }

    def task_runs(self) -> list[dict[str, Any]]:
        """The workers' successful task runs: task, the orders of a batch step, received and end (epoch s).

        From the workers' ``task_received`` and ``task_done`` (state SUCCESS) lines, paired by task
        id. The workers log no line when a run starts: ``received`` is when the worker took the
        message off the queue, so received to end includes any wait for a free thread.
        """
        events = [event for name in self.workers for event in self.log_events(name)]
        received: dict[str, list[float]] = defaultdict(list)
        for e in events:
            if e.get("event") == "task_received" and e.get("task_id") and e.get("ts"):
                received[e["task_id"]].append(epoch(e["ts"]))
        runs = []
        for e in events:
            if e.get("event") == "task_done" and e.get("state") == "SUCCESS" and e.get("ts"):
                end = epoch(e["ts"])
                # A retried task is received again under its id: the run that succeeded is the last one.
                received_at = max((t for t in received.get(e.get("task_id"), []) if t <= end), default=None)
                runs.append({"task": e.get("task"), "order_ids": e.get("order_ids") or [], "end": end, "received": received_at})
        return runs


# --- API -----------------------------------------------------------------------------------


def api_levels(system: System, *, levels: list[int], duration: float, broker_pid: int | None) -> list[dict[str, Any]]:
    results = []
    for concurrency in levels:
        before = system.cpu_snapshot(broker_pid=broker_pid)
        result = closed_loop(host="127.0.0.1", port=system.port, concurrency=concurrency, duration=duration)
        used = cpu.delta(before, system.cpu_snapshot(broker_pid=broker_pid))
        result.update(_cpu_fields(used, result["status_201"]))
        results.append(result)
        time.sleep(1.0)
    return results


def paired_api_vs_orm(system: System, orm_load, *, concurrency: int, rounds: int, duration: float) -> dict[str, Any]:
    """The API and the ORM-only baseline (2 processes) in alternating slices of ``duration`` s.

    This host's speed drifts by a fifth from minute to minute (a fixed Python loop took 112-171 ms
    in one quiet minute), so two figures measured minutes apart can differ by that much. Slices
    that alternate, the order flipped every round, see the same drift; their sums give the ratio.
    ``orm_load`` is a ``devtools.bench.orm.OrmLoad`` of 2 processes.
    """
    api_rates: list[float] = []
    orm_rates: list[float] = []
    for round_number in range(rounds):
        steps = ["api", "orm"] if round_number % 2 == 0 else ["orm", "api"]
        for step in steps:
            if step == "api":
                api_rates.append(closed_loop(host="127.0.0.1", port=system.port, concurrency=concurrency,
                                             duration=duration)["throughput"])
            else:
                orm_rates.append(orm_load.run(duration)["rate"])
            time.sleep(0.5)
    per_round = [api / orm for api, orm in zip(api_rates, orm_rates) if orm]
    return {
        "concurrency": concurrency,
        "rounds": rounds,
        "slice_s": duration,
        "api_rates": [round(rate, 1) for rate in api_rates],
        "orm_rates": [round(rate, 1) for rate in orm_rates],
        "api_rate": sum(api_rates) / rounds,
        "orm_rate": sum(orm_rates) / rounds,
        "ratio": sum(api_rates) / sum(orm_rates) if sum(orm_rates) else None,
        "ratio_per_round": [round(value, 3) for value in per_round],
    }


def _cpu_per_order(used: dict, orders: int) -> dict[str, float]:
    """CPU ms per order by process; "other" is the rest of the machine's busy time (the kernel,
    and anything else running on this host meanwhile)."""
    if not orders:
        return {}
    return {
        name: round(seconds / orders * 1000, 2)
        for name, seconds in used.items()
        if not name.startswith("_") and name not in ("machine_busy", "machine_total") and seconds > 0
    }


def _cpu_fields(used: dict, orders: int) -> dict[str, Any]:
    return {
        "machine_busy_pct": cpu.busy_pct(used),
        "cpu_ms_per_order": _cpu_per_order(used, orders),
        "other_processes": used.get("_other_top", []),
    }


# --- end to end ----------------------------------------------------------------------------


def pipeline_counts() -> dict[str, int]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT "
            "(SELECT count(*) FROM orders_order), "
            f"(SELECT count(*) FROM orders_order WHERE status IN ({', '.join(repr(s) for s in TERMINAL)})), "
            "(SELECT count(*) FROM notifications_notification), "
            "(SELECT count(*) FROM events_outboxevent WHERE published_at IS NULL)"
        )
        orders, terminal, notifications, unpublished = cursor.fetchone()
    return {"orders": orders, "terminal": terminal, "notifications": notifications, "unpublished": unpublished}


def delivery_counts() -> dict[str, int]:
    """Webhook deliveries by status (none without an endpoint)."""
    from django.db.models import Count

    from webhooks.models import WebhookDelivery

    counts = dict.fromkeys(("PENDING", "SUCCEEDED", "FAILED"), 0)
    counts.update(WebhookDelivery.objects.values_list("status").annotate(n=Count("id")).order_by())
    return {f"deliveries_{status.lower()}": n for status, n in counts.items()}


@contextlib.contextmanager
def webhook_endpoint(*, url: str):
    """One endpoint taking every order event of the benchmark's orders (posted without
    credentials: their owner is none) for the block; removed after it with its deliveries."""
    from webhooks import services

    endpoint = services.create_endpoint(owner=None, url=url, event_types=[], description="benchmark")
    try:
        yield endpoint
    finally:
        services.delete_endpoint(endpoint=endpoint)


def drain(tracker: Tracker, *, timeout: float) -> dict[str, Any]:
    """Wait until every order ``tracker`` follows is finished, every outbox row published and every
    webhook delivery sent."""
    started = time.monotonic()
    finished = tracker.wait_finished(timeout=timeout)
    while True:
        counts = {**pipeline_counts(), **delivery_counts()}
        drained = finished and counts["unpublished"] == 0 and counts["deliveries_pending"] == 0
        if drained or time.monotonic() - started > timeout:
            break
        time.sleep(0.5)
    if drained:
        time.sleep(1.0)  # the last NOTIFICATION_SENT events pass the bridge (no task)
    return {"drained": drained, "seconds": time.monotonic() - started, **counts, "mix": tracker.summary(),
            "webhook_calls_by_kind": tracker.webhook_calls_by_kind() if tracker.webhooks else None}


def _count_between(times: list[float], start: float, end: float) -> int:
    return sum(1 for t in times if start <= t < end)


def saturation(system: System, *, warmup: float, window: float, backlog: int, broker_pid: int | None,
               webhooks: bool, drain_timeout: float) -> dict[str, Any]:
    """The max sustainable rate of the mix (devtools.bench.mix): post as fast as the system
    finishes orders (at most ``backlog`` unfinished), and count the orders that finish per second
    once it runs steadily; then wait until every order is finished (``drain``). ``webhooks``: an
    endpoint takes the orders' events, and an order is finished once its deliveries are sent too
    (else the rate would leave a growing queue of them behind, unpaid for in the CPU per order)."""

    def counts() -> dict[str, int]:
        return {**pipeline_counts(), **delivery_counts(), "finished": tracker.finished}

    with Tracker(host="127.0.0.1", port=system.port, webhooks=webhooks) as tracker:
        holder: dict[str, PostLog] = {}
        load = threading.Thread(
            target=lambda: holder.setdefault(
                "log",
                backlog_limited(host="127.0.0.1", port=system.port, duration=warmup + window, backlog=backlog,
                                done=lambda: tracker.finished, on_accepted=tracker.accepted, posters=POSTERS),
            ),
            daemon=True,
        )
        load.start()
        time.sleep(warmup)
        t_a, counts_a, cpu_a = time.time(), counts(), system.cpu_snapshot(broker_pid=broker_pid)
        time.sleep(window)
        t_b, counts_b, cpu_b = time.time(), counts(), system.cpu_snapshot(broker_pid=broker_pid)
        load.join(timeout=window + 180)
        drained = drain(tracker, timeout=drain_timeout)
    log = holder.get("log", PostLog())
    elapsed = t_b - t_a
    delta = {key: counts_b[key] - counts_a[key] for key in counts_b}
    accepted_times = [p.answered for p in log.posted if p.status == 201]
    used = cpu.delta(cpu_a, cpu_b)
    finished = max(1, delta["finished"])
    return {
        "method": (
            f"{POSTERS} client threads post whenever fewer than {backlog} accepted orders are unfinished; "
            f"after {warmup:.0f} s of warm-up, orders finished (terminal, cancellation or refund settled, notifications"
            f"{' and webhook deliveries' if webhooks else ''} done) are counted over {window:.0f} s"
        ),
        "backlog": backlog,
        "window_s": elapsed,
        "posted_rate": _count_between(accepted_times, t_a, t_b) / elapsed,
        "terminal_rate": delta["terminal"] / elapsed,
        "notifications_per_finished_order": delta["notifications"] / finished,
        "max_sustainable_rate": delta["finished"] / elapsed,
        "non_201": sum(1 for p in log.posted if p.status != 201),
        "relay_published_rate": _count_between(system.log_times("relay", "event_published"), t_a, t_b) / elapsed,
        "bridge_dispatched_rate": _count_between(system.log_times("bridge", "event_dispatched"), t_a, t_b) / elapsed,
        "tasks_succeeded_rate": _count_between([r["end"] for r in system.task_runs()], t_a, t_b) / elapsed,
        "webhooks": {
            "deliveries_succeeded": delta["deliveries_succeeded"],
            "deliveries_succeeded_rate": delta["deliveries_succeeded"] / elapsed,
            "deliveries_per_finished_order": delta["deliveries_succeeded"] / finished,
            "deliveries_failed": delta["deliveries_failed"],
            "pending_at_start": counts_a["deliveries_pending"],
            "pending_at_end": counts_b["deliveries_pending"],
        } if webhooks else None,
        "drain": drained,
        **_cpu_fields(used, finished),
    }


def sustained(system: System, *, rate: float, duration: float, warm: float, broker_pid: int | None,
              drain_timeout: float, idle_window: float, webhooks: bool) -> dict[str, Any]:
    """The mix at a fixed offered ``rate`` for ``duration`` s; then every order's way through the stages."""
    from devtools.bench.env import database_counters

    # The idle system's own commits (the relay polls the outbox every 50 ms), subtracted below.
    idle_start, idle_before = time.monotonic(), database_counters()
    time.sleep(idle_window)
    db_before = database_counters()
    counted_from = time.monotonic()
    idle_rate = (db_before["xact_commit"] - idle_before["xact_commit"]) / (counted_from - idle_start)
    cpu_before = system.cpu_snapshot(broker_pid=broker_pid)
    with Tracker(host="127.0.0.1", port=system.port, webhooks=webhooks) as tracker:
        t_start = time.time()
        log = paced(host="127.0.0.1", port=system.port, rate=rate, duration=duration, on_accepted=tracker.accepted)
        t_end = time.time()
        drained = drain(tracker, timeout=drain_timeout)
    cpu_after = system.cpu_snapshot(broker_pid=broker_pid)
    # pg_stat_database: idle backends report their counts after up to 10 s.
    time.sleep(11)
    db_after = database_counters()
    counted_s = time.monotonic() - counted_from
    analysis = analyse(system, log, t_start=t_start, t_end=t_end, warm=warm)
    accepted = analysis["accepted"]
    used = cpu.delta(cpu_before, cpu_after)
    db_delta = {key: db_after[key] - db_before[key] for key in db_after}
    db_delta["xact_commit_minus_idle"] = db_delta["xact_commit"] - idle_rate * counted_s
    return {
        "offered_rate": rate,
        "duration_s": duration,
        "drain": drained,
        **analysis,
        "db_per_order": {key: round(value / accepted, 1) for key, value in db_delta.items()} if accepted else {},
        "db_idle_commits_per_s": round(idle_rate, 1),
        **_cpu_fields(used, accepted),
    }


def analyse(system: System, log: PostLog, *, t_start: float, t_end: float, warm: float) -> dict[str, Any]:
    from events.models import OutboxEvent
    from orders.models import Order, OrderTimelineEntry

    accepted = [p for p in log.posted if p.status == 201 and p.order_id]
    ids = [p.order_id for p in accepted]
    orders = {str(pk): status for pk, status in Order.objects.filter(pk__in=ids).values_list("id", "status")}
    outbox = {
        key: (str(event_id), epoch(created), epoch(published))
        for key, event_id, created, published in OutboxEvent.objects.filter(key__in=ids, event_type="ORDER_CREATED").values_list(
            "key", "event_id", "created_at", "published_at"
        )
    }
    timeline: dict[str, dict[str, float]] = defaultdict(dict)
    for order_id, event_type, created in OrderTimelineEntry.objects.filter(
        order_id__in=ids, event_type__in=["ORDER_CREATED", "ORDER_PROCESSING", *TERMINAL_EVENTS]
    ).values_list("order_id", "event_type", "created_at"):
        timeline[str(order_id)].setdefault(event_type, epoch(created))
    dispatched = system.dispatched_order_created()
    task_runs = system.task_runs()
    runs: dict[tuple[str, str], dict] = {}
    for run in task_runs:
        for order_id in run["order_ids"]:
            runs.setdefault((run["task"], order_id), run)

    stages: dict[str, list[float]] = defaultdict(list)
    terminal_times: list[float] = []
    statuses: dict[str, int] = defaultdict(int)
    for p in accepted:
        statuses[orders.get(p.order_id, "MISSING")] += 1
        steps = timeline.get(p.order_id, {})
        event_id, outbox_created, published = outbox.get(p.order_id, (None, None, None))
        terminal = min((steps[event] for event in TERMINAL_EVENTS if event in steps), default=None)
        processing = steps.get("ORDER_PROCESSING")
        sent_at = dispatched.get(event_id)
        process_run = runs.get(("orders.process_orders", p.order_id))
        charge_run = runs.get(("payments.charge_payments", p.order_id))
        stages["POST response (client)"].append(p.answered - p.sent)
        if p.sent - p.scheduled > 0:
            stages["client lateness"].append(p.sent - p.scheduled)
        if outbox_created and published:
            stages["outbox wait (published - created)"].append(published - outbox_created)
        if published and sent_at:
            stages["Kafka + bridge (dispatched - published)"].append(sent_at - published)
        if sent_at and process_run and process_run["received"]:
            stages["Celery queue (received - dispatched)"].append(process_run["received"] - sent_at)
        if process_run and process_run["received"]:
            stages["process_orders (done - received)"].append(process_run["end"] - process_run["received"])
        if published and processing:
            stages["to processing (ORDER_PROCESSING - published)"].append(processing - published)
        if processing and terminal:
            stages["payment (terminal - ORDER_PROCESSING)"].append(terminal - processing)
        if process_run and charge_run and charge_run["received"]:
            stages["hand-over (charge received - process done)"].append(charge_run["received"] - process_run["end"])
        if charge_run and charge_run["received"]:
            stages["charge_payments (done - received)"].append(charge_run["end"] - charge_run["received"])
        if terminal:
            terminal_times.append(terminal)
            stages["POST to terminal"].append(terminal - p.sent)
    measured_from = t_start + warm
    in_window = _count_between(terminal_times, measured_from, t_end)
    # Every successful run, by task (the peer's tasks carry no event id to tell them apart by).
    task_times: dict[str, list[float]] = defaultdict(list)
    for run in task_runs:
        if t_start <= run["end"] <= t_end + 60 and run["received"]:
            task_times[run["task"]].append(run["end"] - run["received"])
    order = [
        "POST response (client)", "outbox wait (published - created)", "Kafka + bridge (dispatched - published)",
        "Celery queue (received - dispatched)", "process_orders (done - received)",
        "to processing (ORDER_PROCESSING - published)", "hand-over (charge received - process done)",
        "charge_payments (done - received)", "payment (terminal - ORDER_PROCESSING)", "POST to terminal", "client lateness",
    ]
    dispatch_times = sorted(t for t in system.log_times("bridge", "event_dispatched") if t_start <= t <= t_end)
    pauses = [b - a for a, b in zip(dispatch_times, dispatch_times[1:]) if b - a > 1.0]
    return {
        # While orders keep coming (several events a second), a second without a dispatch is the bridge stalled.
        "bridge_pauses": {
            "count": len(pauses),
            "total_s": round(sum(pauses), 1),
            "share_of_run": round(sum(pauses) / (t_end - t_start), 3) if t_end > t_start else None,
            "longest_s": round(max(pauses), 2) if pauses else 0,
        },
        "posted": len(log.posted),
        "accepted": len(accepted),
        "non_201": sum(1 for p in log.posted if p.status != 201),
        "retried_posts": sum(p.attempts - 1 for p in log.posted),
        "statuses": dict(statuses),
        "terminal": len(terminal_times),
        "terminal_rate": in_window / (t_end - measured_from) if t_end > measured_from else None,
        "terminal_rate_window": [measured_from, t_end],
        "stages_ms": {name: summary(stages[name], scale=1000) for name in order if name in stages},
        "task_received_to_done_ms": {name: summary(values, scale=1000) for name, values in sorted(task_times.items())},
        "series": _series(accepted, terminal_times, t_start),
    }


def _series(accepted, terminal_times: list[float], t_start: float) -> dict[str, list[int]]:
    """Orders accepted and orders reaching a terminal state per second of the run (for the chart)."""
    seconds = int(max([p.answered for p in accepted] + terminal_times + [t_start]) - t_start) + 1
    posted = [0] * seconds
    finished = [0] * seconds
    for p in accepted:
        posted[min(seconds - 1, max(0, int(p.answered - t_start)))] += 1
    for t in terminal_times:
        finished[min(seconds - 1, max(0, int(t - t_start)))] += 1
    return {"accepted_per_s": posted, "terminal_per_s": finished}


def dump_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=str))
