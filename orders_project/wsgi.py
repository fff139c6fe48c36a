import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orders_project.settings")

from django.conf import settings  # noqa: E402 - after the settings module is named
from django.core.wsgi import get_wsgi_application  # noqa: E402

from common.tracing import setup_tracing  # noqa: E402
from orders_project.middleware import ChunkedRequestBody  # noqa: E402

setup_tracing("web")  # before the application loads its middleware: Django's instrumentation adds its own
application = ChunkedRequestBody(get_wsgi_application(), max_bytes=settings.MAX_REQUEST_BODY_BYTES)
