"""Running the real system from tests, the fault suites and the benchmark, one module per job:
``process_group`` (the processes under test, started with the commands of devtools/processes.py),
``waiting``, ``metrics`` (Prometheus samples), ``promql`` (the alert rules, promtool and the
selectors of an expression), ``topics`` (reading Kafka topics),
``object_store`` (S3 for the broker), ``sample_orders`` (orders tests create or post),
``load`` (posting orders at a rate), ``webhook_receivers`` (HTTP receivers of webhooks on loopback), ``audit`` (what happened to them), ``faults`` (the fault
table), ``docker_compose`` (docker-compose.yml rendered by Docker Compose) and ``run_local``
(``bin/run-local`` as the tests run it). Import a name from the module that owns it."""
