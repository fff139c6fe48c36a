from rest_framework.routers import SimpleRouter

from webhooks.views import WebhookDeliveryViewSet, WebhookEndpointViewSet

router = SimpleRouter()
# Like the orders routes: no trailing slash needed, one accepted.
router.trailing_slash = "/?"
router.register("webhook-endpoints", WebhookEndpointViewSet, basename="webhook-endpoint")
router.register("webhook-deliveries", WebhookDeliveryViewSet, basename="webhook-delivery")

urlpatterns = router.urls
