"""The printed table, the ratios against the issue's targets, and the PNG chart."""

from __future__ import annotations

import operator
from pathlib import Path
from typing import Any

from devtools.bench import mix
from devtools.bench.stats import fmt

# DB write transactions one order needs, counted from the code (the census measures the real count).
TRANSACTIONS_PER_ORDER = 8
TRANSACTIONS_REASONING = [
    "create (web): order + items + timeline + ORDER_CREATED outbox row = 1",
    "process_orders: inbox claim + CREATED->PROCESSING + timeline + outbox, one transaction per chunk of up to 20 orders = 1",
    "charge_payments: open the attempts (Payment rows, one transaction per chunk) = 1, gateway ledger (SimulatedCharge) = 1,"
    " record the outcomes (inbox + payment + order + timeline + outbox, one transaction per chunk) = 1",
    "(the three per-chunk transactions count 1 each here: the bar was set when they were per order)",
    "send_notifications_batch: 3 events (ORDER_CREATED, ORDER_PROCESSING, ORDER_PAID/PAYMENT_FAILED) x 1"
    " (inbox + notification + NOTIFICATION_SENT outbox + timeline) = 3",
    "relay: marks published once per batch of up to 500 rows (6 rows per order): ~0 per order",
    "= 8. Autocommit statements the code runs besides (inbox was_handled UPDATEs, the"
    " gateway_calls UPDATE) are extra write transactions: see the census's measured count",
]

# The targets: (comparison, threshold), each a ratio of figures measured in the same run.
TARGETS = {
    "cpu_vs_peer": ("<=", 1.0),
    "e2e_vs_peer": (">=", 1.0),
    "cpu_vs_orm": ("<=", 8.0),
    "e2e_vs_orm_per_tx": (">=", 1.0),
    "api_vs_orm": (">=", 0.50),
    "p99_post_to_terminal_s": ("<", 0.5),
}
_COMPARISONS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge}

# CPU that is not the system under test's: the benchmark's own client, the webhook receiver standing
# for a shop's, and the rest of the machine.
NOT_THE_SYSTEM = ("benchmark client", "webhook receiver", "other")


# Ratios printed without a target: the pipeline against the API, then the parts' utilisation.
UTILISATION_RATIOS = (
    ("end-to-end max / API best", "e2e_vs_api"),
    ("Celery pipeline tasks/s at max / no-op tasks/s", "celery_tasks_vs_noop"),
    ("bridge dispatched msg/s at max / raw consume msg/s", "bridge_dispatch_vs_raw_consume"),
    ("relay published events/s at max / raw produce msg/s", "relay_publish_vs_raw_produce"),
)


def system_cpu_ms(cpu_ms_per_order: dict[str, float]) -> float | None:
    """CPU ms per order of every process of the system under test (web, workers, PostgreSQL, Redis, ...)."""
    values = [ms for name, ms in cpu_ms_per_order.items() if name not in NOT_THE_SYSTEM]
    return round(sum(values), 2) if values else None


