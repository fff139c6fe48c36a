"""The peer's settings: the product's, with the peer's URLs and its tasks (found by the
product's Celery app, whose autodiscovery looks in every installed app)."""

from orders_project.settings import *  # noqa: F403 - everything the product configures
from orders_project.settings import INSTALLED_APPS

ROOT_URLCONF = "devtools.bench.peer.urls"
INSTALLED_APPS = [*INSTALLED_APPS, "devtools.bench.peer"]
