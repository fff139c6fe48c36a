"""gunicorn settings for the web process (local run and containers alike), from config.yaml."""

import gc
import os
import shutil

from gunicorn.glogging import Logger

from orders_project.config import BASE_DIR, load_config
from orders_project.logging import configure_structlog, logging_config

_config = load_config()

# Each worker process counts its own requests; prometheus_client pools them through files in
# this directory (its own variable, read when the workers import it), and /metrics sums them.
_metrics_dir = BASE_DIR / _config["metrics"]["multiproc_dir"]
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_metrics_dir)


def on_starting(server):
    # Counts from an earlier run of this host's web process would be added to this one's.
    shutil.rmtree(_metrics_dir, ignore_errors=True)
    _metrics_dir.mkdir(parents=True)


def post_worker_init(worker):
    # Everything loaded so far (Django, the apps, DRF) lives as long as the worker: frozen, the
    # garbage collector stops re-scanning it on every collection the requests trigger.
    gc.collect()
    gc.freeze()


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)

bind = f"{_config['http']['host']}:{_config['http']['port']}"
workers = _config["http"]["workers"]
threads = _config["http"]["threads"]
worker_class = "gthread"
# SIGTERM: stop accepting, finish in-flight requests for up to this long, then exit.
graceful_timeout = 20
timeout = 30
keepalive = 5


class AccessLogFreeLogger(Logger):
    """CorrelationIdMiddleware writes the access log, with the correlation id. gunicorn would
    still format a line of its own per request, unseen, because logconfig_dict is set."""

    def access(self, *args, **kwargs) -> None:
        pass


logger_class = AccessLogFreeLogger
configure_structlog()
logconfig_dict = logging_config(level=_config["django"]["log_level"], environment=_config["environment"])
# gunicorn's own lines (start, worker boot, shutdown) as JSON too, not through its plain-text handler.
logconfig_dict["loggers"]["gunicorn.error"] = {"handlers": ["console"], "level": "INFO", "propagate": False}