def orm_cpu_ms(baseline: dict[str, Any]) -> float | None:
    """CPU ms per order of an ORM-only baseline: its load processes (in the benchmark's session) and PostgreSQL."""
    seconds = (baseline.get("cpu") or {}).get("seconds") or {}
    if not baseline.get("orders") or "benchmark" not in seconds:
        return None
    return round(1000 * (seconds["benchmark"] + seconds.get("postgresql", 0.0)) / baseline["orders"], 2)


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    base = results.get("baselines", {})
    orm = base.get("orm_baseline_rate")
    api = results.get("api", {}).get("best_throughput")
    e2e = results.get("e2e", {})
    sat = e2e.get("saturation", {})
    sus = e2e.get("sustained", {})
    kafka = base.get("kafka", {})
    celery = base.get("celery_noop", {})
    e2e_rate = sat.get("max_sustainable_rate")
    p99 = (sus.get("stages_ms", {}).get("POST to terminal") or {}).get("p99")
    out: dict[str, Any] = {"transactions_per_order": TRANSACTIONS_PER_ORDER}

    def ratio(a, b):
        return a / b if a is not None and b else None

    # The verdict uses the paired rounds when they ran: both measured in the same minute.
    paired = results.get("api", {}).get("paired") or {}
    out["api_vs_orm_separate"] = ratio(api, orm)
    out["api_vs_orm"] = paired.get("ratio") if paired.get("ratio") is not None else out["api_vs_orm_separate"]
    out["orm_per_order_pipeline"] = orm / TRANSACTIONS_PER_ORDER if orm else None
    out["e2e_vs_orm_per_tx_separate"] = ratio(e2e_rate, out["orm_per_order_pipeline"])
    # The verdict uses the ORM-only rate measured just before and after the maximum when it ran.
    bracket = (e2e.get("orm_bracket") or {}).get("rate")
    out["e2e_vs_orm_per_tx"] = (ratio(e2e_rate, bracket / TRANSACTIONS_PER_ORDER) if bracket
                                else out["e2e_vs_orm_per_tx_separate"])
    out["e2e_sustained_vs_orm_per_tx"] = ratio(sus.get("terminal_rate"), out["orm_per_order_pipeline"])
    out["p99_post_to_terminal_s"] = p99 / 1000 if p99 is not None else None
    out["e2e_vs_api"] = ratio(e2e_rate, api)
    out["celery_tasks_vs_noop"] = ratio(sat.get("tasks_succeeded_rate"), celery.get("rate"))
    out["bridge_dispatch_vs_raw_consume"] = ratio(sat.get("bridge_dispatched_rate"), (kafka.get("consume") or {}).get("rate"))
    out["relay_publish_vs_raw_produce"] = ratio(sat.get("relay_published_rate"), (kafka.get("produce") or {}).get("rate"))
    # Pipeline against peer: both at their max with one webhook endpoint, the same mix. CPU per
    # finished order, every process of the system; the ORM-only figure of the baseline that gave
    # the ORM-only rate.
    webhook_sat = e2e.get("webhook", {}).get("saturation", {})
    peer_sat = results.get("peer", {}).get("webhook", {}).get("saturation", {})
    out["cpu_ms_per_order"] = {"pipeline": system_cpu_ms(webhook_sat.get("cpu_ms_per_order", {})),
                               "peer": system_cpu_ms(peer_sat.get("cpu_ms_per_order", {})),
                               "orm_only": orm_cpu_ms(_best_orm_baseline(base))}
    out["cpu_vs_peer"] = ratio(out["cpu_ms_per_order"]["pipeline"], out["cpu_ms_per_order"]["peer"])
    out["e2e_vs_peer"] = ratio(webhook_sat.get("max_sustainable_rate"), peer_sat.get("max_sustainable_rate"))
    latency = {name: run.get("gateway_latency", {}).get("saturation", {}).get("max_sustainable_rate")
               for name, run in (("pipeline", e2e), ("peer", results.get("peer", {})))}
    out["gateway_latency_rate"] = {**latency, "pipeline_vs_peer": ratio(latency["pipeline"], latency["peer"])}
    # The pipeline's maximum without a webhook endpoint against the same with one.
    out["webhook_cpu_ms_per_order"] = {"without": system_cpu_ms(sat.get("cpu_ms_per_order", {})),
                                       "with": out["cpu_ms_per_order"]["pipeline"]}
    out["cpu_vs_orm"] = ratio(out["webhook_cpu_ms_per_order"]["without"], out["cpu_ms_per_order"]["orm_only"])
    out["webhook_cpu_ratio"] = ratio(out["webhook_cpu_ms_per_order"]["with"], out["webhook_cpu_ms_per_order"]["without"])
    out["webhook_rate_ratio"] = ratio(webhook_sat.get("max_sustainable_rate"), e2e_rate)
    out["pass"] = {key: out[key] is not None and _COMPARISONS[comparison](out[key], threshold)
                   for key, (comparison, threshold) in TARGETS.items()}
    return out


def _best_orm_baseline(base: dict[str, Any]) -> dict[str, Any]:
    return max((base.get("orm_1") or {}, base.get("orm_2") or {}), key=lambda baseline: baseline.get("rate") or 0)


def _pct(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f}%" if value < 0.01 else f"{100 * value:.1f}%"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _verdict(ok: bool, value) -> str:
    if value is None:
        return "n/a"
    return "MET" if ok else "MISSED"


def _row(label: str, value: str) -> str:
    return f"  {label} {'.' * max(3, 59 - len(label))} {value:>9}"


def _target_row(label: str, key: str, r: dict[str, Any], unit) -> str:
    comparison, threshold = TARGETS[key]
    return (f"{_row(label, unit(r.get(key)))}   {comparison + ' ' + unit(threshold):<9} "
            f"{_verdict(r.get('pass', {}).get(key), r.get(key))}")


