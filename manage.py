#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

import os
import sys


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orders_project.settings")
    from orders_project.config import create_local_directories, load_config

    # SQLite does not make its file's directory: a command on a fresh checkout (migrate) needs it.
    create_local_directories(load_config())
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
