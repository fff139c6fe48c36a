"""deploy/prometheus/alerts.yml: valid rules (promtool), each expression fires when it should and
stays quiet otherwise (promtool's unit tests), and every metric and label the expressions use is
served by the real processes.

promtool comes with Debian's ``prometheus`` package (``apt-get install prometheus``). Without it
the promtool tests fail, saying so, instead of being skipped.
"""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from devtools.harness.metrics import parse_metrics
from devtools.harness.process_group import ProcessGroup
from devtools.harness.promql import ALERTS_FILE, alert_rules, label_matches, promtool, selectors
from devtools.harness.waiting import wait_until

SEVERITIES = {"warning", "critical"}


# --- the file itself ----------------------------------------------------------------------------


def test_alert_rules_are_well_formed():
    document = yaml.safe_load(ALERTS_FILE.read_text(encoding="utf-8"))
    assert set(document) == {"groups"}
    group_names = [group["name"] for group in document["groups"]]
    assert len(group_names) == len(set(group_names))
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names))
    for rule in alert_rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"]["summary"].strip() and rule["annotations"]["description"].strip(), rule["alert"]
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]


def test_alert_rules_point_the_operator_at_what_to_look_at():
    descriptions = {rule["alert"]: rule["annotations"]["description"] for rule in alert_rules()}
    assert '"Unfinished orders"' in descriptions["OrdersStuck"]
    assert "Dead letters" in descriptions["OrdersParkedByReconciler"]
    assert "Dead letters" in descriptions["NotificationsGivenUp"]
    assert "relay" in descriptions["OutboxNotDraining"] and "Kafka" in descriptions["OutboxNotDraining"]
    assert "Webhook endpoints" in descriptions["WebhookEndpointsDisabled"]
    assert "Webhook deliveries" in descriptions["WebhookDeliveriesFailing"]
    assert "Retry refund" in descriptions["RefundsFailed"]
    assert "reconcile_payments" in descriptions["PaymentsUnreconciled"]
    assert "Celery backlog" in descriptions["PipelineBacklogNotMoving"] and "Celery backlog" in descriptions["PipelineBacklogOld"]


