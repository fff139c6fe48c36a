"""Failure kinds every layer can raise, and which of them are worth another try."""

from django.db import InterfaceError as DatabaseInterfaceError
from django.db import OperationalError as DatabaseOperationalError


class TransientError(Exception):
    """A failure worth retrying: a timeout, a dropped connection, a service briefly away."""

    # The task arguments a retry carries: the part of the work still to do (None: all of it).
    retry_args: tuple | None = None


# Database errors here are connection-level (a restart, a failover, a lock timeout).
TRANSIENT_ERRORS = (TransientError, DatabaseOperationalError, DatabaseInterfaceError)


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
