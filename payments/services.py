"""Writes to payments: charging an order through the gateway at most once, cancelling it, refunding
it at most once per request and never more than was charged."""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import structlog
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from common.batches import apply_together, call_concurrently, failures, with_log_context
from events.contract import ORDER_REFUNDED, REFUND_FAILED, REFUND_REQUESTED, Event, InvalidEvent
from events.services import claim_event, enqueue_dead_letter, was_handled
from orders import selectors as order_selectors
from orders import services as order_services
from orders.models import Order, OrderStatus
from payments.gateway import ChargeResult, GatewayTimeout, GatewayUnavailable, MoneyMoved, PaymentGateway, get_gateway
from payments.metrics import CANCELLATIONS, PAYMENTS, REFUNDED_AMOUNT, REFUNDS
from payments.models import Cancellation, Payment, PaymentStatus, Refund, RefundStatus, UnmatchedChargeRefund

logger = structlog.get_logger(__name__)

CHARGE_HANDLER = "payments.charge_order"
# Where a charge's outcome is awaited: the pipeline's, or one under way when the order was cancelled.
CHARGEABLE_STATUSES = order_services.RECORD_PAYMENT.sources | order_services.FINISH_CANCELLATION.sources


def _open_attempt(*, order_id) -> Payment | None:
    """The order's pending payment attempt, created if needed, with this gateway call counted, in
    the caller's transaction; None if the order is not awaiting payment. Decided under the order's
    lock, so that a cancellation sees the attempt or prevents it (an order being cancelled only
    finishes the attempt it had), and two deliveries of one event open one attempt."""
    try:
        order = order_services.lock_order(order_id)
    except Order.DoesNotExist:
        raise InvalidEvent("unknown_order", f"no order {order_id}") from None
    attempts = list(Payment.objects.filter(order_id=order_id).order_by("attempt")) if order.status in CHARGEABLE_STATUSES else []
    pending = next((payment for payment in reversed(attempts) if payment.status == PaymentStatus.PENDING), None)
    if pending:
        Payment.objects.filter(pk=pending.pk).update(gateway_calls=F("gateway_calls") + 1)
        return pending
    if order.status not in order_services.RECORD_PAYMENT.sources:
        logger.info("payment_skipped", order_id=str(order_id), status=order.status)
        return None
    attempt = len(attempts) + 1
    return Payment.objects.create(
        order_id=order_id,
        attempt=attempt,
        idempotency_key=f"{order_id}:{attempt}",
        amount=order.total_amount,
        currency=settings.PAYMENTS["currency"],
        gateway_calls=1,
    )


def charge_order(
    *,
    order_id,
    event_id,
    source: str,
    gateway: PaymentGateway | None = None,
) -> Payment | None:
    """Charge the order's pending attempt and record the outcome: the order goes PAID or PAYMENT_FAILED.

    The attempt (and its idempotency key) is committed before the gateway is called, so a
    retry after a timeout or a crash charges under the same key: the gateway returns the
    first charge instead of making a second. A decline is final. ``gateway``: the configured one
    (``get_gateway()``) unless given.
    """
    with transaction.atomic():
        payment = _attempt_to_charge(order_id=order_id, event_id=event_id)
    if payment is None:
        return None
    result = _charge_at_gateway(gateway or get_gateway(), payment=payment)
    with transaction.atomic():
        return _record_charge(order_id=order_id, event_id=event_id, payment=payment, result=result, source=source)


