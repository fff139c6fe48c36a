import uuid

from django.db import models
from django.db.models import Q
from django.utils import timezone

# PostgreSQL: a transaction that added outbox rows notifies this channel when it commits (the
# trigger of migration 0006), which wakes an idle relay.
OUTBOX_CHANNEL = "outbox_rows_added"


class OutboxEvent(models.Model):
    """An event written in the same transaction as the state change it announces.

    The relay publishes unpublished rows to Kafka in primary-key order (so per
    order, in the order they were written) and stamps ``published_at`` only after
    the broker confirmed delivery.
    """

    # Not unique: re-publishing an event from the dead-letter topic sends the same event again
    # (its handlers' inboxes make the second delivery do only what the first did not).
    event_id = models.UUIDField(default=uuid.uuid4, editable=False, db_index=True)
    event_type = models.CharField(max_length=64)
    topic = models.CharField(max_length=128)
    # Kafka message key: the order id, so all of an order's events share a partition.
    key = models.CharField(max_length=128, db_index=True)
    payload = models.JSONField()
    headers = models.JSONField(default=dict)
    # The W3C trace context (traceparent, tracestate) the event was recorded in, which its Kafka
    # message carries on (as the trace column of Debezium's outbox router); empty without tracing.
    trace_context = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    published_at = models.DateTimeField(null=True, blank=True)
    # Where Kafka put the published copy: the reconciler waits while the bridge's consumer group
    # has not yet committed past this offset (the copy is late, not lost).
    kafka_partition = models.IntegerField(null=True, blank=True)
    kafka_offset = models.BigIntegerField(null=True, blank=True)
    publish_attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    # Set by the reconciler once every handler the event is routed to has applied it and its
    # order is terminal: from then on the row is history, deleted after the retention period.
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            # The relay's scan: only the (small) unpublished tail, in write order.
            models.Index(fields=["id"], condition=Q(published_at__isnull=True), name="outbox_unpublished_idx"),
            # The reconciler's scan: events not known to be complete.
            models.Index(fields=["id"], condition=Q(completed_at__isnull=True), name="outbox_incomplete_idx"),
            models.Index(fields=["completed_at"], name="outbox_completed_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.event_id}"


class InboxEntry(models.Model):
    """An event a handler has applied. A redelivered event finds its entry and changes nothing.

    Written in the same transaction as the handler's state change, so "handled" and "applied"
    cannot disagree.
    """

    handler = models.CharField(max_length=64)
    event_id = models.UUIDField()
    handled_at = models.DateTimeField(default=timezone.now)
    # Times the event came again after it was handled (at-least-once delivery at work).
    redeliveries = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["handler", "event_id"], name="inbox_handler_event_uniq")]
        indexes = [models.Index(fields=["handled_at"], name="inbox_handled_at_idx")]
        verbose_name_plural = "inbox entries"

    def __str__(self) -> str:
        return f"{self.handler} {self.event_id}"


class DeadLetter(models.Model):
    """A message of the dlq topic, kept for operators: why it failed, and a way to send it again.

    The bridge copies every dlq message here (``archive_dead_letter``). An operator may re-publish
    it to the topic of its event type, only if it is an event the outbox recorded, exactly as
    recorded; ``fixed_value`` restores a damaged copy of such an event.
    """

    # Digest of the message (value and headers): the same message archived twice is one row.
    fingerprint = models.CharField(max_length=64, unique=True)
    reason = models.CharField(max_length=64)
    error = models.TextField(blank=True)
    source = models.CharField(max_length=64, blank=True)
    original_topic = models.CharField(max_length=128, blank=True)
    event_id = models.CharField(max_length=64, blank=True, db_index=True)
    event_type = models.CharField(max_length=64, blank=True)
    key = models.CharField(max_length=128, blank=True, db_index=True)
    # Each header's value as text (JSON null: a header without a value; the last of a repeated name).
    headers = models.JSONField(default=dict)
    # The original bytes, base64, exactly as they were; ``value`` is their text for reading.
    original_value_b64 = models.TextField()
    value = models.TextField(blank=True)
    # The key's and the headers' bytes too: [name, base64 value or null] per header, in order,
    # null when the Kafka client could not read them (``error`` says so).
    original_key_b64 = models.TextField(blank=True)
    original_headers_b64 = models.JSONField(default=list, blank=True, null=True)
    # Which of "key", "value" and "header <name>" were not UTF-8 text (or held NUL): their text
    # above is escaped in Python's bytes notation (\xff, \x00, a backslash doubled).
    escaped = models.JSONField(default=list, blank=True)
    # Only an event the outbox recorded is re-published (``republish_dead_letter``): a fixed value
    # can restore a damaged copy of one, never change what it says.
    fixed_value = models.TextField(
        blank=True,
        help_text=(
            "For a value that no longer reads as its event: the event exactly as the outbox recorded it "
            "(Events › Outbox events, its payload), re-published instead of the value."
        ),
    )
    received_at = models.DateTimeField(default=timezone.now)
    republished_at = models.DateTimeField(null=True, blank=True)
    republished_by = models.CharField(max_length=150, blank=True)
    republished_event = models.ForeignKey(OutboxEvent, null=True, blank=True, on_delete=models.SET_NULL)

    class Meta:
        ordering = ["-received_at", "-id"]
        # Also what lets an operator store a fixed value (DeadLetterAdmin.has_change_permission).
        permissions = [("republish_deadletter", "Can re-publish a dead letter (and store its fixed value)")]

    def __str__(self) -> str:
        return f"{self.reason}: {self.event_type or 'unreadable'} {self.key}"
