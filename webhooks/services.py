"""Writes to webhooks: endpoints, the deliveries each order event causes, and sending them.

A delivery is written in the transaction of the event that causes it (``record_deliveries``, on
``events.services.order_event_recorded``), at most one per endpoint and event. It is sent by a task
on the webhooks queue outside any transaction (``send_delivery``): every attempt carries the same
``webhook-id`` (the event's id) and body, signed with the endpoint's secret (and the one before a
rotation, during its grace). A failed attempt is due again after the schedule's next delay; the
reconciler hands due deliveries to tasks (``dispatch_due_deliveries``), so a lost task or worker
delays a delivery but never loses it.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import json
import secrets
import time
from dataclasses import dataclass

import certifi
import structlog
import urllib3
from django.conf import settings
from django.db import transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone
from standardwebhooks import Webhook

from events.contract import (
    ORDER_CANCELLED,
    ORDER_CREATED,
    ORDER_PAID,
    ORDER_PROCESSING,
    ORDER_REFUNDED,
    PAYMENT_FAILED,
    REFUND_FAILED,
    REFUND_REQUESTED,
    isoformat,
)
from common.batches import apply_batch, call_concurrently
from events.models import OutboxEvent
from orders.models import Order
from webhooks.addresses import Target, UnsafeUrl, check_url
from webhooks.metrics import ATTEMPT_SECONDS, DELIVERIES, ENDPOINTS_DISABLED
from webhooks.models import DeliveryStatus, WebhookAttempt, WebhookDelivery, WebhookEndpoint

logger = structlog.get_logger(__name__)

# The webhook type of each order event (Standard Webhooks' dotted names).
WEBHOOK_TYPES = {
    ORDER_CREATED: "order.created",
    ORDER_PROCESSING: "order.processing",
    ORDER_PAID: "order.paid",
    PAYMENT_FAILED: "order.payment_failed",
    ORDER_CANCELLED: "order.cancelled",
    REFUND_REQUESTED: "order.refund_requested",
    ORDER_REFUNDED: "order.refunded",
    REFUND_FAILED: "order.refund_failed",
}
EXCERPT_BYTES = 500
SECRET_BYTES = 24
# Seconds within which a next attempt waits in the Celery queue as a countdown (held by the task
# that failed); a countdown must stay well under the Redis broker's visibility timeout (60 s).
# Later attempts are handed to tasks by the reconciler when they are due.
COUNTDOWN_LIMIT = 30.0


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def url_policy() -> dict:
    config = settings.WEBHOOKS
    return {"allow_http": config["allow_http"], "allow_loopback": config["allow_loopback"], "allow": config["allow"]}


def check_receiver(*, url: str) -> Target:
    """The receiver ``url`` names, if it may be sent to; ``UnsafeUrl`` saying why otherwise."""
    return check_url(url, **url_policy())


# --- Endpoints ---------------------------------------------------------------------------------


def create_endpoint(*, owner, url: str, event_types: list[str], description: str = "") -> WebhookEndpoint:
    """Register a receiver; ``UnsafeUrl`` if its URL may not be sent to. The secret is the
    endpoint's ``secret``, which the API shows once."""
    check_receiver(url=url)
    endpoint = WebhookEndpoint.objects.create(
        owner=owner, url=url, event_types=sorted(set(event_types)), description=description, secret=new_secret()
    )
    logger.info("webhook_endpoint_created", endpoint_id=str(endpoint.id))
    return endpoint


def update_endpoint(*, endpoint: WebhookEndpoint, **changes) -> WebhookEndpoint:
    """Change ``url``, ``event_types``, ``description`` or ``enabled``; a new URL is checked, and
    enabling an endpoint clears why it was disabled and its failing streak."""
    if "url" in changes:
        check_receiver(url=changes["url"])
    if "event_types" in changes:
        changes["event_types"] = sorted(set(changes["event_types"]))
    if changes.get("enabled") is True and not endpoint.enabled:
        # Only a disabled endpoint starts afresh: an enabled one that is failing keeps its streak.
        changes.update(disabled_reason="", failing_since=None)
    elif changes.get("enabled") is False and endpoint.enabled:
        changes["disabled_reason"] = "disabled by its client"
    for name, value in changes.items():
        setattr(endpoint, name, value)
    endpoint.save()
    return endpoint


