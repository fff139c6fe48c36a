from django.urls import re_path

from devtools.bench.peer.views import create_order
from orders_project.health import liveness

urlpatterns = [
    re_path(r"^health/?$", liveness),
    re_path(r"^orders/?$", create_order),
]