def charge_orders(*, events: list[Event], source: str, gateway: PaymentGateway | None = None) -> dict[int, Exception]:
    """``charge_order`` for the ORDER_CREATED ``events`` of several orders, the batch's way: the
    attempts opened in one transaction, committed before any call; the gateway called for all of
    them at once, at most ``gateway_concurrency`` calls at a time in this process; the answers
    recorded in a second transaction. Both transactions lock the orders in the order given (the
    events come in the order of their orders' ids, as in every batch), and fall back to one
    transaction per order should one fail (``apply_together``). Returns what ``charge_order``
    would have raised, by the event's position: each order's failure is its own, the others'
    charges stand."""
    gateway = gateway or get_gateway()

    def for_each(positions, change) -> list:
        return [with_log_context(events[index].log_context(), lambda index=index: change(index)) for index in positions]

    outcomes: dict[int, object] = dict(
        enumerate(apply_together(for_each(range(len(events)), lambda index: _attempt_to_charge(
            order_id=events[index].order_id, event_id=events[index].event_id
        ))))
    )
    calling = [index for index, outcome in outcomes.items() if isinstance(outcome, Payment)]
    attempts = {index: outcomes[index] for index in calling}
    answers = call_concurrently(
        for_each(calling, lambda index: _charge_at_gateway(gateway, payment=attempts[index])),
        limit=settings.PAYMENTS["gateway_concurrency"],
    )
    outcomes.update(zip(calling, answers))
    answered = [index for index in calling if not isinstance(outcomes[index], Exception)]
    recorded = apply_together(
        for_each(answered, lambda index: _record_charge(
            order_id=events[index].order_id,
            event_id=events[index].event_id,
            payment=attempts[index],
            result=outcomes[index],
            source=source,
        ))
    )
    outcomes.update(zip(answered, recorded))
    return failures([outcomes[index] for index in range(len(events))])


def _attempt_to_charge(*, order_id, event_id) -> Payment | None:
    """The pending attempt to charge for the event, in the caller's transaction (committed before
    the gateway is called); None if the charge was recorded already or the order awaits none."""
    if was_handled(handler=CHARGE_HANDLER, event_id=event_id):
        return None
    return _open_attempt(order_id=order_id)


def _charge_at_gateway(gateway: PaymentGateway, *, payment: Payment) -> ChargeResult:
    """The gateway's answer to the attempt (outside any transaction of ours)."""
    try:
        return gateway.charge(
            idempotency_key=payment.idempotency_key,
            order_id=str(payment.order_id),
            amount=payment.amount,
            currency=payment.currency,
        )
    except GatewayUnavailable as exc:
        PAYMENTS.labels("timeout" if isinstance(exc, GatewayTimeout) else "unavailable").inc()
        raise


def _record_charge(*, order_id, event_id, payment: Payment, result: ChargeResult, source: str) -> Payment | None:
    """The gateway's answer recorded in the caller's transaction, once per event: None if the
    event's charge was recorded already; the attempt as it stands if another answer decided it."""
    if not claim_event(handler=CHARGE_HANDLER, event_id=event_id):
        return None
    order = order_services.lock_order(order_id)
    # Only a pending attempt takes an outcome; a decided one is returned as it is.
    if not _record_charge_outcome(order=order, payment=payment, result=result, source=source):
        return Payment.objects.get(pk=payment.pk)
    # Reported once committed, as a line of this order's (the batch commits after its last order).
    context = structlog.contextvars.get_contextvars()
    transaction.on_commit(with_log_context(context, lambda: _charge_recorded(payment=payment, result=result)))
    return payment


def _charge_recorded(*, payment: Payment, result: ChargeResult) -> None:
    PAYMENTS.labels("approved" if result.approved else "declined").inc()
    logger.info(
        "payment_completed",
        order_id=str(payment.order_id),
        status=payment.status,
        attempt=payment.attempt,
        amount=str(payment.amount),
        reference=result.reference,
    )


def _record_charge_outcome(*, order: Order, payment: Payment, result: ChargeResult, source: str, note: str = "") -> bool:
    """The gateway's answer to the pending ``payment``, recorded under the lock the caller holds on
    its ``order``: the attempt APPROVED or DECLINED, and the order PAID or PAYMENT_FAILED (or, being
    cancelled, its charge settled). ``note`` ends the timeline's message. False, and nothing
    written, if the attempt was decided already."""
    outcome = {
        "status": PaymentStatus.APPROVED if result.approved else PaymentStatus.DECLINED,
        "gateway_reference": result.reference,
        "decline_reason": result.decline_reason,
        "completed_at": timezone.now(),
    }
    if not Payment.objects.filter(pk=payment.pk, status=PaymentStatus.PENDING).update(**outcome):
        return False
    for name, value in outcome.items():
        setattr(payment, name, value)
    message = f"Payment approved ({result.reference})" if result.approved else f"Payment declined: {result.decline_reason}"
    message += note
    if order.status == OrderStatus.CANCELLING:
        _settle_charge_of_cancelled_order(order=order, payment=payment, message=message, source=source)
    else:
        order_services.record_payment_outcome(
            order=order, approved=result.approved, message=message, source=source, attempt=payment.attempt
        )
    return True