def _saturation_lines(sat: dict[str, Any]) -> list[str]:
    """The max sustainable rate, the pipeline's or the peer's."""
    return [
        f"  Max sustainable: {fmt(sat.get('max_sustainable_rate'))} orders/s finished (terminal {fmt(sat.get('terminal_rate'))}/s,"
        f" accepted {fmt(sat.get('posted_rate'))}/s; {fmt(sat.get('notifications_per_finished_order'), 2)} notifications"
        f" per finished order); CPU busy {fmt(sat.get('machine_busy_pct'), 0)}%",
        f"    method: {sat.get('method')}",
        f"    mix: {_mix_line(sat.get('drain') or {})}",
        f"    CPU ms per finished order: {_cpu_line(sat.get('cpu_ms_per_order', {}))}{_others(sat)}",
    ]


def _mix_line(drain: dict[str, Any]) -> str:
    """The orders of a measurement by kind, the API's answers to their follow-ups, and how many
    were left unfinished after the drain."""
    summary = drain.get("mix") or {}
    calls = drain.get("webhook_calls_by_kind")
    return (f"{summary.get('accepted')} accepted {summary.get('by_kind')}, cancel answers {summary.get('cancel_answers')},"
            f" refund answers {summary.get('refund_answers')}, {summary.get('unfinished')} unfinished after the drain"
            + (f"; webhook calls per order by kind {calls}" if calls else ""))


def _sustained_lines(sus: dict[str, Any]) -> list[str]:
    """The run at half the max, the pipeline's or the peer's: stages present in its logs and database only."""
    lines = [
        f"  Sustained at half of it: {fmt(sus.get('offered_rate'))} orders/s offered for {sus.get('duration_s'):.0f} s ->"
        f" {fmt(sus.get('terminal_rate'))} orders/s reached PAID/PAYMENT_FAILED/CANCELLED; {sus.get('accepted')} accepted,"
        f" {sus.get('non_201')} non-201, {sus.get('terminal')} terminal {sus.get('statuses')}; CPU busy"
        f" {fmt(sus.get('machine_busy_pct'), 0)}%",
        "    stage                                            p50 ms    p95 ms    p99 ms    max ms",
    ]
    for name, s in sus.get("stages_ms", {}).items():
        lines.append(f"    {name:<46} {fmt(s['p50']):>8} {fmt(s['p95']):>9} {fmt(s['p99']):>9} {fmt(s['max']):>9}")
    runtimes = sus.get("task_received_to_done_ms", {})
    if runtimes:
        lines.append("    task received to done (worker log)               p50 ms    p95 ms    p99 ms    count")
        for name, s in runtimes.items():
            lines.append(f"    {name:<46} {fmt(s['p50']):>8} {fmt(s['p95']):>9} {fmt(s['p99']):>9} {s['count']:>8}")
    db = sus.get("db_per_order", {})
    if db:
        lines.append(
            f"    PostgreSQL per order (pg_stat_database, all processes): {db.get('xact_commit_minus_idle')} commits"
            f" ({db.get('xact_commit')} before subtracting the idle system's {sus.get('db_idle_commits_per_s')}/s),"
            f" {db.get('sessions')} new connections, {db.get('tup_inserted')} rows inserted, {db.get('tup_updated')} updated"
        )
    lines.append(f"    CPU ms per order: {_cpu_line(sus.get('cpu_ms_per_order', {}))}{_others(sus)}")
    return lines


