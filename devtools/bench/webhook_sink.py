"""The end-to-end phase's webhook receiver: ``python -m devtools.bench.webhook_sink`` answers 204 to
every POST without verifying it, so that what the benchmark measures is the sending side's cost,
not a receiver's. It listens on a free loopback port and prints that port as its first line."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Sink(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass  # thousands of requests a minute: a line each would cost more than the answer


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
