"""web's HTTP counters.

web's gunicorn workers pool their counters through prometheus_client's multiprocess directory
(set up in gunicorn.conf.py); relay, bridge, worker and reconciler each serve their own registry
on ``metrics.*_port`` (``common.metrics.serve_process_metrics``). web's ``/metrics`` is
``orders_project.health.metrics``.
"""

from prometheus_client import Counter, Histogram

HTTP_REQUESTS = Counter("http_requests_total", "HTTP requests answered", ["method", "view", "status"])
HTTP_DURATION = Histogram(
    "http_request_duration_seconds", "Time to answer an HTTP request", ["method", "view"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
