from django.urls import re_path

from payments.views import OrderMoneyViewSet

# Beside the orders routes, with their form: no trailing slash needed, one accepted.
_ORDER = rf"^orders/(?P<pk>{OrderMoneyViewSet.lookup_value_regex})"

urlpatterns = [
    re_path(rf"{_ORDER}/cancel/?$", OrderMoneyViewSet.as_view({"post": "cancel"}), name="order-cancel"),
    re_path(
        rf"{_ORDER}/refunds/?$",
        OrderMoneyViewSet.as_view({"post": "create_refund", "get": "list_refunds"}),
        name="order-refunds",
    ),
]
