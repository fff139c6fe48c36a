"""The simulated payment gateway: the local default, which moves no money.

It stands in for a provider in development, the tests, the benchmark and the demo stack: it keeps a
provider's ledger of its own (``SimulatedCharge``, ``SimulatedRefund``), honours idempotency keys
as a provider does, and fails as networks do. Production refuses it unless
``PAYMENTS_ALLOW_SIMULATOR=true`` (orders_project/security.py): a shop running it charges nobody.

Its knobs are in config.yaml's ``payments`` section (a real adapter ignores them):
``success_rate`` of charges approved (85%, as the design says), ``timeout_rate`` of charges that
time out, ``refund_timeout_rate`` of refunds that time out and ``refund_failure_rate`` of refunds
refused as unavailable (2% each by default, so that tests and the demo meet them), ``seed`` (the same seed and key always give the same outcome; empty: a new one per process),
``latency_ms`` of simulated network time.

Its ledger lives in a database of its own, the alias ``provider`` (``simulator_database_url``), which
``SimulatedProviderRouter`` sends its two models to: our transactions never hold it, and restoring
the service's database to a backup leaves it as a real provider's would be.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
import secrets
import time
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, connections, transaction
from django.db.models import F, Sum
from django.utils import timezone

from payments.gateway import CHARGE, REFUND, ChargeResult, GatewayTimeout, GatewayUnavailable, MoneyMoved, RefundResult
from payments.models import SimulatedCharge, SimulatedRefund

# The settings.DATABASES alias of the ledger.
PROVIDER_DATABASE = "provider"
LEDGER_MODELS = (SimulatedCharge, SimulatedRefund)


class SimulatedProviderRouter:
    """The ledger's models to the provider's database, and nothing else there."""

    def db_for_read(self, model, **hints):
        return PROVIDER_DATABASE if model in LEDGER_MODELS else None

    db_for_write = db_for_read

    def allow_migrate(self, db, app_label, model_name=None, **hints):
        is_ledger = app_label == "payments" and model_name in {model._meta.model_name for model in LEDGER_MODELS}
        return is_ledger == (db == PROVIDER_DATABASE)


class SimulatedGateway:
    """Approves ``success_rate`` of charges; refunds whatever the charge still has captured;
    ``timeout_rate`` of charges and ``refund_timeout_rate`` of refunds time out, and
    ``refund_failure_rate`` of refund calls fail as unavailable before anything is recorded.

    Outcomes are drawn from ``seed`` and the idempotency key, so a run with a fixed seed is
    reproducible. A timeout is simulated after the operation is recorded, the hard case: the
    caller does not know whether it happened and must retry with the same key. Arguments left out
    come from the settings (``PAYMENTS``), as ``get_gateway()`` builds it.
    """

    DECLINE_REASON = "Card declined by the simulated gateway"
    UNKNOWN_CHARGE = "No approved charge with this reference"
    OVER_CAPTURED = "Refund exceeds what remains of the charge"

    def __init__(
        self,
        *,
        success_rate: float | None = None,
        timeout_rate: float | None = None,
        seed: str | None = None,
        latency_ms: int | None = None,
        refund_timeout_rate: float | None = None,
        refund_failure_rate: float | None = None,
    ):
        given = (success_rate, timeout_rate, seed, latency_ms, refund_timeout_rate, refund_failure_rate)
        knobs = settings.PAYMENTS if None in given else {}
        self.success_rate = knobs["success_rate"] if success_rate is None else success_rate
        self.timeout_rate = knobs["timeout_rate"] if timeout_rate is None else timeout_rate
        self.refund_timeout_rate = knobs["refund_timeout_rate"] if refund_timeout_rate is None else refund_timeout_rate
        self.refund_failure_rate = knobs["refund_failure_rate"] if refund_failure_rate is None else refund_failure_rate
        # Refund calls refused per key: each draws anew (a refused call leaves no ledger row to count).
        self._refused_calls: dict[str, int] = {}
        self.seed = (knobs["seed"] if seed is None else seed) or secrets.token_hex(8)
        self.latency_ms = knobs["latency_ms"] if latency_ms is None else latency_ms

    def _draw(self, *parts: object) -> float:
        return random.Random(":".join(map(str, (self.seed, *parts)))).random()

    def would_approve(self, *, idempotency_key: str) -> bool:
        return self._draw("approve", idempotency_key) < self.success_rate

    def _answer(self, *, operation: str, idempotency_key: str, calls: int) -> None:
        """The network's part, after the ledger is written: the latency, then perhaps no answer."""
        if self.latency_ms:
            time.sleep(self.latency_ms / 1000)
        # Charges draw as they always did (a seeded run keeps its timeouts); refunds apart from them.
        draw = "timeout" if operation == "charge" else f"{operation}-timeout"
        rate = self.timeout_rate if operation == "charge" else self.refund_timeout_rate
        if self._draw(draw, idempotency_key, calls) < rate:
            raise GatewayTimeout(f"Simulated gateway timed out on the {operation} {idempotency_key}")

    def charge(self, *, idempotency_key: str, order_id: str, amount: Decimal, currency: str) -> ChargeResult:
        approved = self.would_approve(idempotency_key=idempotency_key)
        approved, reference, decline_reason, calls = self._record_charge(
            idempotency_key=idempotency_key,
            order_id=str(order_id),
            amount=amount,
            currency=currency,
            approved=approved,
            reference=_reference("sim_", idempotency_key),
            decline_reason="" if approved else self.DECLINE_REASON,
        )
        self._answer(operation="charge", idempotency_key=idempotency_key, calls=calls)
        return ChargeResult(approved=approved, reference=reference, decline_reason=decline_reason)

    def refund(self, *, idempotency_key: str, charge_reference: str, amount: Decimal) -> RefundResult:
        amount = Decimal(amount)
        if amount <= 0:
            raise ValueError(f"a refund's amount must be positive, not {amount}")
        refused = self._refused_calls.get(idempotency_key, 0)
        if self._draw("refund-unavailable", idempotency_key, refused) < self.refund_failure_rate:
            self._refused_calls[idempotency_key] = refused + 1
            raise GatewayUnavailable(f"Simulated gateway unavailable for the refund {idempotency_key}")
        refund = self._record_refund(idempotency_key=idempotency_key, charge_reference=charge_reference, amount=amount)
        self._answer(operation="refund", idempotency_key=idempotency_key, calls=refund.calls)
        return RefundResult(approved=refund.approved, reference=refund.reference, decline_reason=refund.decline_reason)

    @staticmethod
    def _record_charge(**charge) -> tuple[bool, str, str, int]:
        """The ledger row for the key: created on the first call, its call count raised on the next
        ones, in one statement (SQLite 3.35+, PostgreSQL); returns what the first call decided."""
        table = SimulatedCharge._meta.db_table
        connection = connections[PROVIDER_DATABASE]
        amount = SimulatedCharge._meta.get_field("amount").get_db_prep_save(charge["amount"], connection)
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} (idempotency_key, order_id, amount, currency, approved, reference, "
                "decline_reason, calls, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, 1, %s) "
                f"ON CONFLICT (idempotency_key) DO UPDATE SET calls = {table}.calls + 1 "
                "RETURNING approved, reference, decline_reason, calls",
                [
                    charge["idempotency_key"],
                    charge["order_id"],
                    amount,
                    charge["currency"],
                    charge["approved"],
                    charge["reference"],
                    charge["decline_reason"],
                    timezone.now(),
                ],
            )
            approved, reference, decline_reason, calls = cursor.fetchone()
        return bool(approved), reference, decline_reason, calls

    @classmethod
    def _record_refund(cls, *, idempotency_key: str, charge_reference: str, amount: Decimal) -> SimulatedRefund:
        """The ledger row for the key, decided on the first call and counted on the next ones.

        The charge's row is locked first (SQLite's writers queue for the database anyway), so
        concurrent refunds of one charge are decided one after the other against what the ones
        before them left: their approved sum never passes what the charge captured.
        """
        try:
            return cls._decide_refund(idempotency_key=idempotency_key, charge_reference=charge_reference, amount=amount)
        except IntegrityError:  # a concurrent call with the key (of an unknown charge) recorded it first
            return cls._decide_refund(idempotency_key=idempotency_key, charge_reference=charge_reference, amount=amount)

    @classmethod
    def _decide_refund(cls, *, idempotency_key: str, charge_reference: str, amount: Decimal) -> SimulatedRefund:
        with transaction.atomic(using=PROVIDER_DATABASE):
            charge = (
                SimulatedCharge.objects.select_for_update().filter(reference=charge_reference, approved=True).first()
            )
            existing = SimulatedRefund.objects.filter(idempotency_key=idempotency_key).first()
            if existing is not None:
                SimulatedRefund.objects.filter(pk=existing.pk).update(calls=F("calls") + 1)
                existing.calls += 1
                return existing
            if charge is None:
                decline_reason = cls.UNKNOWN_CHARGE
            else:
                refunded = SimulatedRefund.objects.filter(
                    charge_reference=charge_reference, approved=True
                ).aggregate(total=Sum("amount"))["total"] or Decimal("0")
                decline_reason = cls.OVER_CAPTURED if refunded + amount > charge.amount else ""
            return SimulatedRefund.objects.create(
                idempotency_key=idempotency_key,
                charge_reference=charge_reference,
                amount=amount,
                approved=not decline_reason,
                reference=_reference("simr_", idempotency_key),
                decline_reason=decline_reason,
                calls=1,
            )

    def money_moved(self, *, since: dt.datetime) -> list[MoneyMoved]:
        charges = SimulatedCharge.objects.filter(approved=True, created_at__gte=since)
        refunds = SimulatedRefund.objects.filter(approved=True, created_at__gte=since)
        order_of = dict(
            SimulatedCharge.objects.filter(reference__in=refunds.values("charge_reference")).values_list("reference", "order_id")
        )
        return [
            *(
                MoneyMoved(
                    kind=CHARGE, idempotency_key=key, reference=reference, amount=amount, order_id=order_id, moved_at=moved_at
                )
                for key, reference, amount, order_id, moved_at in charges.values_list(
                    "idempotency_key", "reference", "amount", "order_id", "created_at"
                )
            ),
            *(
                MoneyMoved(
                    kind=REFUND,
                    idempotency_key=key,
                    reference=reference,
                    amount=amount,
                    order_id=order_of.get(charge_reference, ""),
                    charge_reference=charge_reference,
                    moved_at=moved_at,
                )
                for key, reference, amount, charge_reference, moved_at in refunds.values_list(
                    "idempotency_key", "reference", "amount", "charge_reference", "created_at"
                )
            ),
        ]


def _reference(prefix: str, idempotency_key: str) -> str:
    return prefix + hashlib.sha256(idempotency_key.encode()).hexdigest()[:20]
