"""gunicorn settings for the web process (local run and containers alike), from config.yaml."""

from orders_project.config import load_config
from orders_project.logging import configure_structlog, logging_config

_config = load_config()

bind = f"{_config['http']['host']}:{_config['http']['port']}"
workers = _config["http"]["workers"]
threads = _config["http"]["threads"]
worker_class = "gthread"
# SIGTERM: stop accepting, finish in-flight requests for up to this long, then exit.
graceful_timeout = 20
timeout = 30
keepalive = 5
accesslog = None  # CorrelationIdMiddleware writes the access log, with the correlation id
configure_structlog()
logconfig_dict = logging_config(
    level=_config["django"]["log_level"], service_name=_config["service_name"], environment=_config["environment"]
)
# gunicorn's own lines (start, worker boot, shutdown) as JSON too, not through its plain-text handler.
logconfig_dict["loggers"]["gunicorn.error"] = {"handlers": ["console"], "level": "INFO", "propagate": False}
