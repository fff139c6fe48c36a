"""A pytest plugin (pytest.ini: ``-p devtools.pytest_development``) that puts the suite in
development before pytest-django reads the settings, which happens before any conftest.py is
imported: any other ENVIRONMENT, an unset one included, is production (orders_project/security.py).
The processes the tests start inherit it; the tests of production's settings set their own."""

import os

os.environ["ENVIRONMENT"] = "development"