# --- Cancellations and refunds --------------------------------------------------------------------
# Every refund is recorded (``Refund`` in REQUESTED, with its idempotency key, and the amount
# reserved on its charge) in the transaction that asks for it, with its REFUND_REQUESTED event;
# the pipeline then calls the gateway (``refund_payment``) outside any transaction. The charge's
# ``refund_reserved`` and ``refunded_amount`` are changed with each refund under the order's lock,
# and database checks hold them within what the charge captured.

REFUND_HANDLER = "payments.refund_payment"
CANCELLATION_REFUND_REASON = "order cancelled"
# Who the pipeline says asked for a refund of a charge approved after its order was cancelled.
CANCELLATION = "cancellation"


class RequestKeyReused(Exception):
    """An Idempotency-Key already used for a different request."""


class NotCancellable(Exception):
    """The order cannot be cancelled (already cancelled, refunded in full); the message says why."""


class NotRefundable(Exception):
    """The refund cannot be made (the order is not paid, or the amount is more than remains)."""


@dataclass(frozen=True)
class CancellationOutcome:
    cancellation: Cancellation
    # True when an earlier request with this Idempotency-Key made the cancellation.
    replayed: bool = False


@dataclass(frozen=True)
class RefundRequest:
    refund: Refund
    replayed: bool = False


def refund_details(refund: Refund, **more) -> dict:
    """What a refund event carries about its refund (``events.contract.Event.refund``)."""
    return {"refund": {"id": str(refund.id), "amount": str(refund.amount), "reason": refund.reason, **more}}


def _approved_payment(order_id) -> Payment | None:
    return Payment.objects.select_for_update().filter(order_id=order_id, status=PaymentStatus.APPROVED).first()


def _remaining(payment: Payment) -> Decimal:
    """What is left of the charge to refund: captured, less every refund not failed."""
    return payment.amount - payment.refund_reserved


def _create_refund(*, order: Order, payment: Payment, amount: Decimal, reason: str, requested_by: str, source: str, **request) -> Refund:
    """Reserve ``amount`` of the charge and record the refund with its REFUND_REQUESTED event, in
    the caller's transaction on the locked order."""
    Payment.objects.filter(pk=payment.pk).update(refund_reserved=F("refund_reserved") + amount)
    payment.refund_reserved += amount
    refund_id = uuid.uuid4()
    refund = Refund.objects.create(
        id=refund_id,
        order=order,
        payment=payment,
        amount=amount,
        reason=reason[:255],
        requested_by=requested_by[:150],
        idempotency_key=f"refund:{refund_id}:1",
        **request,
    )
    order_services.announce(
        order=order,
        event_type=REFUND_REQUESTED,
        message=f"Refund of {amount} requested by {requested_by}" + (f": {reason}" if reason else ""),
        source=source,
        details=refund_details(refund),
    )
    return refund


def _key_reused(existing) -> RequestKeyReused:
    return RequestKeyReused(f"Idempotency-Key already used for a different request (order {existing.order_id})")


def _replayed_request(model, *, request_key: str | None, fingerprint: str):
    """The row an earlier request with ``request_key`` made, if any; ``RequestKeyReused`` if that
    request was a different one."""
    if not request_key:
        return None
    existing = model.objects.filter(request_key=request_key).first()
    if existing is not None and existing.request_fingerprint != fingerprint:
        raise _key_reused(existing)
    return existing


@contextmanager
def _key_taken_meanwhile(model, *, request_key: str | None):
    """Around a request's transaction: one key sent for two orders at once passes both orders'
    looks for it (each under its own order's lock), and the second insert meets the key's unique
    constraint: that request is a key reused (422), not an error."""
    try:
        yield
    except IntegrityError:
        existing = model.objects.filter(request_key=request_key).first() if request_key else None
        if existing is None:
            raise
        raise _key_reused(existing) from None


