"""Serving a process's Prometheus registry (relay, bridge, worker, reconciler)."""

from __future__ import annotations

import structlog
from prometheus_client import start_http_server

logger = structlog.get_logger(__name__)


def serve_process_metrics(*, port: int, process: str) -> None:
    """Expose this process's registry on ``port`` (0: not at all), on ``metrics.host``."""
    from django.conf import settings

    if port:
        host = settings.METRICS["host"]
        start_http_server(port, addr=host)
        logger.info("metrics_serving", host=host, port=port, process=process)
