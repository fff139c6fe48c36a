"""Webhook receivers the tests start: real HTTP servers on free loopback ports, answering each
request as told, keeping what they received so that tests verify it as a receiver would."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from devtools.harness.waiting import wait_until

# An answer that never comes: the request is held open until the receiver is closed.
HOLD = "hold"


@dataclass(frozen=True)
class Reply:
    """A status code with headers (Retry-After, Location)."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """An HTTP receiver on a free port of ``host`` (loopback) giving ``answers`` in turn (a status
    code, a ``Reply`` or ``HOLD``), then ``then`` to every later request; each answer's body is ``body``."""

    def __init__(
        self, answers: list[int | Reply | str] = (), *, then: int | Reply | str = 200, body: bytes = b"ok", host: str = "127.0.0.1"
    ):
        self.answers = list(answers)
        self.then = then
        self.received: list[Received] = []
        self.held = 0
        self.closing = threading.Event()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                request_body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.received.append(Received(self.path, dict(self.headers), request_body))
                    answer = receiver.answers.pop(0) if receiver.answers else receiver.then
                    receiver.held += answer == HOLD
                if answer == HOLD:
                    receiver.closing.wait()
                    self.close_connection = True
                    return
                reply = answer if isinstance(answer, Reply) else Reply(answer)
                self.send_response(reply.status)
                for name, value in reply.headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        self.server = Server((host, 0), Handler)
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, *, timeout: float = 60) -> list[Received]:
        """The requests received, once there are at least ``count``."""
        wait_until(lambda: len(self.received) >= count, timeout=timeout, message=f"{len(self.received)} of {count} requests")
        return list(self.received)

    def close(self) -> None:
        """Stop serving; held requests end without an answer."""
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()
