from rest_framework.routers import DefaultRouter

from orders.views import OrderViewSet

router = DefaultRouter()
# Both /orders and /orders/ answer: the contract's path has no trailing slash, DRF's routes have one.
router.trailing_slash = "/?"
router.register("orders", OrderViewSet, basename="order")

urlpatterns = router.urls
