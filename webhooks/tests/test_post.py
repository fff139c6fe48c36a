"""webhooks.services.post against real receivers on loopback: the Host header it sends is the
receiver's as HTTP writes it (an IPv6 literal in brackets, the port unless it is the scheme's)."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from webhooks.addresses import check_url
from webhooks.services import post


class HostRecorder(ThreadingHTTPServer):
    """Answers 204 to every POST, keeping the Host header of each."""

    def __init__(self, family: socket.AddressFamily, address: str):
        self.address_family = family
        self.hosts: list[str] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                recorder.hosts.append(self.headers["Host"])
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        super().__init__((address, 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


@pytest.mark.parametrize(
    "family, address, url_host", [(socket.AF_INET, "127.0.0.1", "127.0.0.1"), (socket.AF_INET6, "::1", "[::1]")]
)
def test_the_host_header_names_the_receiver_as_its_url_does(family, address, url_host):
    receiver = HostRecorder(family, address)
    try:
        port = receiver.server_address[1]
        target = check_url(f"http://{url_host}:{port}/hooks", allow_http=True, allow_loopback=True)

        answer = post(target=target, headers={}, body="{}", timeout=5)

        assert answer.status_code == 204
        assert receiver.hosts == [f"{url_host}:{port}"]
    finally:
        receiver.shutdown()
        receiver.server_close()
