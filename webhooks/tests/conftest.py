"""Fixtures of the webhook tests: receivers on loopback that the tests start and close."""

from __future__ import annotations

import pytest

from devtools.harness.webhook_receivers import Receiver


@pytest.fixture
def receiver_of():
    """Start a ``Receiver`` (its answers, in turn); all are closed after the test."""
    receivers = []

    def start(answers=(), **options) -> Receiver:
        receivers.append(Receiver(answers, **options))
        return receivers[-1]

    yield start
    for receiver in receivers:
        receiver.close()