def _side_by_side(results: dict[str, Any]) -> list[str]:
    """The pipeline and the peer at their max and at half of it, and the ORM-only CPU per order."""
    r = results.get("ratios", {})
    runs = {"pipeline": results.get("e2e", {}), "peer": results.get("peer", {})}
    sat = {name: run.get("webhook", {}).get("saturation", {}) for name, run in runs.items()}
    cpu = {name: s.get("cpu_ms_per_order", {}) for name, s in sat.items()}
    processes = sorted({p for c in cpu.values() for p in c if p not in NOT_THE_SYSTEM},
                       key=lambda p: -max(c.get(p, 0) for c in cpu.values()))

    def p99(name: str) -> float | None:
        return (runs[name].get("sustained", {}).get("stages_ms", {}).get("POST to terminal") or {}).get("p99")

    def per_order(name: str, key: str) -> float | None:
        return (sat[name].get("webhooks") or {}).get(key) if key.startswith("deliveries") else sat[name].get(key)

    latency = r.get("gateway_latency_rate", {})
    lines = ["PIPELINE vs PEER (same run, same mix, one webhook endpoint)       pipeline       peer",
             f"  {'max sustainable, orders/s finished':<59} {fmt(sat['pipeline'].get('max_sustainable_rate')):>9} "
             f"{fmt(sat['peer'].get('max_sustainable_rate')):>10}",
             f"  {'CPU ms per finished order at the max, all processes':<59} {fmt(r.get('cpu_ms_per_order', {}).get('pipeline'), 2):>9} "
             f"{fmt(r.get('cpu_ms_per_order', {}).get('peer'), 2):>10}"]
    lines.extend(f"    {process:<57} {fmt(cpu['pipeline'].get(process), 2):>9} {fmt(cpu['peer'].get(process), 2):>10}"
                 for process in processes)
    lines.append(f"  {'p99 POST to terminal at half the max, ms':<59} {fmt(p99('pipeline'), 0):>9} {fmt(p99('peer'), 0):>10}")
    for label, key in (("webhook calls per finished order", "deliveries_per_finished_order"),
                       ("notifications per finished order", "notifications_per_finished_order")):
        lines.append(f"  {label:<59} {fmt(per_order('pipeline', key), 2):>9} {fmt(per_order('peer', key), 2):>10}")
    calls = {name: (sat[name].get("drain") or {}).get("webhook_calls_by_kind") or {} for name in sat}
    for kind in sorted(set(calls["pipeline"]) | set(calls["peer"])):
        lines.append(f"    {kind + ' orders: webhook calls per order (all, drained)':<57}"
                     f" {fmt(calls['pipeline'].get(kind), 2):>9} {fmt(calls['peer'].get(kind), 2):>10}")
    latency_label = f"max sustainable, gateway answering in {results.get('e2e', {}).get('gateway_latency', {}).get('latency_ms', '?')} ms"
    lines.append(f"  {latency_label:<59} {fmt(latency.get('pipeline')):>9} {fmt(latency.get('peer')):>10}")
    lines.append(f"  (all processes: every one measured but the benchmark client and \"other\"; ORM-only create_order:"
                 f" {fmt(r.get('cpu_ms_per_order', {}).get('orm_only'), 2)} CPU ms per order, its load processes + PostgreSQL)")
    return lines


def _webhook_lines(results: dict[str, Any]) -> list[str]:
    """The maximum with one webhook endpoint against the one without: rate, CPU per process, deliveries."""
    e2e = results.get("e2e", {})
    sat = e2e.get("webhook", {}).get("saturation", {})
    if not sat:
        return []
    r = results.get("ratios", {})
    cpu = {"without": e2e.get("saturation", {}).get("cpu_ms_per_order", {}), "with": sat.get("cpu_ms_per_order", {})}
    processes = sorted({p for c in cpu.values() for p in c}, key=lambda p: -cpu["with"].get(p, 0))

    def ratio(a, b) -> str:
        return _times(a / b) if a is not None and b else "-"

    hooks = sat.get("webhooks") or {}
    lines = ["WITH ONE WEBHOOK ENDPOINT  the same maximum, one endpoint taking every order event of the benchmark's"
             " orders, its receiver a local process answering 204 unverified",
             *_saturation_lines(sat),
             f"    deliveries succeeded in the window: {hooks.get('deliveries_succeeded')} ({fmt(hooks.get('deliveries_succeeded_rate'))}/s,"
             f" {fmt(hooks.get('deliveries_per_finished_order'), 2)} per finished order), failed"
             f" {hooks.get('deliveries_failed')}; pending at the window's start {hooks.get('pending_at_start')}, at its end"
             f" {hooks.get('pending_at_end')} (the client waits on them: at most {sat.get('backlog')} orders unfinished)",
             "  CPU ms per finished order at the max                       without       with   with/without",
             f"  {'max sustainable, orders/s finished':<57} {fmt(e2e.get('saturation', {}).get('max_sustainable_rate')):>9}"
             f" {fmt(sat.get('max_sustainable_rate')):>10} {_times(r.get('webhook_rate_ratio')):>14}",
             f"  {'all processes of the system':<57} {fmt(r.get('webhook_cpu_ms_per_order', {}).get('without'), 2):>9}"
             f" {fmt(r.get('webhook_cpu_ms_per_order', {}).get('with'), 2):>10} {_times(r.get('webhook_cpu_ratio')):>14}"]
    lines.extend(f"    {process:<55} {fmt(cpu['without'].get(process), 2):>9} {fmt(cpu['with'].get(process), 2):>10}"
                 f" {ratio(cpu['with'].get(process), cpu['without'].get(process)):>14}" for process in processes)
    lines.append("  (all processes: every one measured but the benchmark client, the webhook receiver and \"other\")")
    return lines


def _orm_cpu(baseline: dict[str, Any]) -> str:
    cpu_ms = orm_cpu_ms(baseline)
    return f"{fmt(cpu_ms, 2)} CPU ms/order (load processes + PostgreSQL)" if cpu_ms is not None else ""