def cancel_order(
    *, order_id, requested_by: str, reason: str = "", request_key: str | None = None, source: str
) -> CancellationOutcome:
    """Cancel an order, whatever it got to: it is never charged afterwards, and every captured
    cent goes back.

    - Nothing captured and no charge under way (CREATED, PAYMENT_FAILED, parked or PROCESSING
      before its charge began): CANCELLED at once.
    - A charge under way (a pending payment attempt): CANCELLING; the charge's outcome ends the
      cancellation (``_settle_charge_of_cancelled_order``): declined, CANCELLED; approved, refunded.
    - Paid (in part refunded): CANCELLING, with a refund of what remains; CANCELLED once refunds
      leave nothing kept (``_settle_cancellation``).

    Decided under the order's lock, which the charge's attempt is also opened and recorded under,
    so whichever of the charge and the cancellation commits first, the other sees it. Repeated
    while CANCELLING, or with the first request's Idempotency-Key, it returns the first
    cancellation and does nothing more; ``NotCancellable`` otherwise for a cancelled or refunded order.
    """
    fingerprint = order_services.request_fingerprint(order_id=str(order_id), action="cancel", reason=reason)
    with _key_taken_meanwhile(Cancellation, request_key=request_key), transaction.atomic():
        order = order_services.lock_order(order_id)
        replay = _replayed_request(Cancellation, request_key=request_key, fingerprint=fingerprint)
        if replay is not None:
            return CancellationOutcome(cancellation=replay, replayed=True)
        existing = Cancellation.objects.filter(order=order).first()
        if existing is not None and order.status == OrderStatus.CANCELLING:
            return CancellationOutcome(cancellation=existing)
        if order.status not in order_services.CANCELLABLE_STATUSES:
            raise NotCancellable(f"Order {order.pk} cannot be cancelled: {order_services.WHAT_TO_DO_INSTEAD[order.status]}")
        from_status = order.status
        said = f"Cancelled by {requested_by}" + (f": {reason}" if reason else "")
        payment = _approved_payment(order.pk)
        charge_under_way = Payment.objects.filter(order=order, status=PaymentStatus.PENDING).exists()
        refund = None
        if payment is None and not charge_under_way:
            order_services.change_status(
                order=order, verb=order_services.CANCEL, to_status=OrderStatus.CANCELLED, message=said, source=source
            )
        else:
            order_services.change_status(
                order=order,
                verb=order_services.REQUEST_CANCELLATION,
                to_status=OrderStatus.CANCELLING,
                label="CANCELLATION_REQUESTED",
                message=said + (": refunding what was captured" if payment else ": resolving the charge under way"),
                source=source,
            )
            if payment is not None and _remaining(payment) > 0:
                refund = _create_refund(
                    order=order,
                    payment=payment,
                    amount=_remaining(payment),
                    reason=reason or CANCELLATION_REFUND_REASON,
                    requested_by=requested_by,
                    source=source,
                )
            if payment is not None:
                _settle_cancellation(order=order, source=source)
        if existing is not None:
            # A parked order cancelled again (its charge still unresolved): the first cancellation stands.
            return CancellationOutcome(cancellation=existing)
        cancellation = Cancellation.objects.create(
            order=order,
            reason=reason[:255],
            requested_by=requested_by[:150],
            from_status=from_status,
            answered_status=order.status,
            refund=refund,
            request_key=request_key,
            request_fingerprint=fingerprint,
        )
        transaction.on_commit(lambda: CANCELLATIONS.labels(from_status).inc())
    logger.info("order_cancelled", order_id=str(order_id), from_status=from_status, status=order.status, requested_by=requested_by)
    return CancellationOutcome(cancellation=cancellation)