def test_promtool_accepts_the_rules():
    result = subprocess.run([promtool(), "check", "rules", str(ALERTS_FILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


# --- what each expression does: promtool unit tests ----------------------------------------------

# Per alert: input series (one sample a minute from 0m to 10m) with which its expression selects
# something at 10m, and series with which it selects nothing. promtool evaluates count(expr).
FIRES, QUIET = "fires", "quiet"
CASES: dict[str, dict[str, dict[str, str]]] = {
    "OrdersStuck": {
        FIRES: {'orders_stuck{status="CREATED"}': "3x10", 'orders_stuck{status="PROCESSING"}': "0x10"},
        QUIET: {'orders_stuck{status="CREATED"}': "0x10", 'orders_stuck{status="PROCESSING"}': "0x10"},
    },
    "UnfinishedOrderTooOld": {
        FIRES: {'orders_unfinished_oldest_age_seconds{status="PROCESSING"}': "400+60x10"},
        QUIET: {'orders_unfinished_oldest_age_seconds{status="PROCESSING"}': "40x10"},
    },
    "OrdersParkedByReconciler": {
        FIRES: {"reconciler_orders_parked_total": "0 0 0 0 0 1 1 1 1 1 1"},
        QUIET: {"reconciler_orders_parked_total": "0x10"},
    },
    "NotificationsGivenUp": {
        FIRES: {"reconciler_notifications_given_up_total": "0 0 0 0 0 2 2 2 2 2 2"},
        QUIET: {"reconciler_notifications_given_up_total": "0x10"},
    },
    "RefundsFailed": {
        # Refunds that succeeded, or whose gateway calls are being retried, are no failure.
        FIRES: {'refunds_total{outcome="gave_up"}': "0 0 0 0 0 1 1 1 1 1 1", 'refunds_total{outcome="succeeded"}': "0+5x10"},
        QUIET: {'refunds_total{outcome="declined"}': "0x10", 'refunds_total{outcome="timeout"}': "0+3x10"},
    },
    "ReconcilerRedrivesHigh": {
        # Operators' re-drives do not count.
        FIRES: {'reconciler_redrives_total{reason="stuck_created"}': "0+10x10", 'reconciler_redrives_total{reason="operator"}': "0+100x10"},
        QUIET: {'reconciler_redrives_total{reason="stuck_created"}': "0+1x10", 'reconciler_redrives_total{reason="operator"}': "0+100x10"},
    },
    "ReconcilerNotPassing": {
        # The gauge is a Unix time; promtool's clock starts at 0.
        FIRES: {"reconciler_last_pass_timestamp_seconds": "60 120 180 240 240 240 240 240 240 240 240"},
        QUIET: {"reconciler_last_pass_timestamp_seconds": "0+60x10"},
    },
    "ReconcilerAbsent": {
        FIRES: {"outbox_backlog": "0x10"},
        QUIET: {"reconciler_last_pass_timestamp_seconds": "0+60x10"},
    },
    "PaymentsUnreconciled": {
        FIRES: {'payments_unreconciled{kind="charge_without_payment"}': "0 0 1 1 1 1 1 1 1 1 1", 'payments_unreconciled{kind="refund_unknown"}': "0x10"},
        QUIET: {'payments_unreconciled{kind="charge_without_payment"}': "0x10", 'payments_unreconciled{kind="refund_unknown"}': "0x10"},
    },
    "PipelineBacklogNotMoving": {
        FIRES: {"pipeline_backlog_still_seconds": "0+60x10"},
        QUIET: {"pipeline_backlog_still_seconds": "0 5 0 5 0 5 0 5 0 5 0"},
    },
    "PipelineBacklogOld": {
        FIRES: {'celery_oldest_queued_task_age_seconds{queue="orders-pipeline"}': "300+60x10"},
        QUIET: {'celery_oldest_queued_task_age_seconds{queue="orders-pipeline"}': "5x10"},
    },
    "OutboxNotDraining": {
        FIRES: {"outbox_oldest_unpublished_age_seconds": "0+60x10"},
        QUIET: {"outbox_oldest_unpublished_age_seconds": "0x10"},
    },
    "WebhookEndpointsDisabled": {
        FIRES: {'webhook_endpoints_disabled_total{reason="failing"}': "0 0 0 0 0 1 1 1 1 1 1", 'webhook_endpoints_disabled_total{reason="gone"}': "0x10"},
        QUIET: {'webhook_endpoints_disabled_total{reason="failing"}': "0x10", 'webhook_endpoints_disabled_total{reason="gone"}': "0x10"},
    },
    "WebhookDeliveriesFailing": {
        FIRES: {'webhook_deliveries_total{outcome="succeeded"}': "0+1x10", 'webhook_deliveries_total{outcome="retrying"}': "0+4x10", 'webhook_deliveries_total{outcome="failed"}': "0+1x10"},
        QUIET: {'webhook_deliveries_total{outcome="succeeded"}': "0+10x10", 'webhook_deliveries_total{outcome="retrying"}': "0+2x10", 'webhook_deliveries_total{outcome="failed"}': "0x10"},
    },
}


def test_every_alert_has_unit_test_cases():
    assert {rule["alert"] for rule in alert_rules()} == set(CASES)


def test_each_expression_fires_when_it_should_and_only_then(tmp_path):
    tests = []
    for rule in alert_rules():
        for case, series in CASES[rule["alert"]].items():
            tests.append(
                {
                    "name": f"{rule['alert']} {case}",
                    "interval": "1m",
                    "input_series": [{"series": name, "values": values} for name, values in series.items()],
                    "promql_expr_test": [
                        {
                            "expr": f"count({rule['expr']})",
                            "eval_time": "10m",
                            "exp_samples": [{"labels": "{}", "value": 1}] if case == FIRES else [],
                        }
                    ],
                }
            )
    test_file = tmp_path / "alerts.test.yml"
    test_file.write_text(yaml.safe_dump({"rule_files": [str(ALERTS_FILE)], "tests": tests}, sort_keys=False))
    result = subprocess.run([promtool(), "test", "rules", str(test_file)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the metrics exist: the real reconciler's and webhook worker's endpoints, web's /metrics ---------


def test_selectors_are_read_from_the_expressions():
    assert selectors('sum by (reason) (rate(reconciler_redrives_total{reason!="operator"}[10m])) * 60 > 5') == (
        [("reconciler_redrives_total", [("reason", "!=", "operator")])],
        {"reason"},
    )
    assert selectors("time() - max(reconciler_last_pass_timestamp_seconds) > 120") == (
        [("reconciler_last_pass_timestamp_seconds", [])],
        set(),
    )


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_every_metric_and_label_of_the_alerts_is_served(tmp_path, kafka_broker, client):
    group = ProcessGroup.for_tests(kafka_brokers=kafka_broker.bootstrap_servers, work_dir=tmp_path, RECONCILER_INTERVAL="0.5")
    try:
        group.start("reconciler")
        group.start("webhook-worker")

        def reconciler_passed():
            try:
                samples = group.metrics("reconciler")
            except OSError:
                return None
            return samples if samples.get(("reconciler_last_pass_timestamp_seconds", ()), 0) > 0 else None

        def webhook_worker_serving():
            try:
                samples = group.metrics("webhook-worker")
            except OSError:
                return None
            # Its tasks' modules (and their metrics) are imported once the worker starts consuming.
            return samples if any(name.startswith("webhook_") for name, _labels in samples) else None

        try:
            reconciler = wait_until(reconciler_passed, timeout=60, interval=0.3)
            webhook_worker = wait_until(webhook_worker_serving, timeout=60, interval=0.3)
        except TimeoutError:
            logs = {name: group.log(name)[-4000:] for name in ("reconciler", "webhook-worker")}
            pytest.fail(f"the reconciler made no pass or the webhook worker served nothing in 60 s; logs:\n{logs}")
    finally:
        group.stop_all()
    response = client.get("/metrics")
    assert response.status_code == 200
    # The webhook worker sends the deliveries: the webhook_* series the rules read are its own.
    served = {
        **{key: value for key, value in {**reconciler, **parse_metrics(response.content.decode())}.items() if not key[0].startswith("webhook_")},
        **{key: value for key, value in webhook_worker.items() if key[0].startswith("webhook_")},
    }
    labels_of: dict[str, list[dict[str, str]]] = {}
    for (name, labels), _value in served.items():
        labels_of.setdefault(name, []).append(dict(labels))

    checked = set()
    for rule in alert_rules():
        found, grouping = selectors(rule["expr"])
        assert found, rule["alert"]
        for name, matchers in found:
            assert name in labels_of, f"{rule['alert']}: {name} is not served"
            series = labels_of[name]
            for label in grouping:
                assert all(label in labels for labels in series), f"{rule['alert']}: {name} has no label {label}"
            for label, operator, wanted in matchers:
                assert all(label in labels for labels in series), f"{rule['alert']}: {name} has no label {label}"
                assert any(label_matches(labels[label], operator, wanted) for labels in series), (
                    f"{rule['alert']}: no series of {name} has {label}{operator}{wanted!r}"
                )
            checked.add(name)
    # Labelled series exist before anything happened: every unfinished status and every re-drive reason.
    assert {labels["status"] for labels in labels_of["orders_stuck"]} == {"CREATED", "PROCESSING", "CANCELLING"}
    assert {"stuck_created", "stuck_processing", "event_not_handled", "operator"} <= {
        labels["reason"] for labels in labels_of["reconciler_redrives_total"]
    }
    assert {"outbox_oldest_unpublished_age_seconds", "reconciler_last_pass_timestamp_seconds", "orders_stuck"} <= checked
    assert {"webhook_deliveries_total", "webhook_endpoints_disabled_total"} <= checked
    # The reconciler gives refunds up too: it serves their outcomes from its start.
    assert {"declined", "gave_up"} <= {labels["outcome"] for labels in labels_of["refunds_total"]}
