"""Orders posted over HTTP at a steady rate, as a shop would post them."""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any


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