def request_refund(
    *,
    order_id,
    requested_by: str,
    amount: Decimal | None = None,
    reason: str = "",
    request_key: str | None = None,
    source: str,
) -> RefundRequest:
    """Refund ``amount`` (default: all that remains) of a paid order's charge: recorded, reserved
    and announced now, given back by the pipeline. ``NotRefundable`` (nothing written) if the order
    is not paid or the amount is more than remains of the charge after the refunds before it."""
    fingerprint = order_services.request_fingerprint(order_id=str(order_id), action="refund", amount=amount, reason=reason)
    with _key_taken_meanwhile(Refund, request_key=request_key), transaction.atomic():
        order = order_services.lock_order(order_id)
        replay = _replayed_request(Refund, request_key=request_key, fingerprint=fingerprint)
        if replay is not None:
            return RefundRequest(refund=replay, replayed=True)
        if order.status not in order_services.REFUNDABLE_STATUSES:
            raise NotRefundable(f"Order {order.pk} is {order.status}, not paid: {order_services.WHAT_TO_DO_INSTEAD[order.status]}")
        payment = _approved_payment(order.pk)
        remaining = _remaining(payment)
        if remaining <= 0:
            raise NotRefundable(f"Order {order.pk}: all of its charge of {payment.amount} is refunded or being refunded")
        if amount is not None and amount > remaining:
            raise NotRefundable(f"Order {order.pk}: a refund of {amount} is more than remains of its charge ({remaining})")
        refund = _create_refund(
            order=order,
            payment=payment,
            amount=remaining if amount is None else amount,
            reason=reason,
            requested_by=requested_by,
            source=source,
            request_key=request_key,
            request_fingerprint=fingerprint,
        )
    logger.info("refund_requested", order_id=str(order_id), refund_id=str(refund.id), amount=str(refund.amount))
    return RefundRequest(refund=refund)


def _settle_charge_of_cancelled_order(*, order: Order, payment: Payment, message: str, source: str) -> None:
    """A charge under way when its order was cancelled has its outcome (recorded on ``payment`` by
    the caller, under the order's lock): declined, the cancellation is done; approved, all of it
    is refunded."""
    order_services.record_order_event(
        order_id=order.pk, status=order.status, event_type="PAYMENT_AFTER_CANCELLATION", event_id=None, message=message
    )
    if payment.status == PaymentStatus.APPROVED:
        _create_refund(
            order=order,
            payment=payment,
            amount=payment.amount,
            reason=CANCELLATION_REFUND_REASON,
            requested_by=CANCELLATION,
            source=source,
        )
    else:
        _settle_cancellation(order=order, source=source)


def _settle_cancellation(*, order: Order, source: str) -> None:
    """CANCELLING -> CANCELLED once no charge is under way, no refund is in flight and nothing of
    a charge is kept. A refund that failed keeps the order CANCELLING until an operator retries it."""
    if order.status != OrderStatus.CANCELLING:
        return
    if Payment.objects.filter(order=order, status=PaymentStatus.PENDING).exists():
        return
    if Refund.objects.filter(order=order, status=RefundStatus.REQUESTED).exists():
        return
    payment = Payment.objects.filter(order=order, status=PaymentStatus.APPROVED).first()
    kept = payment.amount - payment.refunded_amount if payment else Decimal("0")
    if kept > 0:
        return
    order_services.change_status(
        order=order,
        verb=order_services.FINISH_CANCELLATION,
        to_status=OrderStatus.CANCELLED,
        message="Cancelled: nothing is kept" if payment else "Cancelled: the charge under way was declined",
        source=source,
    )


def refund_payment(*, order_id, event_id, refund_id, source: str, gateway: PaymentGateway | None = None) -> Refund | None:
    """Give back a requested refund through the gateway and record the outcome.

    The refund (and its idempotency key) was committed when it was requested, so a retry after a
    timeout or a crash refunds under the same key: the gateway answers with the first refund
    instead of making a second. A refusal by the gateway is final for this attempt (FAILED; an
    operator may retry it as a new attempt). ``InvalidEvent`` if the database knows no such refund
    of the order.
    """
    if was_handled(handler=REFUND_HANDLER, event_id=event_id):
        return None
    refund = Refund.objects.select_related("payment").filter(pk=refund_id, order_id=order_id).first()
    if refund is None:
        raise InvalidEvent("unknown_refund", f"no refund {refund_id} of order {order_id}")
    if refund.status != RefundStatus.REQUESTED:
        logger.info("refund_skipped", order_id=str(order_id), refund_id=str(refund_id), status=refund.status)
        return None
    Refund.objects.filter(pk=refund.pk).update(gateway_calls=F("gateway_calls") + 1)
    try:
        result = (gateway or get_gateway()).refund(
            idempotency_key=refund.idempotency_key,
            charge_reference=refund.payment.gateway_reference,
            amount=refund.amount,
        )
    except GatewayUnavailable as exc:
        REFUNDS.labels("timeout" if isinstance(exc, GatewayTimeout) else "unavailable").inc()
        raise
    with transaction.atomic():
        if not claim_event(handler=REFUND_HANDLER, event_id=event_id):
            return None
        order = order_services.lock_order(order_id)
        decided = Refund.objects.filter(pk=refund.pk, status=RefundStatus.REQUESTED, attempt=refund.attempt)
        outcome = {
            "status": RefundStatus.SUCCEEDED if result.approved else RefundStatus.FAILED,
            "gateway_reference": result.reference,
            "failure_reason": result.decline_reason,
            "completed_at": timezone.now(),
        }
        if not decided.update(**outcome):
            return Refund.objects.get(pk=refund.pk)
        for name, value in outcome.items():
            setattr(refund, name, value)
        if result.approved:
            _record_refund_success(order=order, refund=refund, source=source)
        else:
            _record_refund_failure(order=order, refund=refund, source=source)
    REFUNDS.labels("succeeded" if result.approved else "declined").inc()
    if result.approved:
        REFUNDED_AMOUNT.inc(float(refund.amount))
    logger.info(
        "refund_completed",
        order_id=str(order_id),
        refund_id=str(refund.id),
        status=refund.status,
        amount=str(refund.amount),
        reference=result.reference,
    )
    return refund


