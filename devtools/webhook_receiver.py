"""A webhook receiver for developers: ``python -m devtools.webhook_receiver --secret whsec_...
[--port 9000]``, the secret being the one the endpoint's creation answered with (README.md,
"Webhooks").

Each delivery whose signature verifies (Standard Webhooks, as any receiver should check it) is
printed as one JSON line, ``{"webhook_id": ..., "type": ..., "timestamp": ..., "data": {...}}``,
and answered 204; one that does not verify (another secret, a changed body, a timestamp more than
5 minutes off) is answered 401 and described on stderr, so the service retries it.
"""

from __future__ import annotations

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TextIO

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

MAX_BODY_BYTES = 1024 * 1024


def receiver(*, secret: str, host: str, port: int, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> ThreadingHTTPServer:
    """The receiver's server on ``host``:``port`` (0: a free one), not yet serving."""
    webhook = Webhook(secret)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self._answer(413)
                return
            body = self.rfile.read(length)
            try:
                payload = webhook.verify(body, dict(self.headers))
            except (WebhookVerificationError, ValueError) as exc:
                print(f"refused ({exc}): webhook-id {self.headers.get('webhook-id')!r}", file=err, flush=True)
                self._answer(401)
                return
            print(json.dumps({"webhook_id": self.headers["webhook-id"], **payload}), file=out, flush=True)
            self._answer(204)

        def _answer(self, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass  # stdout carries only deliveries

    return ThreadingHTTPServer((host, port), Handler)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devtools.webhook_receiver", description=__doc__.split("\n\n")[0])
    parser.add_argument("--secret", required=True, help="the endpoint's signing secret, whsec_...")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    server = receiver(secret=args.secret, host=args.host, port=args.port)
    host, port = server.server_address[:2]
    print(f"receiving webhooks on http://{host}:{port}/ (Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
