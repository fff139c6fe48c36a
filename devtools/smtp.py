"""A real SMTP server for tests: aiosmtpd on a free port of 127.0.0.1, taking ``delay`` seconds
per message (a slow mail server), recording each message it accepted with its Message-ID."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from email import message_from_bytes
from email.message import Message

from aiosmtpd.controller import Controller

from devtools.broker import free_port


class SlowSmtpServer:
    def __init__(self, *, delay: float):
        self.delay = delay
        self.messages: list[Message] = []
        # Set when a message's data has arrived and the server is taking its time over it.
        self.receiving = threading.Event()
        self._changed = threading.Condition()
        self.port = free_port()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server, session, envelope) -> str:
        self.receiving.set()
        await asyncio.sleep(self.delay)
        # Recorded before the answer: a sender learns the message was taken only after this.
        with self._changed:
            self.messages.append(message_from_bytes(envelope.original_content or envelope.content))
            self._changed.notify_all()
        return "250 Message accepted for delivery"

    def start(self) -> SlowSmtpServer:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def message_ids(self) -> Counter:
        with self._changed:
            # Unfolded: a long Message-ID arrives folded over two lines.
            return Counter("".join(message["Message-ID"].split()) for message in self.messages)

    def wait_for(self, count: int, *, timeout: float) -> list[Message]:
        """Block until ``count`` messages were accepted; ``TimeoutError`` after ``timeout`` s."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.messages) >= count, timeout=timeout):
                raise TimeoutError(f"{len(self.messages)} of {count} messages arrived in {timeout} s")
            return list(self.messages)

    def settings(self) -> dict[str, str]:
        """What points the service's email at this server (environment variables of config.yaml)."""
        return {
            "NOTIFICATION_EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "EMAIL_HOST": "127.0.0.1",
            "EMAIL_PORT": str(self.port),
            # Plain SMTP on the loopback: this server offers no STARTTLS.
            "EMAIL_USE_TLS": "false",
        }
