"""Delivery backends. Email goes through Django's email backends (console, SMTP, ...);
SMS through the small interface below, chosen by ``notification.sms_backend``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import structlog
from django.conf import settings
from django.core.mail import EmailMessage
from django.core.mail.backends.base import BaseEmailBackend
from django.utils.module_loading import import_string

logger = structlog.get_logger(__name__)


@dataclass(frozen=True)
class OutgoingMessage:
    recipient: str
    subject: str
    body: str
    # Stable per event and channel: lets a mail server or SMS provider drop a resend.
    message_key: str


class SmsBackend(Protocol):
    def send(self, message: OutgoingMessage) -> None: ...


class LoggingSmsBackend:
    """Writes the SMS to the log instead of sending it (the local default)."""

    def send(self, message: OutgoingMessage) -> None:
        logger.info("sms_sent", recipient=message.recipient, body=message.body, message_key=message.message_key)


class LogEmailBackend(BaseEmailBackend):
    """Writes each email to the log as one JSON line (the local default): readable, and the log
    stays one JSON object per line."""

    def send_messages(self, email_messages) -> int:
        for email in email_messages:
            logger.info(
                "email_sent",
                to=email.to,
                from_email=email.from_email,
                subject=email.subject,
                body=email.body,
                message_id=email.extra_headers.get("Message-ID", ""),
            )
        return len(email_messages)


def send_email(message: OutgoingMessage) -> None:
    email = EmailMessage(
        subject=message.subject,
        body=message.body,
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[message.recipient],
        headers={"Message-ID": f"<{message.message_key}@{settings.SERVICE_NAME}>"},
    )
    email.send(fail_silently=False)


def send_sms(message: OutgoingMessage) -> None:
    import_string(settings.NOTIFICATION["sms_backend"])().send(message)
