# The Celery app is loaded with Django so @shared_task binds to it and tasks publish through it.
from orders_project.celery import app as celery_app

__all__ = ["celery_app"]