def delete_endpoint(*, endpoint: WebhookEndpoint) -> None:
    """Remove a receiver with its deliveries and their attempts."""
    endpoint_id = endpoint.id
    endpoint.delete()
    logger.info("webhook_endpoint_deleted", endpoint_id=str(endpoint_id))


def rotate_secret(*, endpoint: WebhookEndpoint) -> WebhookEndpoint:
    """A new secret; the old one still signs deliveries (beside it) for the rotation grace."""
    grace = dt.timedelta(hours=settings.WEBHOOKS["rotation_grace_hours"])
    endpoint.previous_secret, endpoint.secret = endpoint.secret, new_secret()
    endpoint.previous_secret_expires_at = timezone.now() + grace
    endpoint.save(update_fields=["secret", "previous_secret", "previous_secret_expires_at", "updated_at"])
    logger.info("webhook_secret_rotated", endpoint_id=str(endpoint.id))
    return endpoint


def _disable(*, endpoint_id, reason: str) -> None:
    if WebhookEndpoint.objects.filter(pk=endpoint_id, enabled=True).update(enabled=False, disabled_reason=reason[:255]):
        transaction.on_commit(lambda: ENDPOINTS_DISABLED.labels("gone" if "410" in reason else "failing").inc())
        logger.warning("webhook_endpoint_disabled", endpoint_id=str(endpoint_id), reason=reason)


# --- Deliveries --------------------------------------------------------------------------------


def body_of(*, event: OutboxEvent) -> str:
    """What a receiver gets for an order event: ``{type, timestamp, data}``, small whatever the
    order holds (no items). ``data.sequence`` grows with each event of an order, so a receiver can
    order what arrives out of order."""
    payload = event.payload
    order = payload["order"]
    data = {
        "order_id": order["id"],
        "status": order["status"],
        "total_amount": order["total_amount"],
        "event_id": str(event.event_id),
        "sequence": event.id,
        **payload.get("details", {}),
    }
    return json.dumps({"type": WEBHOOK_TYPES[event.event_type], "timestamp": payload["timestamp"], "data": data})


def record_deliveries(*, event: OutboxEvent, **_signal) -> int:
    """A delivery of ``event`` for each enabled endpoint of its order's client that takes its type,
    in the event's transaction; none twice (the pair is unique: a re-published event adds none).
    Returns how many endpoints take it."""
    if event.event_type not in WEBHOOK_TYPES:
        return 0
    # One query on every event's path: the endpoints whose owner is the order's (both none included).
    order = Order.objects.filter(pk=event.key)
    same_owner = Exists(order.filter(owner_id=OuterRef("owner_id"))) | (
        Q(owner__isnull=True) & Exists(order.filter(owner__isnull=True))
    )
    endpoints = WebhookEndpoint.objects.filter(same_owner, enabled=True)
    wanted = [
        endpoint
        for endpoint in endpoints.only("id", "event_types")
        if not endpoint.event_types or WEBHOOK_TYPES[event.event_type] in endpoint.event_types
    ]
    if not wanted:
        return 0
    body = body_of(event=event)
    now = timezone.now()
    WebhookDelivery.objects.bulk_create(
        [
            WebhookDelivery(
                endpoint=endpoint,
                event_id=event.event_id,
                event_type=event.event_type,
                order_id=event.key,
                body=body,
                # The bridge hands it to a task long before; should that task be lost, the
                # reconciler hands it on at this deadline.
                next_attempt_at=now + dt.timedelta(seconds=settings.WEBHOOKS["redispatch_after"]),
                created_at=now,
            )
            for endpoint in wanted
        ],
        ignore_conflicts=True,
    )
    return len(wanted)


def pending_deliveries(*, event_ids: list[str]) -> list[str]:
    """The ids of the deliveries of ``event_ids`` still to be sent, each marked handed to a task now."""
    due = WebhookDelivery.objects.filter(event_id__in=event_ids, status=DeliveryStatus.PENDING)
    ids = [str(pk) for pk in due.values_list("id", flat=True)]
    if ids:
        WebhookDelivery.objects.filter(pk__in=ids).update(dispatched_at=timezone.now())
    return ids


