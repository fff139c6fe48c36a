"""Orders by status, read from the database when web is scraped (whichever process changed them),
and the time from an order's POST to its terminal status, observed by the process that moved it there."""

from django.db import transaction
from django.db.models import Count
from django.utils import timezone
from prometheus_client import Histogram
from prometheus_client.core import GaugeMetricFamily

from orders.models import Order, OrderStatus


class OrdersByStatusCollector:
    def collect(self):
        orders = GaugeMetricFamily("orders", "Orders by status", labels=["status"])
        counts = dict(Order.objects.values_list("status").annotate(n=Count("id")).order_by())
        for status in OrderStatus.values:
            orders.add_metric([status], counts.get(status, 0))
        yield orders


ORDER_COMPLETION = Histogram(
    "orders_completion_seconds",
    "Time from an order's creation (its POST) to a terminal status, by that status",
    ["status"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)
# Every outcome from the start, at 0: rate() sees a series before the first order reaches it.
for _status in (OrderStatus.PAID, OrderStatus.PAYMENT_FAILED, OrderStatus.FAILED):
    ORDER_COMPLETION.labels(_status)


def observe_completion(order: Order) -> None:
    """Count ``order`` reaching its (terminal) status once the caller's transaction commits: a
    change that is rolled back counts nothing."""
    status, created_at = order.status, order.created_at
    transaction.on_commit(lambda: ORDER_COMPLETION.labels(status).observe((timezone.now() - created_at).total_seconds()))
