"""The provider's view against the database's: `python manage.py reconcile_payments` and the
reconciler's check list what the provider moved that the database does not know (what a restore to
an older backup loses), against the simulated provider's real ledger."""

from __future__ import annotations

import datetime as dt
import io
import json

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from prometheus_client import REGISTRY

from devtools.harness.provider import APPROVING_SIMULATOR, CHARGE_ONLY_GATEWAY, ChargeOnlyGateway
from payments.models import Payment, Refund, SimulatedCharge, SimulatedRefund
from payments.selectors import CHARGE_WITHOUT_PAYMENT, REFUND_UNKNOWN
from payments.simulator import SimulatedGateway
from recovery.provider_records import check_provider_records

pytestmark = pytest.mark.django_db
GATEWAY = SimulatedGateway(success_rate=1.0, timeout_rate=0.0, refund_timeout_rate=0.0, refund_failure_rate=0.0, seed="recon")


def reconcile_payments(*args: str) -> tuple[list[dict], str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("reconcile_payments", *args, stdout=out, stderr=err)
    return [json.loads(line) for line in out.getvalue().splitlines()], err.getvalue()


def test_when_the_books_agree_nothing_is_listed(refunded, settings):
    settings.PAYMENTS = {**settings.PAYMENTS, **APPROVING_SIMULATOR}
    lines, summary = reconcile_payments()
    assert lines == []
    assert "2 charges and refunds at the provider, 0 unknown to the database" in summary


def test_what_a_restore_lost_is_listed_one_json_line_each(refunded, settings):
    settings.PAYMENTS = {**settings.PAYMENTS, **APPROVING_SIMULATOR}
    payment = refunded.payment
    # What a restore to a backup taken before the charge does to the database, not to the provider.
    Refund.objects.all().delete()
    Payment.objects.all().delete()

    lines, _summary = reconcile_payments()

    charge = SimulatedCharge.objects.get()
    refund = SimulatedRefund.objects.get()
    assert sorted(lines, key=lambda line: line["kind"]) == [
        {
            "kind": CHARGE_WITHOUT_PAYMENT,
            "reference": charge.reference,
            "order_id": str(refunded.order_id),
            "amount": "30.03",
            "idempotency_key": payment.idempotency_key,
        },
        {
            "kind": REFUND_UNKNOWN,
            "reference": refund.reference,
            "order_id": str(refunded.order_id),
            "amount": "10.00",
            "idempotency_key": refund.idempotency_key,
            "charge_reference": charge.reference,
        },
    ]


def test_only_the_days_asked_for_are_looked_at(refunded, settings):
    settings.PAYMENTS = {**settings.PAYMENTS, **APPROVING_SIMULATOR}
    Refund.objects.all().delete()
    SimulatedRefund.objects.update(created_at=timezone.now() - dt.timedelta(days=3))
    assert [line["kind"] for line in reconcile_payments("--days", "4")[0]] == [REFUND_UNKNOWN]
    assert reconcile_payments("--days", "2")[0] == []


def test_a_gateway_that_cannot_list_its_records_is_refused_with_the_reason(settings):
    settings.PAYMENTS = {**settings.PAYMENTS, "gateway_class": CHARGE_ONLY_GATEWAY}
    with pytest.raises(CommandError, match="ChargeOnlyGateway cannot list the provider's records"):
        reconcile_payments()
    assert check_provider_records(gateway=ChargeOnlyGateway(), since=timezone.now()) is None


def test_the_reconcilers_check_counts_them_for_the_metric(refunded):
    since = timezone.now() - dt.timedelta(days=1)
    assert check_provider_records(gateway=GATEWAY, since=since) == {}
    assert REGISTRY.get_sample_value("payments_unreconciled", {"kind": CHARGE_WITHOUT_PAYMENT}) == 0

    Refund.objects.all().delete()
    Payment.objects.all().delete()
    assert check_provider_records(gateway=GATEWAY, since=since) == {CHARGE_WITHOUT_PAYMENT: 1, REFUND_UNKNOWN: 1}
    assert REGISTRY.get_sample_value("payments_unreconciled", {"kind": CHARGE_WITHOUT_PAYMENT}) == 1
    assert REGISTRY.get_sample_value("payments_unreconciled", {"kind": REFUND_UNKNOWN}) == 1
