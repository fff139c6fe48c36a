from rest_framework.routers import DefaultRouter

from orders.views import OrderViewSet

router = DefaultRouter()
# Both /orders and /orders/ answer, as the seed's clients call POST /orders.
router.trailing_slash = "/?"
router.register("orders", OrderViewSet, basename="order")

urlpatterns = router.urls