def due_deliveries(*, now: dt.datetime, limit: int) -> list[str]:
    """Deliveries due and not held by a task (their next attempt is due, or the task that held
    them was lost ``redispatch_after`` ago): their ids, each marked handed to a task now."""
    stale = now - dt.timedelta(seconds=settings.WEBHOOKS["redispatch_after"])
    due = WebhookDelivery.objects.filter(status=DeliveryStatus.PENDING, next_attempt_at__lte=now).filter(
        Q(dispatched_at__isnull=True) | Q(dispatched_at__lt=stale)
    )
    ids = [str(pk) for pk in due.order_by("next_attempt_at").values_list("id", flat=True)[:limit]]
    if ids:
        WebhookDelivery.objects.filter(pk__in=ids).update(dispatched_at=now)
    return ids


@dataclass(frozen=True)
class Answer:
    status_code: int | None
    excerpt: str = ""
    error: str = ""
    retry_after: float | None = None


def signature_header(*, endpoint: WebhookEndpoint, msg_id: str, timestamp: dt.datetime, body: str, now: dt.datetime) -> str:
    """``v1,<signature>`` with the endpoint's secret, and after a rotation with the previous one too
    until its grace ends (space-separated, as the specification allows)."""
    secrets_in_use = [endpoint.secret]
    if endpoint.previous_secret and endpoint.previous_secret_expires_at and endpoint.previous_secret_expires_at > now:
        secrets_in_use.append(endpoint.previous_secret)
    return " ".join(Webhook(secret).sign(msg_id=msg_id, timestamp=timestamp, data=body) for secret in secrets_in_use)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (moment - timezone.now()).total_seconds())


def post(*, target: Target, headers: dict[str, str], body: str, timeout: float) -> Answer:
    """POST ``body`` to the checked ``target``, connecting to the address that was checked (the
    name is sent in Host and TLS SNI) and following no redirect."""
    host = f"[{target.host}]" if ":" in target.host else target.host  # an IPv6 literal, bracketed as in URLs
    host_header = host if target.port == (443 if target.scheme == "https" else 80) else f"{host}:{target.port}"
    options = {"timeout": urllib3.Timeout(total=timeout), "retries": False, "maxsize": 1}
    if target.scheme == "https":
        pool = urllib3.HTTPSConnectionPool(
            target.address,
            target.port,
            server_hostname=target.host,
            assert_hostname=target.host,
            cert_reqs="CERT_REQUIRED",
            ca_certs=certifi.where(),
            **options,
        )
    else:
        pool = urllib3.HTTPConnectionPool(target.address, target.port, **options)
    try:
        response = pool.urlopen(
            "POST",
            target.path,
            body=body.encode(),
            headers={**headers, "Host": host_header, "Content-Type": "application/json", "User-Agent": "order-service-webhooks"},
            redirect=False,
            assert_same_host=False,
            preload_content=False,
        )
        try:
            excerpt = response.read(EXCERPT_BYTES, decode_content=False).decode("utf-8", "replace")
        finally:
            response.release_conn()
        return Answer(status_code=response.status, excerpt=excerpt, retry_after=_retry_after(response.headers.get("Retry-After")))
    except urllib3.exceptions.HTTPError as exc:
        return Answer(status_code=None, error=f"{type(exc).__name__}: {exc}"[:2000])
    finally:
        pool.close()


@dataclass(frozen=True)
class Attempt:
    """One POST of a delivery and what the receiver answered."""

    delivery: WebhookDelivery
    answer: Answer
    started: dt.datetime
    duration: float

    @property
    def succeeded(self) -> bool:
        return self.answer.status_code is not None and 200 <= self.answer.status_code < 300


def send_delivery(*, delivery_id) -> float | None:
    """One attempt of a pending delivery (``send_deliveries``). Returns the countdown the caller
    queues the next attempt with when it is due within ``COUNTDOWN_LIMIT``, else None (sent,
    failed for good, not pending, or the reconciler's)."""
    (countdown,) = send_deliveries(delivery_ids=[delivery_id])
    if isinstance(countdown, Exception):
        raise countdown
    return countdown


