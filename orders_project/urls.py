from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from orders_project.health import liveness, metrics, readiness

urlpatterns = [
    re_path(r"^health/?$", liveness, name="health"),
    re_path(r"^health/ready/?$", readiness, name="readiness"),
    re_path(r"^metrics/?$", metrics, name="metrics"),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("api-auth/", include("rest_framework.urls")),
    path("", include("payments.urls")),
    path("", include("orders.urls")),
    path("", include("webhooks.urls")),
]