def table(results: dict[str, Any]) -> str:
    meta = results["meta"]
    base = results.get("baselines", {})
    lines: list[str] = []
    add = lines.append
    add(f"Order service benchmark - {meta['date']} - commit {meta['commit']}{' (+ uncommitted changes)' if meta.get('dirty') else ''}"
        f" - mode {meta['mode']}")
    add(f"Machine: {meta['cores']} cores, {meta.get('postgres', 'PostgreSQL')}, Redis db 5, Kafka-protocol broker Tansu (in memory), all on this host")
    add(f"System: web gunicorn {meta['http_workers']} workers x {meta['http_threads']} threads (gthread); relay; bridge; "
        f"Celery worker {meta.get('worker_processes', 1)} process(es) x threads -c {meta['celery_concurrency']} prefetch {meta['celery_prefetch']};"
        " webhook worker 1 process (its own queue)")
    add(f"Load average (1, 5, 15 min) at start {meta.get('load_average_at_start')}, at end {meta.get('load_average_at_end')}"
        " (anything else running on the host competes for the same 2 cores)")
    add(f"Env: DJANGO_DEBUG={meta['django_debug']}, DJANGO_LOG_LEVEL={meta['log_level']} (every process writes a JSON line"
        f" per request/event/task to its log file), PAYMENTS_SEED=bench, throttling off, email: console backend")
    add("")
    add("BASELINES (same run, same machine)")
    orm1 = base.get("orm_1", {})
    orm2 = base.get("orm_2", {})
    add(f"  ORM-only create_order, 1 process ............... {fmt(orm1.get('rate')):>10} orders/s {_busy(orm1)}"
        f" {_orm_cpu(orm1)}")
    add(f"  ORM-only create_order, 2 processes ............. {fmt(orm2.get('rate')):>10} orders/s {_busy(orm2)}"
        f" {_orm_cpu(orm2)}")
    add(f"  => ORM-only baseline (the better of the two) ... {fmt(base.get('orm_baseline_rate')):>10} orders/s")
    kafka = base.get("kafka", {})
    produce, consume = kafka.get("produce") or {}, kafka.get("consume") or {}
    add(f"  Kafka raw produce ({produce.get('value_bytes', '?')} B, keyed, acks=all, idempotent) "
        f"{fmt(produce.get('rate'), 0):>8} msg/s ({fmt(produce.get('mb_per_s'))} MB/s)")
    add(f"  Kafka raw consume (assign, from the beginning) . {fmt(consume.get('rate'), 0):>10} msg/s ({consume.get('consumed', '?')} messages)")
    celery = base.get("celery_noop", {})
    add(f"  Celery no-op on Redis, threads -c {celery.get('concurrency', '?')}: sent {fmt(celery.get('send_rate'), 0)} tasks/s,"
        f" completed {fmt(celery.get('rate'), 0)} tasks/s ({celery.get('tasks', '?')} tasks; queue drained at"
        f" {fmt(celery.get('drain_rate'), 0)}/s) {_busy(celery)}")
    add("")
    api = results.get("api", {})
    add("API  POST /orders (web alone; each request a seed order with its own Idempotency-Key)")
    add("  concurrency  orders/s   p50 ms   p95 ms   p99 ms   non-201   CPU busy   CPU ms/order: web + postgres + client + other")
    for level in api.get("levels", []):
        lat = level["latency_ms"]
        cpu = level.get("cpu_ms_per_order", {})
        add(f"  {level['concurrency']:>11}  {fmt(level['throughput']):>8} {fmt(lat['p50']):>8} {fmt(lat['p95']):>8} "
            f"{fmt(lat['p99']):>8} {sum(level['non_201'].values()):>9} {fmt(level.get('machine_busy_pct'), 0):>9}%"
            f"   {fmt(cpu.get('web'))} + {fmt(cpu.get('postgresql'))} + {fmt(cpu.get('benchmark client'))} + {fmt(cpu.get('other'))}")
    paired = api.get("paired")
    if paired:
        add(f"  paired rounds: API at c={paired['concurrency']} and ORM-only in 2 processes, {paired['rounds']} rounds of"
            f" {paired['slice_s']:.0f} s each, alternating: API {fmt(paired['api_rate'])} orders/s, ORM-only"
            f" {fmt(paired['orm_rate'])} orders/s, ratio {_pct(paired['ratio'])}")
        add(f"    per round: API {paired['api_rates']}, ORM-only {paired['orm_rates']},"
            f" ratio {[_pct(value) for value in paired['ratio_per_round']]}")
    add("")
    e2e = results.get("e2e", {})
    sat, sus = e2e.get("saturation", {}), e2e.get("sustained", {})
    add(f"END TO END  the mix ({mix.describe()}): POST -> relay -> Kafka -> bridge -> Celery (process, charge, refunds,"
        " notifications) -> terminal; the sustained run with one webhook endpoint")
    if sat:
        lines.extend(_saturation_lines(sat))
        add(f"    at that rate: relay published {fmt(sat.get('relay_published_rate'))} events/s, bridge dispatched"
            f" {fmt(sat.get('bridge_dispatched_rate'))} msg/s, worker finished {fmt(sat.get('tasks_succeeded_rate'))} tasks/s")
        bracket = e2e.get("orm_bracket")
        if bracket:
            add(f"    ORM-only (2 processes, {bracket['slice_s']:.0f} s) just before and just after: {bracket['rates']} orders/s,"
                f" mean {fmt(bracket['rate'])}: the ratio's baseline")
    if sus:
        pauses = sus.get("bridge_pauses") or {}
        lines.extend(_sustained_lines(sus))
        if pauses:
            add(f"    bridge: {pauses['count']} pauses of more than 1 s between two dispatches while orders kept coming,"
                f" {pauses['total_s']} s in all ({_pct(pauses['share_of_run'])} of the run), longest {pauses['longest_s']} s")
    add("")
    webhook = _webhook_lines(results)
    if webhook:
        lines.extend(webhook)
        add("")
    latency_sat = e2e.get("gateway_latency", {}).get("saturation")
    if latency_sat:
        add(f"WITH THE GATEWAY ANSWERING IN {e2e['gateway_latency']['latency_ms']} ms  the maximum again (one webhook endpoint),"
            " the workers restarted with the simulator's latency")
        lines.extend(_saturation_lines(latency_sat))
        add("")
    peer = results.get("peer", {})
    if peer:
        add("PEER  the usual Django design (devtools/bench/peer): POST commits order + items + timeline and, on commit, queues"
            " a Celery chain process -> charge; cancel and refund views, a refund task; each event's notifications and webhook"
            " calls (signed, requests) in on-commit tasks; no outbox, Kafka or inbox. Same web and worker commands,"
            " processes and settings as the pipeline's; the same mix, with one webhook endpoint")
        if peer.get("webhook", {}).get("saturation"):
            lines.extend(_saturation_lines(peer["webhook"]["saturation"]))
        if peer.get("sustained"):
            lines.extend(_sustained_lines(peer["sustained"]))
        if peer.get("gateway_latency", {}).get("saturation"):
            add(f"  With the gateway answering in {peer['gateway_latency']['latency_ms']} ms:")
            lines.extend(_saturation_lines(peer["gateway_latency"]["saturation"]))
        add("")
        lines.extend(_side_by_side(results))
        add("")
    census = results.get("census", {})
    if census:
        add("SQL PER STEP (in-process census on PostgreSQL; tx = transactions, wtx = write transactions)")
        add("  step                                                     stmts  select insert update savept*  tx  wtx   ms")
        for name, c in census.get("steps", {}).items():
            add(f"  {name:<56} {c.get('statements', 0):>5} {c.get('sql_select', 0):>7} {c.get('sql_insert', 0):>6}"
                f" {c.get('sql_update', 0):>6} {c.get('sql_savepoint', 0) + c.get('sql_release', 0):>6} {c.get('transactions', 0):>4}"
                f" {c.get('write_transactions', 0):>4} {c.get('ms_per_call', 0):>5}")
        add("  (* SAVEPOINT + RELEASE SAVEPOINT statements: a nested atomic() costs two round trips)")
        per = census.get("per_order", {})
        add(f"  one order (POST + process + charge + 3 notifications, relay excluded): {per.get('statements')} statements,"
            f" {per.get('transactions')} transactions of which {per.get('write_transactions')} write")
        add("")
    r = results.get("ratios", {})
    add(f"TRANSACTIONS PER ORDER used for the ratio: {TRANSACTIONS_PER_ORDER}")
    for line in TRANSACTIONS_REASONING:
        add(f"  - {line}")
    add("")
    add("RATIOS vs the issues' targets                                   measured     target    verdict")
    add("  issue 26 (the maxima with one webhook endpoint, the mix of END TO END, half the max sustained):")
    add(_target_row("CPU per finished order, pipeline / peer (all processes)", "cpu_vs_peer", r, _times))
    add(_target_row("end-to-end max / peer's max", "e2e_vs_peer", r, _pct))
    add(_target_row("p99 POST-to-terminal at half the max", "p99_post_to_terminal_s", r, _seconds))
    latency = r.get("gateway_latency_rate", {})
    latency_ms = results.get("e2e", {}).get("gateway_latency", {}).get("latency_ms", "?")
    add(_row(f"max with the gateway answering in {latency_ms} ms: pipeline, peer",
             f"{fmt(latency.get('pipeline'))}, {fmt(latency.get('peer'))}") + f"   orders/s ({_pct(latency.get('pipeline_vs_peer'))})")
    add("  earlier issues:")
    add(_target_row("CPU per finished order, pipeline / ORM-only per order", "cpu_vs_orm", r, _times))
    bracket = e2e.get("orm_bracket") or {}
    label = "ORM-only around it" if bracket else "ORM-only baseline"
    add(_target_row(f"end-to-end max / ({label} / {TRANSACTIONS_PER_ORDER} tx per order)", "e2e_vs_orm_per_tx", r, _pct))
    if bracket:
        add(_row(f"(end-to-end max / (ORM-only baseline / {TRANSACTIONS_PER_ORDER}), minutes apart", _pct(r.get("e2e_vs_orm_per_tx_separate"))) + ")")
    paired = results.get("api", {}).get("paired") or {}
    label = "paired rounds" if paired.get("ratio") is not None else "best level / baseline"
    add(_target_row(f"API create throughput / ORM-only ({label})", "api_vs_orm", r, _pct))
    if paired.get("ratio") is not None:
        add(_row("(API best level / ORM-only baseline, minutes apart", _pct(r.get("api_vs_orm_separate"))) + ")")
    add(_row(f"(end-to-end at half rate / (ORM-only / {TRANSACTIONS_PER_ORDER})", _pct(r.get("e2e_sustained_vs_orm_per_tx"))) + ")")
    for label, key in UTILISATION_RATIOS:
        add(_row(label, _pct(r.get(key))))
    add("  (the last three are utilisation at the pipeline's max, not the parts' limits)")
    lines.extend(_profile_lines(results.get("profiles", {})))
    if results.get("errors"):
        add("")
        add("ERRORS")
        for error in results["errors"]:
            add(f"  {error}")
    return "\n".join(lines)