def send_deliveries(*, delivery_ids: list[str]) -> list[float | None | Exception]:
    """One attempt of each pending delivery: read together, POSTed side by side (at most
    ``webhooks.concurrency`` at a time in this process) with no transaction open, and their answers
    recorded together (``record_attempts``). Returns, per delivery, the countdown of its next
    attempt (as ``send_delivery``), or the error that kept its attempt from being recorded."""
    pending = {
        str(delivery.pk): delivery
        for delivery in WebhookDelivery.objects.select_related("endpoint").filter(
            pk__in=delivery_ids, status=DeliveryStatus.PENDING
        )
    }
    deliveries = [pending[str(delivery_id)] for delivery_id in delivery_ids if str(delivery_id) in pending]
    attempts = call_concurrently(
        [lambda delivery=delivery: _attempt(delivery) for delivery in deliveries], limit=settings.WEBHOOKS["concurrency"]
    )
    made = [attempt for attempt in attempts if not isinstance(attempt, Exception)]
    recorded = iter(apply_batch(made, lambda some: record_attempts(attempts=some)))
    outcomes = {
        str(delivery.pk): attempt if isinstance(attempt, Exception) else next(recorded)
        for delivery, attempt in zip(deliveries, attempts)
    }
    return [outcomes.get(str(delivery_id)) for delivery_id in delivery_ids]


def _attempt(delivery: WebhookDelivery) -> Attempt:
    """POST the delivery to its endpoint, signed, if the endpoint is enabled and may be sent to."""
    endpoint = delivery.endpoint
    started = timezone.now()
    clock = time.monotonic()
    if not endpoint.enabled:
        answer = Answer(status_code=None, error=f"endpoint disabled: {endpoint.disabled_reason}")
    else:
        try:
            target = check_receiver(url=endpoint.url)
        except UnsafeUrl as exc:
            answer = Answer(status_code=None, error=f"refused: {exc}")
        else:
            headers = {
                "webhook-id": str(delivery.event_id),
                "webhook-timestamp": str(int(started.timestamp())),
                "webhook-signature": signature_header(
                    endpoint=endpoint, msg_id=str(delivery.event_id), timestamp=started, body=delivery.body, now=started
                ),
            }
            answer = post(target=target, headers=headers, body=delivery.body, timeout=settings.WEBHOOKS["timeout"])
    duration = time.monotonic() - clock
    ATTEMPT_SECONDS.observe(duration)
    return Attempt(delivery=delivery, answer=answer, started=started, duration=duration)


def record_attempt(*, delivery: WebhookDelivery, answer: Answer, started: dt.datetime, duration: float) -> float | None:
    """One attempt recorded (``record_attempts``), in a transaction of its own."""
    with transaction.atomic():
        (countdown,) = record_attempts(attempts=[Attempt(delivery=delivery, answer=answer, started=started, duration=duration)])
    return countdown


def record_attempts(*, attempts: list[Attempt]) -> list[float | None]:
    """In the caller's transaction, each attempt and what it comes to: 2xx delivered; 410 (or a
    disabled endpoint) failed for good, the endpoint disabled; anything else due again after the
    schedule's next delay (at least the receiver's Retry-After on 429 and 503), failed after the
    last one. An endpoint whose every attempt failed for ``disable_after_days`` is disabled. The
    attempts, and the deliveries they delivered, are written in one statement each. Returns the
    countdown of each next attempt due within ``COUNTDOWN_LIMIT``."""
    WebhookAttempt.objects.bulk_create(
        [
            WebhookAttempt(
                delivery=attempt.delivery,
                started_at=attempt.started,
                duration_ms=round(attempt.duration * 1000, 1),
                status_code=attempt.answer.status_code,
                response_excerpt=attempt.answer.excerpt,
                error=attempt.answer.error,
            )
            for attempt in attempts
        ]
    )
    delivered = [attempt for attempt in attempts if attempt.succeeded]
    if delivered:
        _record_delivered(delivered)
    countdowns = []
    for attempt in attempts:
        outcome, countdown = ("succeeded", None) if attempt.succeeded else _record_undelivered(attempt)
        transaction.on_commit(lambda attempt=attempt, outcome=outcome: _report(attempt, outcome=outcome))
        countdowns.append(countdown)
    return countdowns


