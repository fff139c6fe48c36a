"""Running the real system from tests, the fault suite and the benchmark: the same commands
run-local and the containers run, as separate processes against a real database, a real
Kafka-protocol broker and a real Celery broker."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from django.conf import settings
from django.db import connection
from prometheus_client.parser import text_string_to_metric_families

from devtools.broker import free_port
from devtools.processes import process_commands
from events.contract import TOPIC_DLQ, TOPIC_NOTIFICATIONS, TOPIC_ORDERS, TOPIC_PARTITIONS, TOPIC_PAYMENTS
from messaging.routes import topics_to_read
from orders_project.config import BASE_DIR

T = TypeVar("T")

# The request body of the seed's curl example (README walkthrough): 2 items, total 75.97.
SEED_ORDER = {
    "user_id": "customer_123",
    "email": "customer@example.com",
    "items": [
        {"product_id": "prod_001", "product_name": "Premium Widget", "quantity": 2, "price": 29.99},
        {"product_id": "prod_002", "product_name": "Standard Widget", "quantity": 1, "price": 15.99},
    ],
}


# The partitions of the topics a bridge with the default configuration reads.
BRIDGE_PARTITIONS = sum(
    TOPIC_PARTITIONS[topic]
    for topic in topics_to_read(event_topics=[TOPIC_ORDERS, TOPIC_PAYMENTS, TOPIC_NOTIFICATIONS], dlq_topic=TOPIC_DLQ)
)

def wait_until(check: Callable[[], T], *, timeout: float, interval: float = 0.1, message: str = "") -> T:
    """Poll ``check`` until it returns something truthy; raise ``TimeoutError`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(message or f"condition not met in {timeout}s")
        time.sleep(interval)


def database_url() -> str:
    """The URL of the database this process uses (the test database under pytest)."""
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    user = db["USER"] or "postgres"
    password = f":{db['PASSWORD']}" if db["PASSWORD"] else ""
    return f"postgres://{user}{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def celery_broker_url(*, work_dir: Path) -> str:
    """The configured Celery broker, or a fresh SQL broker file when that is the (local) default."""
    url = settings.CELERY_BROKER_URL
    if url.startswith("sqla+"):
        return f"sqla+sqlite:///{work_dir / 'celery-broker.sqlite3'}"
    return url


class ProcessGroup:
    """Named child processes sharing one environment; each logs to ``<log_dir>/<name>.log``."""

    def __init__(self, *, env: dict[str, str], log_dir: Path):
        self.env = env
        self.log_dir = log_dir
        self.processes: dict[str, subprocess.Popen] = {}
        self.metrics_ports: dict[str, int] = {}

    @classmethod
    def for_tests(cls, *, kafka_brokers: str, work_dir: Path, **overrides: str) -> ProcessGroup:
        """An environment pointing at the current database and ``kafka_brokers``, isolated by a
        unique consumer group and Celery queue so earlier runs' messages never interfere."""
        run_id = uuid.uuid4().hex[:8]
        env = {
            **os.environ,
            "ENVIRONMENT": "development",
            # web's /metrics and /health/ready answer only this, as in production (internal_get).
            "HTTP_INTERNAL_TOKEN": f"test-internal-{uuid.uuid4().hex}",
            "PYTHONUNBUFFERED": "1",
            "DATABASE_URL": database_url(),
            "KAFKA_BROKERS": kafka_brokers,
            "KAFKA_GROUP_ID": f"test-bridge-{run_id}",
            "CELERY_BROKER_URL": celery_broker_url(work_dir=work_dir),
            "CELERY_QUEUE": f"test-pipeline-{run_id}",
            "CELERY_CONCURRENCY": "2",
            "OUTBOX_MAX_BACKOFF": "1.0",
            **overrides,
        }
        return cls(env=env, log_dir=work_dir)

    @classmethod
    def with_web_port(cls, *, kafka_brokers: str, work_dir: Path, **overrides: str) -> tuple[ProcessGroup, int]:
        """``for_tests`` with web on a free port (returned), one gunicorn worker unless overridden."""
        port = free_port()
        env = {"HTTP_PORT": str(port), "HTTP_WORKERS": "1", **overrides}
        return cls.for_tests(kafka_brokers=kafka_brokers, work_dir=work_dir, **env), port

    def start(self, name: str, *, command: str | None = None, **env_overrides: str) -> subprocess.Popen:
        """Start ``command`` (a key of ``process_commands``, default ``name``) as ``name``."""
        command_line = process_commands(worker_name=name)[command or name]
        log = (self.log_dir / f"{name}.log").open("ab")
        # Each process its own metrics port (a process reads only the key of its kind).
        port = self.metrics_ports[name] = free_port()
        metrics_env = {
            "METRICS_RELAY_PORT": str(port),
            "METRICS_BRIDGE_PORT": str(port),
            "METRICS_WORKER_PORT": str(port),
            "METRICS_RECONCILER_PORT": str(port),
            "METRICS_MULTIPROC_DIR": str(self.log_dir / f"prometheus-{name}"),
        }
        self.processes[name] = subprocess.Popen(
            command_line,
            cwd=BASE_DIR,
            env={**self.env, **metrics_env, **env_overrides},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self.processes[name]

    def start_system(self, *, port: int) -> None:
        """web (on ``port``), relay, bridge, a worker and the reconciler, as run-local starts them;
        returns once web answers and the bridge has partitions (a group join takes 10-20 s on the
        bundled broker)."""
        for name in ("web", "relay", "bridge", "worker", "reconciler"):
            self.start(name)
        self.base_url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(f"{self.base_url}/health"), timeout=30, message="web did not come up")
        wait_until(
            lambda: any(event["event"] == "partitions_assigned" for event in self.log_events("bridge")),
            timeout=60,
            message="bridge got no partitions",
        )

    def signal(self, name: str, signum: int) -> None:
        os.killpg(self.processes[name].pid, signum)

    def stop(self, name: str, *, timeout: float = 30.0) -> int:
        """SIGTERM and wait: the clean stop every process must support."""
        process = self.processes.pop(name)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        return process.returncode

    def kill(self, name: str) -> None:
        """SIGKILL the process and everything it started (a crash, no clean-up)."""
        process = self.processes.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def stop_all(self) -> None:
        for name in list(self.processes):
            self.stop(name)

    def metrics(self, name: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """The process's Prometheus samples now: {(name, sorted labels): value}; web's from its
        /metrics (which reads the database's gauges at most every couple of seconds)."""
        if name == "web":
            return parse_metrics(self.internal_get("/metrics").decode())
        url = f"http://127.0.0.1:{self.metrics_ports[name]}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        return parse_metrics(text)

    @property
    def internal_token(self) -> str:
        return self.env["HTTP_INTERNAL_TOKEN"]

    def internal_get(self, path: str) -> bytes:
        """The body of web's ``path`` (/metrics, /health/ready) asked with the internal token;
        ``urllib.error.HTTPError`` for any status but 2xx."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.env['HTTP_PORT']}{path}", headers={"Authorization": f"Bearer {self.internal_token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read()

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def log_events(self, name: str) -> list[dict[str, Any]]:
        """The JSON log lines of a process, parsed (other output skipped)."""
        events = []
        for line in self.log(name).splitlines():
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return events


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except OSError:
        return False


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def read_topics(*, bootstrap_servers: str, topics: Iterable[str], timeout: float = 30.0) -> list[Any]:
    """Every message now in ``topics``, read from the beginning without joining a group."""
    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": f"reader-{uuid.uuid4()}", "enable.auto.commit": False})
    try:
        metadata = consumer.list_topics(timeout=timeout)
        partitions = [
            TopicPartition(topic, partition, OFFSET_BEGINNING)
            for topic in topics
            for partition in metadata.topics[topic].partitions
        ]
        ends = {
            (tp.topic, tp.partition): consumer.get_watermark_offsets(tp, timeout=timeout)[1] for tp in partitions
        }
        pending = {key for key, end in ends.items() if end > 0}
        consumer.assign(partitions)
        messages = []
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=500, timeout=0.5):
                if message.error():
                    continue
                key = (message.topic(), message.partition())
                messages.append(message)
                if message.offset() + 1 >= ends[key]:
                    pending.discard(key)
        if pending:
            raise TimeoutError(f"could not read {sorted(pending)} to the end in {timeout}s")
        return messages
    finally:
        consumer.close()


class ObjectStore:
    """A local S3 server (moto) for the Kafka-protocol broker's storage, so the broker's topics,
    messages and group offsets outlive a broker restart, as Apache Kafka's do."""

    BUCKET = "tansu"

    def __init__(self, *, log_path: Path):
        self.port = free_port()
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ObjectStore:
        server = Path(sys.executable).parent / "moto_server"
        self.process = subprocess.Popen(
            [str(server), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
        )
        # moto accepts unsigned requests: a plain PUT creates the bucket.
        wait_until(self._create_bucket, timeout=30, interval=0.2, message="S3 server did not start")
        return self

    def _create_bucket(self) -> bool:
        try:
            urllib.request.urlopen(urllib.request.Request(f"{self.url}/{self.BUCKET}", method="PUT"), timeout=2)
            return True
        except OSError:
            return False

    def broker_env(self) -> dict[str, str]:
        return {
            **os.environ,
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT": self.url,
            "AWS_ALLOW_HTTP": "true",
        }

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


class OrderLoad:
    """Posts orders over HTTP at a steady rate from a background thread, the way a shop would:
    each order has an Idempotency-Key and is re-sent with it until it gets a 201."""

    def __init__(self, *, base_url: str, rate: float, body: Callable[[int], dict[str, Any]]):
        self.base_url = base_url
        self.interval = 1.0 / rate
        self.body = body
        self.accepted: list[str] = []
        self.failed_attempts = 0
        self.unaccepted: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> OrderLoad:
        self._thread.start()
        return self

    def stop(self, *, retry_for: float = 60.0) -> None:
        """Stop taking new orders; the one being sent is retried for up to ``retry_for`` seconds."""
        self._retry_for = retry_for
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        index = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            self._post(index)
            index += 1
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _post(self, index: int) -> None:
        key = f"load-{uuid.uuid4()}"
        data = json.dumps(self.body(index)).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": key}
        give_up_at = None
        while True:
            try:
                request = urllib.request.Request(f"{self.base_url}/orders", data=data, headers=headers)
                with urllib.request.urlopen(request, timeout=10) as response:
                    self.accepted.append(json.load(response)["order_id"])
                    return
            except (OSError, http.client.HTTPException):  # refused, reset, cut short, 5xx: send it again
                self.failed_attempts += 1
            if self._stop.is_set():
                give_up_at = give_up_at or time.monotonic() + self._retry_for
                if time.monotonic() > give_up_at:
                    self.unaccepted.append(key)
                    return
            time.sleep(0.2)


FAULT_COLUMNS = [
    ("fault", "fault"),
    ("posted", "orders posted"),
    ("completed", "orders completed"),
    ("duplicates", "duplicates"),
    ("lost", "lost"),
    ("recover_s", "time to recover (s)"),
    ("redriven", "orders re-driven by the reconciler"),
    ("redeliveries", "redeliveries absorbed"),
    ("replayed_charges", "charges replayed under their key"),
    ("retried_posts", "POSTs retried by clients"),
]


def fault_table(rows: list[dict[str, Any]]) -> str:
    """The fault suite's results as a Markdown table."""
    lines = ["| " + " | ".join(title for _key, title in FAULT_COLUMNS) + " |"]
    lines.append("|" + "|".join(" --- " for _ in FAULT_COLUMNS) + "|")
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(key, "")) for key, _title in FAULT_COLUMNS) + " |")
    return "\n".join(lines)


def create_test_order(
    *, user_id: str, email: str, quantity: int = 1, price: str = "1.00", correlation_id: str, product_name: str = "W"
):
    """An order of one line, written through the service as the API writes it."""
    from orders.services import create_order

    item = {"product_id": "p", "product_name": product_name, "quantity": quantity, "price": Decimal(price)}
    return create_order(user_id=user_id, email=email, items=[item], correlation_id=correlation_id).order


def create_test_orders(count: int, *, prefix: str, price: str = "1.00") -> list[str]:
    """``count`` such orders; their ids."""
    return [
        str(
            create_test_order(
                user_id=f"{prefix}_{index}", email=f"{prefix}@example.com", price=price, correlation_id=f"{prefix}-{index}"
            ).id
        )
        for index in range(count)
    ]


# The audit of the fault suites (test_faults.py on PostgreSQL and Redis, test_faults_local.py on
# the local default): what happened to every order that got a 201.

TERMINAL_STATUSES = ("PAID", "PAYMENT_FAILED")
# Timeline entries that repeat without the order's status repeating: one per notification sent,
# one per re-drive (the reconciler's or an operator's).
REPEATABLE_TIMELINE_ENTRIES = ("NOTIFICATION_SENT", "REDRIVEN")
# The local email backend logs every message it sends (an email_sent line), with a Message-ID
# made from the id of the event the email tells about.
_EMAIL_MESSAGE_ID = re.compile(r'"message_id": "<([0-9a-f-]{36}\.email)@')


def fault_order_body(index: int) -> dict[str, Any]:
    """The orders the fault suites post: a few customers, two items, varying quantities."""
    return {
        "user_id": f"fault_user_{index % 7}",
        "email": f"fault{index % 7}@example.com",
        "items": [
            {"product_id": "prod_001", "product_name": "Premium Widget", "quantity": 1 + index % 3, "price": "29.99"},
            {"product_id": "prod_002", "product_name": "Standard Widget", "quantity": 1, "price": "15.99"},
        ],
    }


def email_sends(logs: Iterable[Path]) -> Counter:
    """Emails the workers really sent, by Message-ID, read from the logs their output went to."""
    sends = Counter()
    for log in logs:
        sends.update(_EMAIL_MESSAGE_ID.findall(log.read_text(errors="replace")))
    return sends


def audit(order_ids: list[str], *, logs: Iterable[Path], gateway) -> dict[str, Any]:
    """What happened to the orders that got a 201: missing, unfinished (not PAID or
    PAYMENT_FAILED), short of their 3 notifications, with an outcome other than ``gateway``
    (a SimulatedGateway with the processes' seed) gives for the first attempt, and the duplicates:
    orders charged or approved twice, statuses repeated in a timeline, emails sent twice for one
    event (``logs``: where the workers' output went)."""
    from django.db.models import Count

    from notifications.models import Notification
    from orders.models import Order
    from payments.models import Payment, SimulatedCharge

    orders = {str(o.id): o for o in Order.objects.filter(pk__in=order_ids)}
    missing = [order_id for order_id in order_ids if order_id not in orders]
    unfinished = [o for o in orders.values() if o.status not in TERMINAL_STATUSES]
    wrong_outcome = [
        o
        for o in orders.values()
        if o.status in TERMINAL_STATUSES
        and o.status != ("PAID" if gateway.would_approve(idempotency_key=f"{o.id}:1") else "PAYMENT_FAILED")
    ]
    notified = dict(
        Notification.objects.filter(order_id__in=order_ids, status="SENT")
        .values_list("order_id")
        .annotate(n=Count("id"))
    )
    unnotified = [o for o in orders.values() if notified.get(o.id, 0) < 3]
    charges = Counter()
    for key in SimulatedCharge.objects.filter(approved=True).values_list("idempotency_key", flat=True):
        charges[key.split(":")[0]] += 1
    double_charged = [order_id for order_id in order_ids if charges[order_id] > 1]
    double_approved = (
        Payment.objects.filter(order_id__in=order_ids, status="APPROVED")
        .values("order_id")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
        .count()
    )
    repeated_steps = 0
    for order in orders.values():
        steps = list(order.timeline.exclude(event_type__in=REPEATABLE_TIMELINE_ENTRIES).values_list("status", flat=True))
        repeated_steps += len(steps) - len(set(steps))
    sent = email_sends(logs)
    order_events = {
        str(event_id)
        for event_id in Notification.objects.filter(order_id__in=order_ids).values_list("source_event_id", flat=True)
    }
    resent = sum(count - 1 for message, count in sent.items() if count > 1 and message.split(".")[0] in order_events)
    return {
        "missing": missing,
        "unfinished": unfinished,
        "unnotified": unnotified,
        "wrong_outcome": wrong_outcome,
        "lost": len(missing) + len({o.id for o in unfinished} | {o.id for o in unnotified}),
        "duplicates": len(double_charged) + double_approved + repeated_steps + resent,
        "double_charged": len(double_charged) + double_approved,
        "emails_resent": resent,
        "completed": sum(1 for o in orders.values() if o.status in TERMINAL_STATUSES),
    }


def audit_when_complete(order_ids: list[str], *, logs: Iterable[Path], gateway, timeout: float) -> dict[str, Any]:
    """The audit once every order is complete (terminal, notified), or after ``timeout`` seconds."""
    logs = list(logs)

    def complete():
        result = audit(order_ids, logs=logs, gateway=gateway)
        return result if not (result["missing"] or result["unfinished"] or result["unnotified"]) else None

    try:
        return wait_until(complete, timeout=max(1.0, timeout), interval=1.0)
    except TimeoutError:
        return audit(order_ids, logs=logs, gateway=gateway)


def fault_row(*, name: str, load: OrderLoad, result: dict[str, Any], recover_s: float, redelivered_before: int) -> dict[str, Any]:
    """The fault table's row (``FAULT_COLUMNS``) of an audited fault."""
    return {
        "fault": name,
        "posted": len(load.accepted) + len(load.unaccepted),
        "completed": result["completed"],
        "duplicates": result["duplicates"],
        "lost": result["lost"] + len(load.unaccepted),
        "recover_s": recover_s,
        "redriven": len(redriven_orders(load.accepted)),
        "redeliveries": inbox_redeliveries() - redelivered_before,
        "replayed_charges": replayed_charges(load.accepted),
        "retried_posts": load.failed_attempts,
    }


def inbox_redeliveries() -> int:
    """Events handlers received again after applying them (each changed nothing)."""
    from django.db.models import Sum

    from events.models import InboxEntry

    return InboxEntry.objects.aggregate(n=Sum("redeliveries"))["n"] or 0


def redriven_orders(order_ids: list[str]) -> set[str]:
    """Those of the orders the reconciler re-drove (recovery.models.Redrive)."""
    from recovery.models import Redrive

    return {
        str(order_id)
        for order_id in Redrive.objects.filter(order_id__in=order_ids, requested_by="reconciler").values_list(
            "order_id", flat=True
        )
    }


def replayed_charges(order_ids: list[str]) -> int:
    """Gateway calls repeated for one payment attempt (a worker died or timed out mid-charge)."""
    from payments.models import SimulatedCharge

    return SimulatedCharge.objects.filter(
        calls__gt=1, idempotency_key__in=[f"{order_id}:1" for order_id in order_ids]
    ).count()


# run-local as the tests run it.


def descendants(pid: int) -> set[int]:
    """Every process ``pid`` started, and theirs, now."""
    children = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if parent == pid:
                children |= {int(entry)} | descendants(int(entry))
    return children


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as status:
            return "zombie" not in status.read()
    except OSError:
        return False


class LocalStack:
    """``bash bin/run-local`` (``python -m devtools.local_stack``) in its own session, on
    free ports only (web, the Kafka broker, every metrics endpoint), so a real run-local on the
    same machine changes nothing. Its output (its own JSON lines and every process's) goes to
    ``run-local-<n>.log`` in ``work_dir``, one file per start."""

    def __init__(self, *, work_dir: Path, **overrides: str):
        self.work_dir = work_dir
        self.port = free_port()
        self.env = {
            **os.environ,
            "HTTP_PORT": str(self.port),
            "KAFKA_BROKERS": f"127.0.0.1:{free_port()}",
            "METRICS_RELAY_PORT": str(free_port()),
            "METRICS_BRIDGE_PORT": str(free_port()),
            "METRICS_WORKER_PORT": str(free_port()),
            "METRICS_RECONCILER_PORT": str(free_port()),
            # gunicorn clears this directory when it starts: never another web process's.
            "METRICS_MULTIPROC_DIR": str(work_dir / "prometheus-web"),
            # In a directory run-local makes, as it makes var/ for its defaults.
            "DATABASE_URL": f"sqlite:///{work_dir / 'var' / 'db.sqlite3'}",
            "CELERY_BROKER_URL": f"sqla+sqlite:///{work_dir / 'var' / 'celery-broker.sqlite3'}",
            **overrides,
        }
        if "CELERY_QUEUE" not in overrides:
            self.env.pop("CELERY_QUEUE", None)  # run-local's default queue
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.logs: list[Path] = []
        self.process: subprocess.Popen | None = None

    def start(self) -> LocalStack:
        self.logs.append(self.work_dir / f"run-local-{len(self.logs) + 1}.log")
        with self.logs[-1].open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "devtools.local_stack", "--broker-log", str(self.work_dir / "kafka-broker.log")],
                cwd=BASE_DIR,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def wait_up(self, *, timeout: float = 120.0) -> None:
        """Until web answers and the bridge has its partitions (10-20 s on the bundled broker)."""

        def up() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"run-local exited with code {self.process.returncode}: {self.logs[-1]}")
            return _answers(f"{self.base_url}/health") and bool(self.events("partitions_assigned"))

        wait_until(up, timeout=timeout, interval=0.2, message=f"run-local did not come up: {self.logs[-1]}")

    def output(self) -> str:
        return self.logs[-1].read_text(errors="replace")

    def events(self, event: str | None = None, *, logger: str | None = None) -> list[dict[str, Any]]:
        """The JSON lines of the current run (optionally of one event, one logger), parsed."""
        events = []
        for line in self.output().splitlines():
            if line.startswith("{"):
                try:
                    parsed = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if (event is None or parsed.get("event") == event) and (logger is None or parsed.get("logger") == logger):
                    events.append(parsed)
        return events

    def pid(self, name: str) -> int:
        """The pid of run-local's process ``name`` (web, relay, ...) as last started."""
        return [e["pid"] for e in self.events("process_started", logger="run-local") if e["process"] == name][-1]

    def started_pids(self) -> set[int]:
        """The pids of every process and broker the current run of run-local started."""
        return {
            e["pid"] for e in self.events(logger="run-local") if e["event"] in ("process_started", "kafka_broker_started")
        }

    def power_cut(self) -> None:
        """SIGKILL run-local, the broker and every process with what they started, as a power cut
        would: nothing is stopped cleanly, nothing is restarted. Each process is a process group
        of its own, the broker is in run-local's."""
        for group in [self.process.pid, *{e["pid"] for e in self.events("process_started", logger="run-local")}]:
            try:
                os.killpg(group, signal.SIGKILL)  # run-local's first: it restarts nothing after
            except ProcessLookupError:
                pass
        self.process.wait()
        wait_until(
            lambda: not [pid for pid in self.started_pids() if alive(pid)], timeout=30, message="a process survived SIGKILL"
        )

    def ctrl_c(self, *, timeout: float = 90.0) -> int:
        """Ctrl-C in the terminal (SIGINT to run-local's process group); its exit code."""
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.power_cut()
            raise
