"""The payment provider as tests configure it: the simulator approving every charge and refund and
always answering, as the process's gateway (``settings.PAYMENTS``), and a provider's adapter that
cannot list its records."""

from __future__ import annotations

from payments.gateway import ChargeResult, RefundResult

# {**settings.PAYMENTS, **APPROVING_SIMULATOR}: what is made is decided by the ledger alone.
APPROVING_SIMULATOR = {
    "gateway_class": "payments.simulator.SimulatedGateway",
    "success_rate": 1.0,
    "timeout_rate": 0.0,
    "refund_timeout_rate": 0.0,
    "refund_failure_rate": 0.0,
    "seed": "recon",
}


class ChargeOnlyGateway:
    """A provider's adapter that cannot list its records (no ``payments.gateway.ProviderRecords``)."""

    def charge(self, *, idempotency_key, order_id, amount, currency):
        return ChargeResult(approved=True, reference="x")

    def refund(self, *, idempotency_key, charge_reference, amount):
        return RefundResult(approved=True, reference="y")


CHARGE_ONLY_GATEWAY = f"{__name__}.ChargeOnlyGateway"
