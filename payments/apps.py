from django.apps import AppConfig


class PaymentsConfig(AppConfig):
    name = "payments"

    def ready(self) -> None:
        # Every process refuses to start with a gateway class that does not import, rather than
        # fail its first charge.
        from payments.gateway import gateway_class

        gateway_class()
