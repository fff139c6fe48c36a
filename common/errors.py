"""Failure kinds every layer can raise."""


class TransientError(Exception):
    """A failure worth retrying: a timeout, a dropped connection, a service briefly away."""
