from django.urls import re_path

from devtools.bench.peer.views import cancel_order, create_order, create_refund
from orders_project.health import liveness

_ORDER = r"^orders/(?P<pk>[0-9a-f-]{36})"

urlpatterns = [
    re_path(r"^health/?$", liveness),
    re_path(r"^orders/?$", create_order),
    re_path(rf"{_ORDER}/cancel/?$", cancel_order),
    re_path(rf"{_ORDER}/refunds/?$", create_refund),
]
