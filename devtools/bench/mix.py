"""The end-to-end mix of work, the same for the pipeline and the peer: besides the plain orders,
a customer cancels some right after creating them and refunds part of others once they are paid,
through the HTTP API; and when each order is finished.

An order is finished when it is terminal for what it was given (a cancelled one CANCELLED, a
refunded one's refund SUCCEEDED or FAILED, no refund still REQUESTED), each customer event of its
timeline has its notifications and, with a webhook endpoint, each order event its delivery sent.
The counts come from the timeline, so that the pipeline and the peer are judged alike whatever
path an order took (a cancellation that found the order paid is refunded first).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Any

from devtools.bench.httpload import OrderClient, Posted

PLAIN, CANCEL, REFUND = "plain", "cancel", "refund"
# Of every 10 accepted orders, the first is cancelled right after its creation and the sixth is
# refunded in part once PAID; the other 8 are left alone.
MIX_CYCLE = 10
CANCEL_AT, REFUND_AT = 0, 5
# Less than the seed order's 75.97: the order ends PARTIALLY_REFUNDED.
REFUND_AMOUNT = "10.00"
TERMINAL = {
    PLAIN: {"PAID", "PAYMENT_FAILED", "FAILED"},
    CANCEL: {"CANCELLED", "FAILED"},
    # Not paid (nothing to refund), or its refund settled (checked apart).
    REFUND: {"PAYMENT_FAILED", "FAILED"},
}
# A refunded order, once its refund settled: PAID again if the refund failed.
SETTLED_AFTER_REFUND = {"PARTIALLY_REFUNDED", "REFUNDED", "PAID"}
# An order whose cancellation or refund the API refused (an error, counted in the answers) ends as it is.
ANY_TERMINAL = {"PAID", "PAYMENT_FAILED", "FAILED", "CANCELLED", "PARTIALLY_REFUNDED", "REFUNDED"}
REFRESH_S = 0.2


def describe() -> str:
    return (f"of every {MIX_CYCLE} orders one cancelled right after its POST (POST /orders/<id>/cancel) and one refunded"
            f" {REFUND_AMOUNT} once PAID (POST /orders/<id>/refunds)")


def kind_of(index: int) -> str:
    position = index % MIX_CYCLE
    return CANCEL if position == CANCEL_AT else REFUND if position == REFUND_AT else PLAIN


class Tracker:
    """The orders one measurement posted: sends their follow-ups and counts them finished.

    ``accepted`` is called by the posting thread with its connection (the cancellation goes out
    on it at once); a thread of its own looks at the unfinished orders every ``REFRESH_S`` s,
    posts the refunds of those paid meanwhile and counts the finished ones (``finished``, which
    only grows). ``webhooks``: an order is finished once its webhook deliveries succeeded too.
    """

    def __init__(self, *, host: str, port: int, webhooks: bool):
        from notifications.services import enabled_channels

        self.host, self.port, self.webhooks = host, port, webhooks
        self.channels = len(enabled_channels())
        self.lock = threading.Lock()
        self.accepted_count = 0
        self.kinds: dict[str, str] = {}  # order id -> kind, every accepted order
        self.unfinished: set[str] = set()
        self.awaiting_refund: set[str] = set()
        self.refused: set[str] = set()
        self.finished = 0
        self.answers: dict[str, Counter] = {CANCEL: Counter(), REFUND: Counter()}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Tracker:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.thread.join(timeout=30)

    # --- the posting threads ----------------------------------------------------------------

    def accepted(self, client: OrderClient, item: Posted) -> None:
        with self.lock:
            kind = kind_of(self.accepted_count)
            self.accepted_count += 1
            self.kinds[item.order_id] = kind
            self.unfinished.add(item.order_id)
            if kind == REFUND:
                self.awaiting_refund.add(item.order_id)
        if kind == CANCEL:
            code, _ = client.post_json(f"/orders/{item.order_id}/cancel", b"{}", idempotency_key=f"{item.key}-cancel")
            self._answered(CANCEL, item.order_id, code, accepted=(200, 202))

    # --- the tracking thread ------------------------------------------------------------------

    def _run(self) -> None:
        from django.db import connection

        client = OrderClient(self.host, self.port)
        try:
            while not self.stopping.is_set():
                self._refresh(client)
                self.stopping.wait(REFRESH_S)
        finally:
            client.close()
            connection.close()

    def _refresh(self, client: OrderClient) -> None:
        with self.lock:
            ids = list(self.unfinished)
        if not ids:
            return
        finished, paid = [], []
        for order_id, status, *counts in self._states(ids):
            kind = self.kinds[order_id]
            if kind == REFUND and order_id in self.awaiting_refund and status == "PAID":
                paid.append(order_id)
            if self._is_finished(order_id, kind, status, *counts):
                finished.append(order_id)
        for order_id in paid:
            body = json.dumps({"amount": REFUND_AMOUNT, "reason": "benchmark"}).encode()
            code, _ = client.post_json(f"/orders/{order_id}/refunds", body, idempotency_key=f"bench-refund-{order_id}")
            with self.lock:
                self.awaiting_refund.discard(order_id)
            self._answered(REFUND, order_id, code, accepted=(202,))
        with self.lock:
            self.unfinished.difference_update(finished)
            self.finished += len(finished)

    def _answered(self, kind: str, order_id: str, code: int, *, accepted: tuple[int, ...]) -> None:
        with self.lock:
            self.answers[kind][code] += 1
            if code not in accepted:
                self.refused.add(order_id)

    def _is_finished(self, order_id: str, kind: str, status: str, requested: int, settled: int, notified: int,
                     to_notify: int, delivered: int, to_deliver: int) -> bool:
        if requested or notified < self.channels * to_notify or (self.webhooks and delivered < to_deliver):
            return False
        if order_id in self.refused:
            return status in ANY_TERMINAL
        if kind == REFUND and order_id not in self.awaiting_refund:
            return status in TERMINAL[REFUND] or (status in SETTLED_AFTER_REFUND and settled > 0)
        return status in TERMINAL[kind]

    @staticmethod
    def _states(ids: list[str]) -> list[tuple[Any, ...]]:
        """Per order: status, refunds REQUESTED, refunds settled, notifications, customer events,
        webhook deliveries succeeded, order events a webhook is for (from its timeline)."""
        from django.db import connection

        from events.contract import CUSTOMER_EVENTS
        from webhooks.services import WEBHOOK_TYPES

        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT o.id::text, o.status,"
                " (SELECT count(*) FROM payments_refund r WHERE r.order_id = o.id AND r.status = 'REQUESTED'),"
                " (SELECT count(*) FROM payments_refund r WHERE r.order_id = o.id AND r.status <> 'REQUESTED'),"
                " (SELECT count(*) FROM notifications_notification n WHERE n.order_id = o.id),"
                " (SELECT count(*) FROM orders_ordertimelineentry t WHERE t.order_id = o.id AND t.event_type = ANY(%s)),"
                " (SELECT count(*) FROM webhooks_webhookdelivery d WHERE d.order_id = o.id AND d.status = 'SUCCEEDED'),"
                " (SELECT count(*) FROM orders_ordertimelineentry t WHERE t.order_id = o.id AND t.event_type = ANY(%s))"
                " FROM orders_order o WHERE o.id = ANY(%s::uuid[])",
                [list(CUSTOMER_EVENTS), list(WEBHOOK_TYPES), ids],
            )
            return cursor.fetchall()

    # --- results ------------------------------------------------------------------------------

    def wait_finished(self, *, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if not self.unfinished:
                    return True
            time.sleep(REFRESH_S)
        return False

    def webhook_calls_by_kind(self) -> dict[str, float]:
        """Webhook deliveries succeeded per order of each kind: what the pipeline and the peer must agree on."""
        from django.db import connection

        with self.lock:
            kinds = dict(self.kinds)
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT order_id::text, count(*) FROM webhooks_webhookdelivery WHERE status = 'SUCCEEDED'"
                " AND order_id = ANY(%s::uuid[]) GROUP BY order_id",
                [list(kinds)],
            )
            calls = dict(cursor.fetchall())
        orders = Counter(kinds.values())
        per_kind = Counter()
        for order_id, kind in kinds.items():
            per_kind[kind] += calls.get(order_id, 0)
        return {kind: round(per_kind[kind] / count, 2) for kind, count in sorted(orders.items())}

    def summary(self) -> dict[str, Any]:
        with self.lock:
            return {
                "accepted": self.accepted_count,
                "by_kind": dict(Counter(self.kinds.values())),
                "finished": self.finished,
                "unfinished": len(self.unfinished),
                "cancel_answers": {str(code): n for code, n in self.answers[CANCEL].items()},
                "refund_answers": {str(code): n for code, n in self.answers[REFUND].items()},
            }
