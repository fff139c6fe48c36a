"""``bash bin/benchmark``: throughput and latency of the real system on this machine.

Baselines (ORM-only order creation, raw confluent-kafka, a Celery no-op task) measured in the
same run as the API (POST /orders) and the whole pipeline end to end, so every figure can be
read as a ratio to what the parts underneath can do. See docs/benchmarks.md.

This package must stay importable without Django (``celery -A devtools.bench.noop worker``).
"""
