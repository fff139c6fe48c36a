"""HTTP load on POST /orders with the standard library: one keep-alive connection per thread."""

from __future__ import annotations

import functools
import json
import queue
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from devtools.bench.env import seed_order
from devtools.bench.stats import summary


@functools.cache
def order_body() -> bytes:
    """The JSON body of every ``POST /orders``."""
    return json.dumps(seed_order()).encode()


class OrderClient:
    """One keep-alive connection that speaks just enough HTTP/1.1 for the benchmark's POSTs;
    reconnects after an error.

    The client shares the two cores with the system it measures. http.client parses every
    response's headers with the email package; this reads the status line, Content-Length and
    Connection only, and sends each request with one write.
    """

    def __init__(self, host: str, port: int, *, timeout: float = 30.0):
        self.address, self.timeout = (host, port), timeout
        self.host = f"{host}:{port}"
        self.sock: socket.socket | None = None
        self.buffer = b""

    def post(self, *, idempotency_key: str) -> tuple[int, bytes]:
        """``POST /orders`` with the seed order; (status, body), status 0 for a connection error
        or a response it cannot read."""
        return self.post_json("/orders", order_body(), idempotency_key=idempotency_key)

    def post_json(self, path: str, body: bytes, *, idempotency_key: str) -> tuple[int, bytes]:
        request = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nIdempotency-Key: {idempotency_key}\r\n\r\n"
        ).encode() + body
        try:
            if self.sock is None:
                self.sock = socket.create_connection(self.address, timeout=self.timeout)
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.sendall(request)
            status, body, close = self._read_response()
        except (OSError, ValueError):
            self.close()
            return 0, b""
        if close:
            self.close()
        return status, body

    def _receive(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed by the server")
        self.buffer += chunk

    def _read_response(self) -> tuple[int, bytes, bool]:
        while b"\r\n\r\n" not in self.buffer:
            self._receive()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status_line, *header_lines = head.split(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        length, close = None, False
        for line in header_lines:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection":
                close = value.strip().lower() == b"close"
        if length is None:
            raise ValueError("response without Content-Length")
        while len(self.buffer) < length:
            self._receive()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, body, close

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.buffer = b""


def closed_loop(*, host: str, port: int, concurrency: int, duration: float) -> dict:
    """``concurrency`` threads each posting back to back for ``duration`` seconds."""
    latencies: list[float] = []
    statuses: Counter = Counter()
    lock = threading.Lock()
    start_barrier = threading.Barrier(concurrency + 1)
    window: dict[str, float] = {}

    def worker() -> None:
        client = OrderClient(host, port)
        mine: list[float] = []
        codes: Counter = Counter()
        start_barrier.wait()
        deadline = window["end"]
        try:
            while True:
                started = time.perf_counter()
                if started >= deadline:
                    break
                status, _ = client.post(idempotency_key=f"bench-{uuid.uuid4().hex}")
                ended = time.perf_counter()
                codes[status] += 1
                if status == 201 and ended <= deadline:
                    mine.append(ended - started)
        finally:
            client.close()
            with lock:
                latencies.extend(mine)
                statuses.update(codes)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    window["start"] = time.perf_counter()
    window["end"] = window["start"] + duration
    start_barrier.wait()
    for thread in threads:
        thread.join(timeout=duration + 60)
    elapsed = time.perf_counter() - window["start"]
    ok = len(latencies)
    return {
        "concurrency": concurrency,
        "duration_s": duration,
        "requests": sum(statuses.values()),
        "status_201": statuses.get(201, 0),
        "non_201": {str(code): count for code, count in statuses.items() if code != 201},
        "throughput": ok / duration,
        "latency_ms": summary(latencies, scale=1000),
        "elapsed_s": elapsed,
    }


@dataclass
class Posted:
    key: str
    scheduled: float  # time.time() the order was due
    sent: float = 0.0  # time.time() the (first) POST started
    answered: float = 0.0
    status: int = 0
    order_id: str | None = None
    attempts: int = 0


@dataclass
class PostLog:
    posted: list[Posted] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, item: Posted) -> None:
        with self.lock:
            self.posted.append(item)

    def accepted(self) -> int:
        with self.lock:
            return sum(1 for p in self.posted if p.status == 201)


def _post_until_accepted(client: OrderClient, item: Posted, *, give_up_after: float = 30.0) -> None:
    """A shop's retry: the same Idempotency-Key until a 201 (connection errors, 5xx)."""
    item.sent = time.time()
    give_up_at = item.sent + give_up_after
    while True:
        item.attempts += 1
        status, data = client.post(idempotency_key=item.key)
        item.status = status
        if status == 201:
            item.answered = time.time()
            item.order_id = json.loads(data)["order_id"]
            return
        if status not in (0, 500, 502, 503, 504) or time.time() > give_up_at:
            item.answered = time.time()
            return
        time.sleep(0.1)


# What the sending thread does next with an accepted order, on its own connection (the mix's cancellation).
OnAccepted = Callable[[OrderClient, Posted], None]


def paced(*, host: str, port: int, rate: float, duration: float, on_accepted: OnAccepted, senders: int = 16) -> PostLog:
    """Open loop: an order due every 1/``rate`` s for ``duration`` s, sent by a pool of
    ``senders`` threads (so a slow answer does not delay the next order)."""
    log = PostLog()
    jobs: queue.Queue[Posted | None] = queue.Queue()

    def sender() -> None:
        client = OrderClient(host, port)
        try:
            while (item := jobs.get()) is not None:
                _post_until_accepted(client, item)
                log.add(item)
                if item.status == 201:
                    on_accepted(client, item)
        finally:
            client.close()

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(senders)]
    for thread in threads:
        thread.start()
    interval = 1.0 / rate
    start = time.time()
    index = 0
    while True:
        due = start + index * interval
        if due >= start + duration:
            break
        delay = due - time.time()
        if delay > 0:
            time.sleep(delay)
        jobs.put(Posted(key=f"bench-e2e-{uuid.uuid4().hex}", scheduled=due))
        index += 1
    for _ in threads:
        jobs.put(None)
    for thread in threads:
        thread.join(timeout=120)
    return log


def backlog_limited(
    *,
    host: str,
    port: int,
    duration: float,
    backlog: int,
    done: Callable[[], int],
    on_accepted: OnAccepted,
    posters: int = 4,
) -> PostLog:
    """Post as fast as the pipeline drains: ``posters`` threads send while fewer than
    ``backlog`` accepted orders are not yet done (``done()`` counts finished orders)."""
    log = PostLog()
    stop_at = time.time() + duration
    state = {"done": 0}
    state_lock = threading.Lock()
    in_flight = threading.Semaphore(backlog)

    def poster() -> None:
        client = OrderClient(host, port)
        try:
            while time.time() < stop_at:
                if not in_flight.acquire(timeout=0.5):
                    continue
                item = Posted(key=f"bench-sat-{uuid.uuid4().hex}", scheduled=time.time())
                _post_until_accepted(client, item)
                log.add(item)
                if item.status == 201:
                    on_accepted(client, item)
        finally:
            client.close()

    def controller() -> None:
        # Releases one permit per order that finished since the last look.
        state["done"] = done()
        while time.time() < stop_at + 1:
            finished = done()
            with state_lock:
                newly = finished - state["done"]
                state["done"] = finished
            for _ in range(max(0, newly)):
                in_flight.release()
            time.sleep(0.2)

    threads = [threading.Thread(target=poster, daemon=True) for _ in range(posters)]
    watcher = threading.Thread(target=controller, daemon=True)
    watcher.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=duration + 120)
    watcher.join(timeout=10)
    return log
