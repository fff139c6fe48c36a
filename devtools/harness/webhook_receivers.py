"""Webhook receivers the tests start: real HTTP servers on free loopback ports."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver:
    """An HTTP receiver on a free port of ``host`` (loopback) answering the given status codes in
    turn (200 after them), each with ``body``."""

    def __init__(self, answers: list[int], *, body: bytes = b"", host: str = "127.0.0.1"):
        self.answers = list(answers)
        self.received: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                received = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers), received))
                self.send_response(receiver.answers.pop(0) if receiver.answers else 200)
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

    def close(self):
        self.server.shutdown()
        self.server.server_close()
