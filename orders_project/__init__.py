# Celery's documented Django set-up: the app loads with Django, so shared tasks and signatures
# made by name bind to it in every process.
from orders_project.celery import app as celery_app

__all__ = ("celery_app",)
