from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "webhooks"
    verbose_name = "Webhooks"

    def ready(self):
        from events.services import order_event_recorded
        from webhooks.services import record_deliveries

        # Deliveries are written in the transaction of the event that causes them.
        order_event_recorded.connect(record_deliveries, dispatch_uid="webhooks.record_deliveries")