def _record_refund_success(*, order: Order, refund: Refund, source: str) -> None:
    Payment.objects.filter(pk=refund.payment_id).update(refunded_amount=F("refunded_amount") + refund.amount)
    payment = Payment.objects.get(pk=refund.payment_id)
    details = refund_details(refund, reference=refund.gateway_reference)
    message = f"Refunded {refund.amount} ({refund.gateway_reference})"
    if order.status in order_services.RECORD_REFUND.sources:
        kept = payment.amount - payment.refunded_amount
        order_services.change_status(
            order=order,
            verb=order_services.RECORD_REFUND,
            to_status=OrderStatus.PARTIALLY_REFUNDED if kept > 0 else OrderStatus.REFUNDED,
            message=message,
            source=source,
            details=details,
        )
    else:
        order_services.announce(order=order, event_type=ORDER_REFUNDED, message=message, source=source, details=details)
        _settle_cancellation(order=order, source=source)


def _record_refund_failure(*, order: Order, refund: Refund, source: str) -> None:
    """The refund failed (its status and reason recorded by the caller): its amount is released
    back to the charge, and REFUND_FAILED is announced."""
    Payment.objects.filter(pk=refund.payment_id).update(refund_reserved=F("refund_reserved") - refund.amount)
    order_services.announce(
        order=order,
        event_type=REFUND_FAILED,
        message=f"Refund of {refund.amount} failed: {refund.failure_reason}",
        source=source,
        details=refund_details(refund, failure_reason=refund.failure_reason[:500]),
    )
    logger.error("refund_failed", order_id=str(order.pk), refund_id=str(refund.id), error=refund.failure_reason)


def give_up_refund(*, order_id, refund_id, error: str, original_event: dict, reason: str, source: str) -> bool:
    """The refund's step gave up after its last retry (or the reconciler after its last re-drive):
    the refund goes FAILED, its event to the dlq topic, and an operator may retry it. False if the
    refund was decided meanwhile."""
    with transaction.atomic():
        order = order_services.lock_order(order_id)
        failure = f"{reason}: {error}"[:2000]
        if not Refund.objects.filter(pk=refund_id, order=order, status=RefundStatus.REQUESTED).update(
            status=RefundStatus.FAILED, failure_reason=failure, completed_at=timezone.now()
        ):
            return False
        claim_event(handler=REFUND_HANDLER, event_id=original_event["event_id"])
        refund = Refund.objects.get(pk=refund_id)
        _record_refund_failure(order=order, refund=refund, source=source)
        enqueue_dead_letter(
            original=original_event,
            key=str(order.pk),
            reason=reason,
            error=error,
            source=source,
            correlation_id=order.correlation_id,
        )
    transaction.on_commit(lambda: REFUNDS.labels("gave_up").inc())
    return True


class NotRetryable(Exception):
    """An operator's refund retry was refused; the message says why."""


