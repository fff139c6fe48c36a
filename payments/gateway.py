"""Payment gateways: the interface the payment service calls, and the simulated one.

A gateway must honour idempotency keys: the same key always yields the same single charge,
however many times it is called. That is what makes retrying after a timeout safe.
"""

from __future__ import annotations

import hashlib
import random
import secrets
import time
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Protocol

from django.conf import settings
from django.db import connection
from django.utils import timezone

from common.errors import TransientError
from payments.models import SimulatedCharge


class GatewayTimeout(TransientError):
    """The gateway did not answer in time; the charge may or may not have happened."""


@dataclass(frozen=True)
class ChargeResult:
    approved: bool
    reference: str
    decline_reason: str = ""


class PaymentGateway(Protocol):
    def charge(self, *, idempotency_key: str, amount: Decimal, currency: str) -> ChargeResult: ...


class SimulatedGateway:
    """Approves ``success_rate`` of charges (85% by default); ``timeout_rate`` of calls time out.

    Outcomes are drawn from ``seed`` and the idempotency key, so a run with a fixed seed is
    reproducible. A timeout is simulated after the charge is recorded, the hard case: the
    caller does not know whether it was charged and must retry with the same key.
    """

    DECLINE_REASON = "Card declined by the simulated gateway"

    def __init__(self, *, success_rate: float, timeout_rate: float, seed: str, latency_ms: int = 0):
        self.success_rate = success_rate
        self.timeout_rate = timeout_rate
        self.seed = seed
        self.latency_ms = latency_ms

    def _draw(self, *parts: object) -> float:
        return random.Random(":".join(map(str, (self.seed, *parts)))).random()

    def would_approve(self, *, idempotency_key: str) -> bool:
        return self._draw("approve", idempotency_key) < self.success_rate

    def charge(self, *, idempotency_key: str, amount: Decimal, currency: str) -> ChargeResult:
        approved = self.would_approve(idempotency_key=idempotency_key)
        reference = "sim_" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:20]
        approved, reference, decline_reason, calls = self._record(
            idempotency_key=idempotency_key,
            amount=amount,
            currency=currency,
            approved=approved,
            reference=reference,
            decline_reason="" if approved else self.DECLINE_REASON,
        )
        if self.latency_ms:
            time.sleep(self.latency_ms / 1000)
        if self._draw("timeout", idempotency_key, calls) < self.timeout_rate:
            raise GatewayTimeout(f"Simulated gateway timed out on {idempotency_key}")
        return ChargeResult(approved=approved, reference=reference, decline_reason=decline_reason)

    @staticmethod
    def _record(**charge) -> tuple[bool, str, str, int]:
        """The ledger row for the key: created on the first call, its call count raised on the next
        ones, in one statement (SQLite 3.35+, PostgreSQL); returns what the first call decided."""
        table = SimulatedCharge._meta.db_table
        amount = SimulatedCharge._meta.get_field("amount").get_db_prep_save(charge["amount"], connection)
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} (idempotency_key, amount, currency, approved, reference, decline_reason, calls, "
                "created_at) VALUES (%s, %s, %s, %s, %s, %s, 1, %s) ON CONFLICT (idempotency_key) "
                f"DO UPDATE SET calls = {table}.calls + 1 RETURNING approved, reference, decline_reason, calls",
                [
                    charge["idempotency_key"],
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


@lru_cache(maxsize=1)
def _configured_gateway(success_rate: float, timeout_rate: float, seed: str, latency_ms: int) -> SimulatedGateway:
    return SimulatedGateway(
        success_rate=success_rate, timeout_rate=timeout_rate, seed=seed or secrets.token_hex(8), latency_ms=latency_ms
    )


def get_gateway() -> PaymentGateway:
    config = settings.PAYMENTS
    return _configured_gateway(config["success_rate"], config["timeout_rate"], config["seed"], config["latency_ms"])
