"""The payment gateway: the interface the payment service calls, its results and errors, and the
configured gateway of this process.

A provider's adapter is a class that implements ``PaymentGateway`` and is named by the setting
``payments.gateway_class`` (``PAYMENTS_GATEWAY_CLASS``); it is built with no arguments, once per
process and setting, and reads its own configuration (API keys from the environment, say). The
local default is ``payments.simulator.SimulatedGateway``, which moves no money: production refuses
it unless ``PAYMENTS_ALLOW_SIMULATOR=true`` (orders_project/security.py).

The contract an adapter keeps:

- **Idempotency keys.** ``charge`` and ``refund`` take an ``idempotency_key``; every call with the
  same key is the same single operation at the provider, and answers with the outcome of the
  first (a provider's own idempotency keys, or its lookup by key). The payment service commits the
  key before it calls, so retrying after a timeout or a crash never charges or refunds twice.
- **Declines are results.** A card declined, a refund refused (more than was captured, an unknown
  charge) is an answer: a result with ``approved=False`` and the provider's reason, never an
  exception.
- **Timeouts and unavailability are ``TransientError``s.** No answer in time, a connection
  refused, a 5xx or a rate limit: raise ``GatewayTimeout`` (the call may have taken effect) or
  ``GatewayUnavailable`` (it did not reach the provider, or the provider says it failed). The
  pipeline retries them under the same key with backoff, and parks the order after the last
  retry. Any other exception is a bug: not retried, the order is parked at once.
- **No transaction of ours is open around the call.** The service calls the gateway between its
  transactions (payments/services.py), so an adapter may take its time, up to its own timeout.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol, runtime_checkable

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from common.errors import TransientError


class GatewayUnavailable(TransientError):
    """The gateway could not be reached or failed on its side; retry with the same key."""


class GatewayTimeout(GatewayUnavailable):
    """The gateway did not answer in time; the operation may or may not have happened."""


@dataclass(frozen=True)
class ChargeResult:
    approved: bool
    # The provider's id of the charge: what a refund names (``charge_reference``).
    reference: str
    decline_reason: str = ""


@dataclass(frozen=True)
class RefundResult:
    approved: bool
    # The provider's id of the refund.
    reference: str
    decline_reason: str = ""


@runtime_checkable
class PaymentGateway(Protocol):
    """What a provider's adapter implements (the module's docstring gives the contract)."""

    def charge(self, *, idempotency_key: str, order_id: str, amount: Decimal, currency: str) -> ChargeResult:
        """Take ``amount`` of ``currency`` for the order, once per ``idempotency_key``."""
        ...

    def refund(self, *, idempotency_key: str, charge_reference: str, amount: Decimal) -> RefundResult:
        """Give back ``amount`` (in the charge's currency) of the charge ``charge_reference``, once per
        ``idempotency_key``; declined (a result) if it would take the charge's refunds over what it
        captured."""
        ...


@dataclass(frozen=True)
class MoneyMoved:
    """A charge or refund the provider made (approved): its side of the books."""

    kind: str  # CHARGE or REFUND
    idempotency_key: str
    # The provider's id of it; a refund also names its charge.
    reference: str
    amount: Decimal
    # The order a charge was for (its metadata at the provider); a refund's comes from its charge.
    order_id: str = ""
    charge_reference: str = ""
    # When the provider made it, if its listing says.
    moved_at: dt.datetime | None = None


CHARGE, REFUND = "charge", "refund"


@runtime_checkable
class ProviderRecords(Protocol):
    """What a gateway that can list its records implements, for ``reconcile_payments``: the
    provider's list of charges and refunds (Stripe's ``/v1/charges`` and ``/v1/refunds``, say)."""

    def money_moved(self, *, since: dt.datetime) -> list[MoneyMoved]:
        """Every charge and refund the provider approved for this shop since ``since``."""
        ...


SETTING = "PAYMENTS_GATEWAY_CLASS"


def gateway_class(path: str | None = None) -> type:
    """The class ``path`` (the setting by default) names, checked to implement the interface."""
    path = settings.PAYMENTS["gateway_class"] if path is None else path
    try:
        cls = import_string(path)
    except ImportError as exc:
        raise ImproperlyConfigured(f"{SETTING}={path!r} cannot be imported: {exc}") from exc
    missing = [name for name in ("charge", "refund") if not callable(getattr(cls, name, None))]
    if not isinstance(cls, type) or missing:
        raise ImproperlyConfigured(
            f"{SETTING}={path!r} is not a payment gateway class (payments.gateway.PaymentGateway): "
            f"it has no {' or '.join(missing) or 'class'}"
        )
    return cls


_lock = threading.Lock()
_built: tuple[tuple, PaymentGateway] | None = None


def get_gateway() -> PaymentGateway:
    """The gateway of this process: the configured class, built once for the current
    ``settings.PAYMENTS`` and built again when they change (``override_settings``, the ``settings``
    fixture), so tests swap it through settings, never through a cache."""
    global _built
    key = tuple(sorted((name, repr(value)) for name, value in settings.PAYMENTS.items()))
    built = _built
    if built is not None and built[0] == key:
        return built[1]
    with _lock:
        if _built is None or _built[0] != key:
            _built = (key, gateway_class()())
        return _built[1]
