"""The one settings module: values come from config.yaml, overridden by the environment."""

from __future__ import annotations

from orders_project import security
from orders_project.config import (
    STATIC_ROOT,
    celery_broker_url,
    celery_transport_options,
    env,
    load_config,
    sqlite_database_file,
)
from orders_project.logging import SERVICE_NAME, configure_structlog, logging_config

CONFIG = load_config()

ENVIRONMENT = CONFIG["environment"]
# Only ENVIRONMENT=development, exactly, is development; any other value, a missing one included,
# is production, which refuses to start without a real key, its hosts and a delivering email
# backend (orders_project/security.py says what each needs).
DEVELOPMENT = security.is_development(ENVIRONMENT)
PRODUCTION = not DEVELOPMENT
DEBUG = security.debug(CONFIG["django"]["debug"], development=DEVELOPMENT)
SECRET_KEY = security.secret_key(CONFIG["django"]["secret_key"], development=DEVELOPMENT)
ALLOWED_HOSTS = security.allowed_hosts(CONFIG["http"]["allowed_hosts"], development=DEVELOPMENT)
_security = CONFIG["security"]
CSRF_TRUSTED_ORIGINS = _security["csrf_trusted_origins"]
if PRODUCTION:
    # Behind a proxy that terminates TLS (the Ingress): it says the request came over HTTPS in this
    # header, so Django builds https:// URLs, and the admin's CSRF check accepts the https Origin.
    SECURE_PROXY_SSL_HEADER = security.proxy_ssl_header(_security["proxy_ssl_header"])
    SECURE_SSL_REDIRECT = _security["ssl_redirect"]
    # Probes and scrapers inside the cluster call the pods over plain HTTP.
    SECURE_REDIRECT_EXEMPT = [r"^health/?$", r"^health/ready/?$", r"^metrics/?$"]
    SECURE_HSTS_SECONDS = _security["hsts_seconds"]
    SECURE_HSTS_INCLUDE_SUBDOMAINS = _security["hsts_include_subdomains"]
    SECURE_HSTS_PRELOAD = _security["hsts_preload"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True

HTTP_PORT = int(CONFIG["http"]["port"])
MAX_REQUEST_BODY_BYTES = CONFIG["http"]["max_body_bytes"]
# Django's own guard, for bodies sent without a Content-Length.
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_REQUEST_BODY_BYTES

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "events",
    "messaging",
    "orders",
    "payments",
    "notifications",
    "pipeline",
    "recovery",
    "webhooks",
]

