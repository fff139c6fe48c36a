"""How a step handles the orders of one batch together while each order's outcome stays its own."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import structlog
from django.db import close_old_connections, transaction

logger = structlog.get_logger(__name__)
T = TypeVar("T")
I = TypeVar("I")


def apply_together(changes: Sequence[Callable[[], T]]) -> list[T | Exception]:
    """Run every change (writes in the caller's transaction) in one transaction: one commit for
    all. Should any of them fail, that transaction is rolled back and each change is run again in
    a transaction of its own, so that one change's failure is its own. Returns each change's
    result, or the exception it raised, in the order of ``changes``."""
    return apply_batch(changes, lambda some: [change() for change in some])


def apply_batch(items: Sequence[I], change: Callable[[Sequence[I]], list[T]]) -> list[T | Exception]:
    """``change`` (writes in the caller's transaction, returning a result per item) applied to all
    ``items`` in one transaction: one statement per kind of write and one commit for all. Should
    it fail, that transaction is rolled back and ``change`` is applied to each item in a
    transaction of its own, so that one item's failure is its own. Returns each item's result,
    or the exception it raised, in the order of ``items``."""
    if len(items) <= 1:  # on its own already
        return [outcome_of(_in_transaction(lambda: change(items)[0]))] if items else []
    try:
        with transaction.atomic():
            return change(items)
    except Exception as exc:  # noqa: BLE001 - whichever it was, each item is tried on its own next
        logger.info("batch_applied_one_by_one", changes=len(items), error=f"{type(exc).__name__}: {exc}")
    return [outcome_of(_in_transaction(lambda item=item: change([item])[0])) for item in items]


def failures(outcomes: Sequence[object]) -> dict[int, Exception]:
    """The exceptions among ``outcomes`` (``apply_together``'s, ``call_concurrently``'s), by position."""
    return {position: outcome for position, outcome in enumerate(outcomes) if isinstance(outcome, Exception)}


def _in_transaction(change: Callable[[], T]) -> Callable[[], T]:
    def applied() -> T:
        with transaction.atomic():
            return change()

    return applied


def with_log_context(context: dict, call: Callable[[], T]) -> Callable[[], T]:
    """``call``, its log lines bound to ``context`` (the ids of the order it is about)."""

    def bound() -> T:
        with structlog.contextvars.bound_contextvars(**context):
            return call()

    return bound


_executors: dict[int, ThreadPoolExecutor] = {}
_executors_lock = threading.Lock()


def call_concurrently(calls: Sequence[Callable[[], T]], *, limit: int) -> list[T | Exception]:
    """Each call's result, or the exception it raised, in the order of ``calls``: at most ``limit``
    of them at a time in this process, every batch's calls sharing one pool per limit (a lone call,
    or a limit of 1, runs in the caller's thread). A call runs in a copy of the caller's context
    (its log fields), and touches a database on its thread's own connection."""
    if len(calls) <= 1 or limit <= 1:
        return [outcome_of(call) for call in calls]
    with _executors_lock:
        if limit not in _executors:
            _executors[limit] = ThreadPoolExecutor(max_workers=limit, thread_name_prefix="batch-call")
        executor = _executors[limit]
    futures = [executor.submit(contextvars.copy_context().run, _outcome_in_pool, call) for call in calls]
    return [future.result() for future in futures]


def outcome_of(call: Callable[[], T]) -> T | Exception:
    try:
        return call()
    except Exception as exc:  # noqa: BLE001 - the caller decides what each failure means
        return exc


def _outcome_in_pool(call: Callable[[], T]) -> T | Exception:
    try:
        return outcome_of(call)
    finally:
        # A connection the call broke (the database restarted, say) is not handed to the next call.
        close_old_connections()
