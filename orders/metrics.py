"""Orders by status, read from the database when web is scraped (whichever process changed them)."""

from django.db.models import Count
from prometheus_client.core import GaugeMetricFamily

from orders.models import Order, OrderStatus


class OrdersByStatusCollector:
    def collect(self):
        orders = GaugeMetricFamily("orders", "Orders by status", labels=["status"])
        counts = dict(Order.objects.values_list("status").annotate(n=Count("id")).order_by())
        for status in OrderStatus.values:
            orders.add_metric([status], counts.get(status, 0))
        yield orders