def _report(attempt: Attempt, *, outcome: str) -> None:
    """Count and log a recorded attempt (once committed: a batch rolled back is recorded again)."""
    delivery, answer = attempt.delivery, attempt.answer
    DELIVERIES.labels(outcome).inc()
    logger.info(
        "webhook_attempt",
        delivery_id=str(delivery.pk),
        event_id=str(delivery.event_id),
        order_id=str(delivery.order_id),
        attempt=delivery.attempts + 1,
        status_code=answer.status_code,
        error=answer.error or None,
        outcome=outcome,
        duration_ms=round(attempt.duration * 1000, 1),
    )


def _record_delivered(delivered: list[Attempt]) -> None:
    WebhookEndpoint.objects.filter(
        pk__in={attempt.delivery.endpoint_id for attempt in delivered}, failing_since__isnull=False
    ).update(failing_since=None)
    groups: dict[tuple[int, int], list[str]] = {}
    for attempt in delivered:
        groups.setdefault((attempt.answer.status_code, attempt.delivery.attempts), []).append(attempt.delivery.pk)
    now = timezone.now()
    for (code, attempts_before), delivery_ids in groups.items():
        WebhookDelivery.objects.filter(pk__in=delivery_ids, status=DeliveryStatus.PENDING, attempts=attempts_before).update(
            status=DeliveryStatus.SUCCEEDED,
            completed_at=now,
            attempts=F("attempts") + 1,
            last_status_code=code,
            last_error="",
            dispatched_at=None,
        )


def _record_undelivered(attempt: Attempt) -> tuple[str, float | None]:
    """What an attempt that did not deliver comes to, recorded on its delivery and endpoint: its
    outcome and the countdown of its next attempt due within ``COUNTDOWN_LIMIT``."""
    config = settings.WEBHOOKS
    schedule = config["retry_schedule"]
    delivery, answer, started = attempt.delivery, attempt.answer, attempt.started
    code = answer.status_code
    attempts = delivery.attempts + 1
    delay = None
    fields = {"attempts": F("attempts") + 1, "last_status_code": code, "last_error": answer.error, "dispatched_at": None}
    endpoint_id = delivery.endpoint_id
    if code == 410 or answer.error.startswith("endpoint disabled"):
        outcome = "gone" if code == 410 else "endpoint_disabled"
        fields.update(status=DeliveryStatus.FAILED, completed_at=timezone.now())
        if code == 410:
            _disable(endpoint_id=endpoint_id, reason="the receiver answered 410 Gone")
    elif attempts >= len(schedule):
        outcome = "failed"
        fields.update(status=DeliveryStatus.FAILED, completed_at=timezone.now())
    else:
        outcome = "retrying"
        delay = schedule[attempts]
        if code in (429, 503) and answer.retry_after is not None:
            delay = min(max(delay, answer.retry_after), max(schedule))
        fields["next_attempt_at"] = started + dt.timedelta(seconds=delay)
        if delay <= COUNTDOWN_LIMIT:
            fields["dispatched_at"] = timezone.now()  # held by the countdown the caller queues
        else:
            delay = None
    if outcome in ("retrying", "failed"):
        WebhookEndpoint.objects.filter(pk=endpoint_id, failing_since__isnull=True).update(failing_since=started)
        failing_since = WebhookEndpoint.objects.filter(pk=endpoint_id).values_list("failing_since", flat=True).first()
        if failing_since and started - failing_since >= dt.timedelta(days=config["disable_after_days"]):
            _disable(endpoint_id=endpoint_id, reason=f"every attempt failed for {config['disable_after_days']:g} days")
    # Only the attempt that read the delivery as it is moves it on (a second task at once records its attempt only).
    WebhookDelivery.objects.filter(pk=delivery.pk, status=DeliveryStatus.PENDING, attempts=delivery.attempts).update(**fields)
    return outcome, delay


def redeliver(*, delivery: WebhookDelivery) -> WebhookDelivery:
    """A client's or operator's redelivery: pending again and handed to a task now (the caller
    queues it), with the same webhook-id; the attempts made so far are kept, and should this one
    fail the schedule starts over."""
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        status=DeliveryStatus.PENDING, attempts=0, next_attempt_at=timezone.now(), dispatched_at=timezone.now(), completed_at=None
    )
    delivery.refresh_from_db()
    return delivery