def retry_refund(*, refund_id, requested_by: str, source: str) -> Refund:
    """An operator's retry of a FAILED refund: REQUESTED again, its amount reserved again, a new
    REFUND_REQUESTED event. A refund the gateway declined is a new attempt (a new key: the gateway
    remembers its answer per key); one given up on keeps its key, for the gateway may have made it."""
    with transaction.atomic():
        refund = Refund.objects.select_related("payment").get(pk=refund_id)
        order = order_services.lock_order(refund.order_id)
        refund = Refund.objects.select_related("payment").get(pk=refund_id)
        if refund.status != RefundStatus.FAILED:
            raise NotRetryable(f"Refund {refund.pk} is {refund.status}: only a failed refund can be retried")
        payment = Payment.objects.select_for_update().get(pk=refund.payment_id)
        if refund.amount > _remaining(payment):
            raise NotRetryable(
                f"Refund {refund.pk}: {refund.amount} is more than remains of the charge ({_remaining(payment)})"
            )
        attempt = refund.attempt + 1 if refund.gateway_reference else refund.attempt
        Payment.objects.filter(pk=payment.pk).update(refund_reserved=F("refund_reserved") + refund.amount)
        Refund.objects.filter(pk=refund.pk).update(
            status=RefundStatus.REQUESTED,
            attempt=attempt,
            idempotency_key=f"refund:{refund.pk}:{attempt}",
            gateway_reference="",
            failure_reason="",
            completed_at=None,
        )
        refund.refresh_from_db()
        order_services.announce(
            order=order,
            event_type=REFUND_REQUESTED,
            message=f"Refund of {refund.amount} retried by {requested_by} (attempt {attempt})",
            source=source,
            details=refund_details(refund),
        )
    logger.info("refund_retried", order_id=str(order.pk), refund_id=str(refund.pk), attempt=attempt, requested_by=requested_by)
    return refund


# --- Charges the database lost --------------------------------------------------------------------
# A charge the provider made that no payment holds (``payments.selectors.unreconciled_money``: a
# restore to an older backup loses them) is either adopted into its order, which becomes paid as if
# the pipeline had recorded it, or refunded (what the provider did not refund of it already),
# whether or not the database knows its order. The provider's refunds of such a charge are lost too.


class NotAdoptable(Exception):
    """The charge cannot be adopted into its order; the message says why and what to do instead."""


def adopt_unmatched_charge(*, charge: MoneyMoved, refunded: Decimal, requested_by: str, source: str) -> Payment:
    """Record ``charge`` (approved at the provider, unknown to the database) as its order's approved
    payment, a new attempt under the charge's own idempotency key and reference, and move the order
    as an approved charge would (``_record_charge_outcome``): PROCESSING -> PAID. Decided under the
    order's lock; ``NotAdoptable`` (nothing written) if the database knows no such order, the order
    is paid already or has a charge under way, the amount is not the order's total, the order is in
    a status that does not become paid (a cancelled one: refund the charge instead), or the
    provider refunded some of the charge (``refunded``, in refunds the database does not know)."""
    refund_instead = "refund the charge instead"
    if refunded:
        raise NotAdoptable(f"The provider refunded {refunded} of charge {charge.reference} already: refund the rest instead")
    order_id = order_selectors.parse_order_id(charge.order_id)
    with transaction.atomic():
        try:
            order = order_services.lock_order(order_id)
        except Order.DoesNotExist:
            raise NotAdoptable(f"The database knows no order {charge.order_id!r}: {refund_instead}") from None
        if Payment.objects.filter(idempotency_key=charge.idempotency_key).exists():
            raise NotAdoptable(f"Charge {charge.reference} is recorded as a payment already")
        attempts = Payment.objects.filter(order=order)
        if attempts.filter(status=PaymentStatus.APPROVED).exists():
            raise NotAdoptable(f"Order {order.pk} is paid by another charge: {refund_instead}")
        if attempts.filter(status=PaymentStatus.PENDING).exists():
            raise NotAdoptable(
                f"Order {order.pk} has a charge under way: wait for its outcome; if it is approved, {refund_instead}"
            )
        if order.status not in order_services.RECORD_PAYMENT.sources:
            raise NotAdoptable(
                f"Order {order.pk} is {order.status}, and only a {OrderStatus.PROCESSING} order becomes paid "
                f"({order_services.WHAT_TO_DO_INSTEAD[order.status]}); or {refund_instead}"
            )
        if charge.amount != order.total_amount:
            raise NotAdoptable(
                f"Charge {charge.reference} took {charge.amount}, not the order's total {order.total_amount}: {refund_instead}"
            )
        payment = Payment.objects.create(
            order=order,
            attempt=attempts.count() + 1,
            idempotency_key=charge.idempotency_key,
            amount=charge.amount,
            currency=settings.PAYMENTS["currency"],
        )
        _record_charge_outcome(
            order=order,
            payment=payment,
            result=ChargeResult(approved=True, reference=charge.reference),
            source=source,
            note=f", adopted from the provider's records by {requested_by}",
        )
    logger.info(
        "unmatched_charge_adopted",
        order_id=str(order.pk),
        attempt=payment.attempt,
        reference=charge.reference,
        requested_by=requested_by,
    )
    return payment