MIDDLEWARE = [
    "orders_project.middleware.CorrelationIdMiddleware",
    "orders_project.middleware.JsonErrorMiddleware",
    "orders_project.middleware.RequestBodyLimitMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "orders_project.urls"
WSGI_APPLICATION = "orders_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


def _database(url: str) -> dict:
    database = env.db_url_config(url)
    # Its directory is made by the processes that run the local default (config.create_local_directories).
    if sqlite_file := sqlite_database_file(database):
        database["NAME"] = str(sqlite_file)
        database["OPTIONS"] = {
            # Writers queue for the lock instead of failing with "database is locked", and
            # readers never block the writer (web, relay, bridge and worker share the file).
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
        # Tests use a file too: the relay, bridge and worker they start are separate processes.
        database["TEST"] = {"NAME": str(sqlite_file.with_suffix(".test.sqlite3"))}
    else:
        # A pool per process: Celery closes a task's connection after each task, and a pooled
        # close hands it back instead of ending it (a new PostgreSQL connection is costly).
        # Connections are checked when taken, so a restarted server costs one retry, not a failure.
        database["CONN_MAX_AGE"] = 0
        database["CONN_HEALTH_CHECKS"] = True
        database.setdefault("OPTIONS", {})["pool"] = {
            "min_size": 1,
            "max_size": CONFIG["database"]["pool_max_size"],
            "timeout": CONFIG["database"]["pool_timeout"],
        }
        # Parameters travel apart from the SQL, so psycopg prepares the statements a pooled
        # connection runs again and again (each order's handful) and PostgreSQL plans them once.
        database["OPTIONS"]["server_side_binding"] = True
    return database


DATABASES = {
    "default": _database(CONFIG["database"]["url"]),
    # The simulated payment provider's ledger (payments.simulator): apart, as a real provider's is.
    "provider": _database(CONFIG["payments"]["simulator_database_url"]),
}
DATABASE_ROUTERS = ["payments.simulator.SimulatedProviderRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serve static files from the apps directly when collectstatic has not been run (local runs).
WHITENOISE_USE_FINDERS = True

REST_FRAMEWORK = {
    "DEFAULT_PARSER_CLASSES": ["orders_project.parsers.DecimalJSONParser"],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_PAGINATION_CLASS": "orders_project.pagination.StandardPagination",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "orders_project.exceptions.api_exception_handler",
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    # Open or token-only as API_REQUIRE_AUTH says, read per request.
    "DEFAULT_PERMISSION_CLASSES": ["orders.api_access.ApiAccess"],
    "DEFAULT_THROTTLE_CLASSES": [
        "orders.api_access.AnonymousThrottle",
        "orders.api_access.ClientThrottle",
    ],
    # Decimals leave the API as strings ("75.97"), never as floats.
    "COERCE_DECIMAL_TO_STRING": True,
    # The throttles' client address: X-Forwarded-For's entry appended by the last of this many
    # proxies; 0: the connection's address (a client chooses what its X-Forwarded-For says).
    "NUM_PROXIES": CONFIG["http"]["num_proxies"],
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Order processing API",
    "DESCRIPTION": "Create orders and follow them through processing, payment and notifications.",
    "VERSION": "1.0.0",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SERVE_INCLUDE_SCHEMA": False,
    # Three "status" choice sets: each its own name in the schema.
    "ENUM_NAME_OVERRIDES": {
        "OrderStatusEnum": "orders.models.OrderStatus",
        "RefundStatusEnum": "payments.models.RefundStatus",
        "DeliveryStatusEnum": "webhooks.models.DeliveryStatus",
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "orders_project.schema.complete_schema",
    ],
}


KAFKA = CONFIG["kafka"]
OUTBOX = CONFIG["outbox"]
BRIDGE = CONFIG["bridge"]
ORDER_LIMITS = CONFIG["orders"]
PAYMENTS = CONFIG["payments"]
# The simulator locally; production refuses it unless PAYMENTS_ALLOW_SIMULATOR=true (security.py).
PAYMENTS["gateway_class"] = security.payment_gateway(CONFIG, development=DEVELOPMENT)
NOTIFICATION = CONFIG["notification"]
# The processes' metrics endpoints bind the web process's interface unless told otherwise.
METRICS = {**CONFIG["metrics"], "host": CONFIG["metrics"]["host"] or CONFIG["http"]["host"]}
RECONCILER = CONFIG["reconciler"]
API = CONFIG["api"]
WEBHOOKS = {
    **CONFIG["webhooks"],
    "retry_schedule": [float(delay) for delay in CONFIG["webhooks"]["retry_schedule"]],
    "allow_http": security.development_default(
        CONFIG["webhooks"]["allow_http"], development=DEVELOPMENT, name="WEBHOOKS_ALLOW_HTTP"
    ),
    "allow_loopback": security.development_default(
        CONFIG["webhooks"]["allow_loopback"], development=DEVELOPMENT, name="WEBHOOKS_ALLOW_LOOPBACK"
    ),
}
# Token authentication, each client seeing only its own orders: always on in production.
API_REQUIRE_AUTH = API["require_auth"] or PRODUCTION
CACHES = {"default": env.cache_url_config(CONFIG["cache"]["url"])}

# Celery (orders_project/celery.py reads every CELERY_* setting).
_celery = CONFIG["celery"]
CELERY_BROKER_URL = celery_broker_url(_celery["broker_url"])
CELERY_BROKER_TRANSPORT_OPTIONS = celery_transport_options(
    CELERY_BROKER_URL, visibility_timeout=_celery["visibility_timeout"]
)
CELERY_TASK_DEFAULT_QUEUE = _celery["queue"]
CELERY_TASK_ROUTES = {"webhooks.*": {"queue": WEBHOOKS["queue"]}}
CELERY_WORKER_CONCURRENCY = _celery["concurrency"]
CELERY_WORKER_PREFETCH_MULTIPLIER = _celery["prefetch_multiplier"]
CELERY_TASK_ANNOTATIONS = {"*": {"max_retries": _celery["max_retries"]}}
CELERY_TASK_RETRY_BACKOFF = _celery["retry_backoff"]
CELERY_TASK_RETRY_BACKOFF_MAX = _celery["retry_backoff_max"]
# A task is acknowledged after it ran, so a worker that dies mid-task hands it back to the queue.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_WORKER_SEND_TASK_EVENTS = False

# Emails and SMS to the log in development only; SMTP (email.*) in production.
EMAIL_BACKEND = security.email_backend(CONFIG, development=DEVELOPMENT)
NOTIFICATION["sms_backend"] = security.sms_backend(CONFIG, development=DEVELOPMENT)
DEFAULT_FROM_EMAIL = NOTIFICATION["email_from"]
EMAIL_HOST = CONFIG["email"]["host"]
EMAIL_PORT = CONFIG["email"]["port"]
EMAIL_HOST_USER = CONFIG["email"]["user"]
EMAIL_HOST_PASSWORD = CONFIG["email"]["password"]
EMAIL_USE_TLS = CONFIG["email"]["use_tls"]
EMAIL_USE_SSL = security.email_use_ssl(CONFIG)
EMAIL_TIMEOUT = CONFIG["email"]["timeout"]

configure_structlog()
LOGGING = logging_config(level=CONFIG["django"]["log_level"], environment=ENVIRONMENT)

# OpenTelemetry (common/tracing.py): off while tracing.otlp_endpoint is empty.
TRACING = CONFIG["tracing"]

# /metrics and /health/ready answer only this bearer token when it is set; without one they are
# open in development and not served at all in production (orders_project/health.py).
INTERNAL_TOKEN = security.internal_token(CONFIG["http"]["internal_token"], development=DEVELOPMENT)
