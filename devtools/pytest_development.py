"""A pytest plugin (pytest.ini: ``-p devtools.pytest_development``) that puts the suite in
development before pytest-django reads the settings, which happens before any conftest.py is
imported: any other ENVIRONMENT, an unset one included, is production (orders_project/security.py).
The processes the tests start inherit it; the tests of production's settings set their own."""

import os

from orders_project.config import create_local_directories, load_config

os.environ["ENVIRONMENT"] = "development"


def pytest_configure(config):
    # The test database goes beside the configured SQLite file, whose directory SQLite will not make.
    create_local_directories(load_config())
