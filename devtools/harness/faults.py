"""The fault suites' table (test_faults.py on PostgreSQL and Redis, test_faults_local.py on the
local default): the orders they post, the row of each fault and what the pipeline absorbed."""

from __future__ import annotations

from typing import Any

from django.db.models import Sum

from devtools.harness.load import OrderLoad
from events.models import InboxEntry
from payments.models import SimulatedCharge
from recovery.models import Redrive

# The rows of the faults run in this session; conftest.py prints them as the fault table.
FAULT_REPORT: list[dict[str, Any]] = []

FAULT_COLUMNS = [
    ("fault", "fault"),
    ("posted", "orders posted"),
    ("completed", "orders completed"),
    ("duplicates", "duplicates"),
    ("lost", "lost"),
    ("recover_s", "time to recover (s)"),
    ("redriven", "orders re-driven by the reconciler"),
    ("redeliveries", "redeliveries absorbed"),
    ("replayed_charges", "charges replayed under their key"),
    ("retried_posts", "POSTs retried by clients"),
]


def fault_table(rows: list[dict[str, Any]]) -> str:
    """The fault suite's results as a Markdown table."""
    lines = ["| " + " | ".join(title for _key, title in FAULT_COLUMNS) + " |"]
    lines.append("|" + "|".join(" --- " for _ in FAULT_COLUMNS) + "|")
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(key, "")) for key, _title in FAULT_COLUMNS) + " |")
    return "\n".join(lines)


def fault_order_body(index: int) -> dict[str, Any]:
    """The orders the fault suites post: a few customers, two items, varying quantities."""
    return {
        "user_id": f"fault_user_{index % 7}",
        "email": f"fault{index % 7}@example.com",
        "items": [
            {"product_id": "prod_001", "product_name": "Premium Widget", "quantity": 1 + index % 3, "price": "29.99"},
            {"product_id": "prod_002", "product_name": "Standard Widget", "quantity": 1, "price": "15.99"},
        ],
    }


def fault_row(*, name: str, load: OrderLoad, result: dict[str, Any], recover_s: float, redelivered_before: int) -> dict[str, Any]:
    """The fault table's row (``FAULT_COLUMNS``) of an audited fault."""
    return {
        "fault": name,
        "posted": len(load.accepted) + len(load.unaccepted),
        "completed": result["completed"],
        "duplicates": result["duplicates"],
        "lost": result["lost"] + len(load.unaccepted),
        "recover_s": recover_s,
        "redriven": len(redriven_orders(load.accepted)),
        "redeliveries": inbox_redeliveries() - redelivered_before,
        "replayed_charges": replayed_charges(load.accepted),
        "retried_posts": load.failed_attempts,
    }


def inbox_redeliveries() -> int:
    """Events handlers received again after applying them (each changed nothing)."""
    return InboxEntry.objects.aggregate(n=Sum("redeliveries"))["n"] or 0


def redriven_orders(order_ids: list[str]) -> set[str]:
    """Those of the orders the reconciler re-drove (recovery.models.Redrive)."""
    return {
        str(order_id)
        for order_id in Redrive.objects.filter(order_id__in=order_ids, requested_by="reconciler").values_list(
            "order_id", flat=True
        )
    }


def replayed_charges(order_ids: list[str]) -> int:
    """Gateway calls repeated for one payment attempt (a worker died or timed out mid-charge)."""
    return SimulatedCharge.objects.filter(
        calls__gt=1, idempotency_key__in=[f"{order_id}:1" for order_id in order_ids]
    ).count()