def _profile_lines(profiles: dict) -> list[str]:
    """The profiles' section: each profiled path and its hot spots (nothing without profiles)."""
    if not profiles:
        return []
    section = ["", "PROFILES (pyinstrument, in-process; self time by function, top 10)"]
    for name, p in profiles.items():
        section.append(f"  {name}: {p['calls']} calls, {p['ms_per_call']} ms/call -> {p['html']}")
        section.extend(f"    {spot['pct']:>5}%  {spot['function']:<38} {spot['where']}" for spot in p["hot_spots"])
    return section


def _busy(result: dict) -> str:
    cpu = result.get("cpu") or {}
    if cpu.get("busy_pct") is None:
        return ""
    other = f", other {cpu['other_pct']:.0f}%" if cpu.get("other_pct", 0) >= 3 else ""
    top = f" {', '.join(cpu['other_processes'][:2])}" if other and cpu.get("other_processes") else ""
    return f"[CPU {cpu['busy_pct']:.0f}%{other}{top}]"


def _others(result: dict) -> str:
    top = result.get("other_processes") or []
    return f" (other = not ours: {', '.join(top)})" if top else ""


def _cpu_line(cpu: dict[str, float]) -> str:
    return ", ".join(f"{name} {value}" for name, value in sorted(cpu.items(), key=lambda item: -item[1])) or "-"


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = results.get("baselines", {})
    api = results.get("api", {})
    e2e = results.get("e2e", {})
    sat, sus = e2e.get("saturation", {}), e2e.get("sustained", {})
    peer_sat = results.get("peer", {}).get("webhook", {}).get("saturation", {})
    r = results.get("ratios", {})
    fig, axes = plt.subplots(2, 3, figsize=(18, 10))
    meta = results["meta"]
    fig.suptitle(f"Order service benchmark - {meta['date']} - {meta['commit']} - {meta['cores']} cores - {meta['mode']}")

    ax = axes[0][0]
    labels = ["ORM 1 proc", "ORM 2 procs", "API best", "E2E max", "E2E + webhook", "E2E half-rate",
              f"ORM / {TRANSACTIONS_PER_ORDER} tx", "peer max"]
    values = [
        base.get("orm_1", {}).get("rate"), base.get("orm_2", {}).get("rate"), api.get("best_throughput"),
        sat.get("max_sustainable_rate"), e2e.get("webhook", {}).get("saturation", {}).get("max_sustainable_rate"),
        sus.get("terminal_rate"), r.get("orm_per_order_pipeline"), peer_sat.get("max_sustainable_rate"),
    ]
    ax.bar(labels, [v or 0 for v in values],
           color=["#888", "#888", "#1f77b4", "#2ca02c", "#17becf", "#98df8a", "#ccc", "#ff7f0e"])
    for i, v in enumerate(values):
        ax.text(i, (v or 0), fmt(v), ha="center", va="bottom", fontsize=8)
    ax.set_title("Orders per second")
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)

    ax = axes[0][1]
    levels = api.get("levels", [])
    if levels:
        conc = [level["concurrency"] for level in levels]
        ax.plot(conc, [level["throughput"] for level in levels], "o-", color="#1f77b4", label="orders/s")
        ax.set_xlabel("concurrency")
        ax.set_ylabel("orders/s")
        ax.set_xscale("log", base=2)
        ax2 = ax.twinx()
        for key, style in (("p50", "s--"), ("p95", "^--"), ("p99", "v--")):
            ax2.plot(conc, [level["latency_ms"][key] for level in levels], style, label=f"{key} ms")
        ax2.set_ylabel("latency ms")
        ax2.legend(loc="upper left", fontsize=8)
        if base.get("orm_baseline_rate"):
            ax.axhline(base["orm_baseline_rate"] * 0.5, color="red", linestyle=":", label="target 50% of ORM-only")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_title("API POST /orders")

    ax = axes[0][2]
    stages = sus.get("stages_ms", {})
    names = [n for n in stages if n not in ("client lateness",)]
    if names:
        y = range(len(names))
        for offset, key, color in ((-0.25, "p50", "#2ca02c"), (0, "p95", "#ff7f0e"), (0.25, "p99", "#d62728")):
            ax.barh([i + offset for i in y], [stages[n][key] or 0 for n in names], height=0.25, color=color, label=key)
        ax.set_yticks(list(y))
        ax.set_yticklabels(names, fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        p99_target_ms = 1000 * TARGETS["p99_post_to_terminal_s"][1]
        ax.axvline(p99_target_ms, color="red", linestyle=":", label=f"{p99_target_ms:.0f} ms target (POST to terminal p99)")
        ax.legend(fontsize=7)
    ax.set_title(f"E2E stages at {fmt(sus.get('offered_rate'))} orders/s (ms, log)")

    ax = axes[1][0]
    series = sus.get("series", {})
    if series:
        ax.plot(series["accepted_per_s"], label="accepted/s")
        ax.plot(series["terminal_per_s"], label="terminal/s")
        ax.set_xlabel("seconds since start")
        ax.legend(fontsize=8)
    ax.set_title("Sustained run: orders per second")

    ax = axes[1][1]
    ratio_names = ["API / ORM", f"E2E / (ORM/{TRANSACTIONS_PER_ORDER})", "Celery / no-op", "bridge / raw consume", "relay / raw produce"]
    ratio_values = [r.get("api_vs_orm"), r.get("e2e_vs_orm_per_tx"), r.get("celery_tasks_vs_noop"),
                    r.get("bridge_dispatch_vs_raw_consume"), r.get("relay_publish_vs_raw_produce")]
    ax.bar(ratio_names, [100 * (v or 0) for v in ratio_values], color=["#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2"])
    for i, v in enumerate(ratio_values):
        ax.text(i, 100 * (v or 0), _pct(v), ha="center", va="bottom", fontsize=8)
    for position, key in enumerate(("api_vs_orm", "e2e_vs_orm_per_tx")):
        ax.plot([position - 0.4, position + 0.4], [100 * TARGETS[key][1]] * 2, color="red", linestyle=":")
    ax.set_ylabel("% (red: target)")
    ax.set_title("Ratios to the baselines")
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)

    ax = axes[1][2]
    cpu = {"pipeline": e2e.get("webhook", {}).get("saturation", {}).get("cpu_ms_per_order") or {},
           "peer": peer_sat.get("cpu_ms_per_order") or {}}
    names = sorted(set(cpu["pipeline"]) | set(cpu["peer"]), key=lambda name: -cpu["pipeline"].get(name, 0))
    if names:
        for offset, (run, color) in zip((-0.2, 0.2), (("pipeline", "#7f7f7f"), ("peer", "#ff7f0e"))):
            ax.barh([i + offset for i in range(len(names))], [cpu[run].get(name, 0) for name in names], height=0.4,
                    color=color, label=run)
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("CPU ms per finished order")
        ax.legend(fontsize=8)
    ax.set_title("Where the CPU goes (at the max rate)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
