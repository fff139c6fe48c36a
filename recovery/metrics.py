"""The reconciler's metrics: served by its own process, except operator re-drives (web)."""

from prometheus_client import Counter, Gauge

from payments.selectors import UNRECONCILED_KINDS
from recovery.models import RedriveReason

# The tables recovery.retention.purge_history deletes old rows from (the label of ROWS_PURGED).
PURGED_TABLES = ("outbox", "inbox")

UNFINISHED_ORDERS = Gauge("orders_unfinished", "Orders not in a terminal status", ["status"])
STUCK_ORDERS = Gauge("orders_stuck", "Orders in a non-terminal status for longer than its deadline", ["status"])
OLDEST_UNFINISHED_AGE = Gauge(
    "orders_unfinished_oldest_age_seconds", "Time the oldest order in each non-terminal status has been in it", ["status"]
)
REDRIVES = Counter("reconciler_redrives_total", "Events sent again from the database, by reason", ["reason"])
PARKED = Counter("reconciler_orders_parked_total", "Orders parked as FAILED after their last re-drive")
NOTIFICATIONS_GIVEN_UP = Counter(
    "reconciler_notifications_given_up_total", "Events of settled orders whose notifications were recorded FAILED after their last re-drive (a refund given up counts in refunds_total)"
)
EVENTS_COMPLETED = Counter("reconciler_events_completed_total", "Outbox events found complete (every handler applied them)")
ROWS_PURGED = Counter("reconciler_rows_purged_total", "History rows deleted after the retention period", ["table"])
QUEUED_TASKS = Gauge("celery_queued_tasks", "Tasks waiting in each Celery queue, taken by no worker yet", ["queue"])
OLDEST_QUEUED_AGE = Gauge(
    "celery_oldest_queued_task_age_seconds", "Time the oldest task waiting in each Celery queue has waited", ["queue"]
)
BACKLOG_STILL = Gauge(
    "pipeline_backlog_still_seconds",
    "Time the tasks waiting in the pipeline's Celery queue have stood still (no event applied, the queue no shorter, the bridge no further); 0 with none waiting",
)
UNRECONCILED_MONEY = Gauge(
    "payments_unreconciled",
    "Charges and refunds the payment provider made that the database does not know, at the last check",
    ["kind"],
)
LAST_PASS = Gauge("reconciler_last_pass_timestamp_seconds", "When the reconciler last finished a pass (Unix time)")

# Every label value from the start, at 0: an alert on rate() or increase() sees a series before the
# first re-drive or purge, instead of no data.
for _reason in RedriveReason.values:
    REDRIVES.labels(_reason)
for _table in PURGED_TABLES:
    ROWS_PURGED.labels(_table)
for _kind in UNRECONCILED_KINDS:
    UNRECONCILED_MONEY.labels(_kind)