def unmatched_charge_refund_key(charge_reference: str) -> str:
    """One key per charge: asking again, or retrying after a timeout, is the same refund."""
    return f"unmatched-charge-refund:{charge_reference}"


def refund_unmatched_charge(
    *, charge: MoneyMoved, refunded: Decimal, requested_by: str, gateway: PaymentGateway | None = None
) -> UnmatchedChargeRefund:
    """Give back what is left of ``charge`` (approved at the provider, unknown to the database) after
    ``refunded`` (what the provider's refunds of it the database does not know gave back), whether
    or not the database knows its order; ``NotRefundable`` if nothing is left. Recorded (REQUESTED, with its key) before the gateway is
    called outside any transaction, then its outcome: SUCCEEDED, or FAILED with the gateway's
    reason. Asked again, a SUCCEEDED or FAILED refund is returned as it is, and a REQUESTED one (the
    gateway did not answer) is asked of the gateway again under the same key. ``GatewayTimeout`` and
    ``GatewayUnavailable`` propagate, leaving it REQUESTED. ``gateway``: the configured one unless given."""
    if refunded >= charge.amount:
        raise NotRefundable(f"The provider refunded all of charge {charge.reference} already ({refunded})")
    with transaction.atomic():
        refund = UnmatchedChargeRefund.objects.get_or_create(
            charge_reference=charge.reference,
            defaults={
                "order_id": charge.order_id,
                "amount": charge.amount - refunded,
                "idempotency_key": unmatched_charge_refund_key(charge.reference),
                "requested_by": requested_by[:150],
            },
        )[0]
    if refund.status != RefundStatus.REQUESTED:
        return refund
    UnmatchedChargeRefund.objects.filter(pk=refund.pk).update(gateway_calls=F("gateway_calls") + 1)
    try:
        result = (gateway or get_gateway()).refund(
            idempotency_key=refund.idempotency_key, charge_reference=refund.charge_reference, amount=refund.amount
        )
    except GatewayUnavailable as exc:
        REFUNDS.labels("timeout" if isinstance(exc, GatewayTimeout) else "unavailable").inc()
        raise
    with transaction.atomic():
        outcome = {
            "status": RefundStatus.SUCCEEDED if result.approved else RefundStatus.FAILED,
            "gateway_reference": result.reference,
            "failure_reason": result.decline_reason,
            "completed_at": timezone.now(),
        }
        decided_now = UnmatchedChargeRefund.objects.filter(pk=refund.pk, status=RefundStatus.REQUESTED).update(**outcome)
        refund.refresh_from_db()
        order_id = order_selectors.parse_order_id(refund.order_id)
        order = Order.objects.filter(pk=order_id).first() if order_id else None
        if decided_now and order is not None:
            said = f"refunded ({refund.gateway_reference})" if result.approved else f"refund failed: {refund.failure_reason}"
            order_services.record_order_event(
                order_id=order.pk,
                status=order.status,
                event_type="UNMATCHED_CHARGE_REFUND",
                event_id=None,
                message=f"Charge {refund.charge_reference} of {refund.amount}, unknown to the database, {said} "
                f"(asked by {requested_by})",
            )
    if decided_now:
        REFUNDS.labels("succeeded" if result.approved else "declined").inc()
        if result.approved:
            REFUNDED_AMOUNT.inc(float(refund.amount))
    logger.info(
        "unmatched_charge_refunded",
        charge_reference=refund.charge_reference,
        order_id=refund.order_id,
        status=refund.status,
        amount=str(refund.amount),
        requested_by=requested_by,
    )
    return refund
