"""``python -m devtools.bench [--quick] [--profile]``: every phase in order, every process stopped at the end."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools.bench.env import BASE_DIR, DATABASE_URL, OUTPUT_DIR, REDIS_URL

PHASES = ("orm", "census", "kafka", "celery", "api", "e2e", "peer")


@dataclass(frozen=True)
class Durations:
    orm: float
    kafka_produce: float
    noop_tasks: int
    api: float
    api_levels: tuple[int, ...]
    paired_rounds: int
    paired_slice: float
    saturation_warmup: float
    saturation_window: float
    saturation_backlog: int
    sustained: float
    sustained_warm: float
    census_orders: int
    profile: float
    drain_timeout: float
    idle_window: float
    # The maximum again with the gateway answering in GATEWAY_LATENCY_MS: a shorter window.
    latency_window: float


FULL = Durations(orm=10, kafka_produce=8, noop_tasks=5000, api=10, api_levels=(1, 4, 8, 16, 32), paired_rounds=6,
                 paired_slice=5, saturation_warmup=8, saturation_window=60, saturation_backlog=60, sustained=60,
                 sustained_warm=5, census_orders=20, profile=5, drain_timeout=180, idle_window=8, latency_window=30)
QUICK = Durations(orm=3, kafka_produce=3, noop_tasks=1500, api=3, api_levels=(1, 4, 8, 16, 32), paired_rounds=3,
                  paired_slice=3, saturation_warmup=4, saturation_window=10, saturation_backlog=60, sustained=12,
                  sustained_warm=3, census_orders=10, profile=2, drain_timeout=120, idle_window=4, latency_window=6)
# A real payment provider's answer time (issue 26): the simulator's latency_ms, read at a worker's start.
GATEWAY_LATENCY_MS = 200


class Progress:
    def __init__(self):
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {message}", flush=True)


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=BASE_DIR, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _terminate(signum, _frame):
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bin/benchmark", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short phases (about 4 minutes in all)")
    parser.add_argument("--profile", action="store_true", help="also profile the in-process paths with pyinstrument")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"comma-separated subset of {','.join(PHASES)} (default: all)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="Celery worker processes of the system under test (default: one per core)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    unknown = phases - set(PHASES)
    if unknown:
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    durations = QUICK if args.quick else FULL
    signal.signal(signal.SIGTERM, _terminate)

    now = dt.datetime.now(dt.timezone.utc)
    stamp = now.strftime("%Y%m%d-%H%M%S")
    run_dir = OUTPUT_DIR / f"run-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    progress = Progress()
    results: dict[str, Any] = {
        "meta": {
            "date": now.strftime("%Y-%m-%d %H:%M UTC"),
            # BENCH_COMMIT labels a run of code that is not a git checkout (an exported commit, say).
            "commit": os.environ.get("BENCH_COMMIT") or _git("rev-parse", "--short", "HEAD"),
            "dirty": not os.environ.get("BENCH_COMMIT") and bool(_git("status", "--porcelain", "--untracked-files=no")),
            "mode": "quick" if args.quick else "full",
            "cores": os.cpu_count(),
            "worker_processes": args.workers,
            "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
            "database_url": DATABASE_URL,
            "celery_broker_url": REDIS_URL,
            "logs": str(run_dir.relative_to(BASE_DIR)),
            "durations": durations.__dict__,
        },
        "errors": [],
    }
    noop_processes: list[subprocess.Popen] = []
    try:
        _run(Run(args=args, phases=phases, d=durations, results=results, run_dir=run_dir, progress=progress,
                 noop_processes=noop_processes, stamp=stamp))
    except (KeyboardInterrupt, SystemExit) as exc:
        results["errors"].append(f"interrupted ({type(exc).__name__} {exc})")
        progress("interrupted: stopping every process")
    except Exception as exc:  # noqa: BLE001 - report what we have, then clean up
        results["errors"].append(f"{type(exc).__name__}: {exc}")
        traceback.print_exc()
    finally:
        _cleanup(results, progress, noop_processes)
    results["meta"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    return _report(results, stamp, progress)


# The objects to stop live here so that _cleanup finds them whatever phase failed.
_RUNNING: dict[str, Any] = {}


def _cleanup(results, progress, noop_processes) -> None:
    for name in ("system", "peer"):
        system = _RUNNING.pop(name, None)
        if system is not None:
            progress(f"stopping the {name}'s processes")
            system.stop()
    for process in noop_processes:
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(timeout=10)
    orm_load = _RUNNING.pop("orm_load", None)
    if orm_load is not None:
        orm_load.close()
    broker = _RUNNING.pop("broker", None)
    if broker is not None:
        progress("stopping the Kafka broker")
        broker.stop()
    try:
        from django.db import connections

        connections.close_all()
    except Exception:  # noqa: BLE001 - Django may not be set up
        pass


def _cpu_snapshot(noop_processes: list) -> dict:
    from devtools.bench import cpu

    broker = _RUNNING.get("broker")
    return cpu.snapshot(
        sessions={"benchmark": [os.getsid(0)], **{f"noop worker {p.pid}": [p.pid] for p in noop_processes}},
        pids={"kafka broker (Tansu)": broker.process.pid} if broker and broker.process else {},
        commands={"postgresql": "postgres", "redis": "redis-server"},
    )


def _with_cpu(noop_processes: list, function, *args, **kwargs):
    """Runs ``function``; adds to its result how busy the machine was and what else ran."""
    from devtools.bench import cpu

    before = _cpu_snapshot(noop_processes)
    result = function(*args, **kwargs)
    used = cpu.delta(before, _cpu_snapshot(noop_processes))
    if isinstance(result, dict):
        result["cpu"] = {
            "busy_pct": cpu.busy_pct(used),
            "other_pct": 100 * used["other"] / used["machine_total"] if used["machine_total"] else None,
            "other_processes": used["_other_top"],
            "seconds": {k: round(v, 2) for k, v in used.items() if not k.startswith("_") and v > 0.01},
        }
    return result


def _orm_baseline(noop_processes: list, *, duration: float, processes: int) -> dict:
    """create_order loops in ``processes`` processes; CPU counted over the loops, not the processes' start."""
    from devtools.bench import orm

    with orm.OrmLoad(processes) as load:
        return _with_cpu(noop_processes, load.run, duration)


def _phase(name: str, results: dict, progress: Progress, function, *args, **kwargs):
    progress(f"{name} ...")
    try:
        return function(*args, **kwargs)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001 - record and go on with the next phase
        results["errors"].append(f"{name}: {type(exc).__name__}: {exc}")
        traceback.print_exc()
        return None


@dataclass
class Run:
    """One benchmark run: what was asked, where its results and logs go, and what its phases share."""

    args: argparse.Namespace
    phases: set[str]
    d: Durations
    results: dict[str, Any]
    run_dir: Path
    progress: Progress
    noop_processes: list[subprocess.Popen]
    stamp: str
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    broker: Any = None
    app_env: dict[str, str] = field(default_factory=dict)
    http_port: int = 0

    @property
    def baselines(self) -> dict[str, Any]:
        return self.results["baselines"]


def _run(run: Run) -> None:
    """Every phase asked for, in order, on one set-up."""
    _set_up(run)
    if "orm" in run.phases:
        _orm_phase(run)
    if "census" in run.phases:
        _census_phase(run)
    if "kafka" in run.phases:
        _kafka_phase(run)
    if "celery" in run.phases:
        _celery_phase(run)
    if {"api", "e2e"} & run.phases:
        _pipeline_phases(run)
    if "peer" in run.phases:
        _peer_phase(run)
    if run.args.profile:
        _profile_phase(run)


def _set_up(run: Run) -> None:
    """The databases (migrated, emptied), the Celery broker (flushed), a Kafka broker, the system's
    environment in this process, and Django set up on it."""
    from devtools.bench import env as bench_env
    from devtools.broker import EmbeddedKafkaBroker, free_port

    run.progress(f"setup: database {DATABASE_URL}, Celery broker {REDIS_URL} (FLUSHDB), logs in {run.run_dir}")
    if bench_env.ensure_database():
        run.progress(f"created database {DATABASE_URL}")
    bench_env.flush_redis()
    broker = run.broker = EmbeddedKafkaBroker(log_path=run.run_dir / "kafka-broker.log")
    _RUNNING["broker"] = broker
    broker.start(timeout=60)
    run.http_port = free_port()
    run.app_env = bench_env.app_environment(
        kafka_brokers=broker.bootstrap_servers, run_id=run.run_id, http_port=run.http_port
    )
    os.environ.update(run.app_env)
    os.environ["BENCH_LOG_FILE"] = str(run.run_dir / "bench-process.log")
    bench_env.ensure_database(bench_env.ORM_DATABASE_URL)
    bench_env.ensure_database(bench_env.PROVIDER_DATABASE_URL)
    migrations = (
        (DATABASE_URL, "default", "migrate.log"),
        (bench_env.ORM_DATABASE_URL, "default", "migrate-orm.log"),
        (DATABASE_URL, "provider", "migrate-provider.log"),
    )
    for url, alias, log_name in migrations:
        migrate = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--database", alias, "--noinput"], cwd=BASE_DIR,
            env={**os.environ, "DATABASE_URL": url}, capture_output=True, text=True, timeout=300,
        )
        (run.run_dir / log_name).write_text(migrate.stdout + migrate.stderr)
        if migrate.returncode:
            raise RuntimeError(f"migrate failed; see {run.run_dir / log_name}")
    bench_env.truncate_order_tables(bench_env.ORM_DATABASE_URL)
    bench_env.setup_django()
    from django.conf import settings
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        pg_version = cursor.fetchone()[0]
    run.results["meta"].update(
        postgres=f"PostgreSQL {pg_version}",
        orm_database_url=bench_env.ORM_DATABASE_URL,
        http_workers=settings.CONFIG["http"]["workers"],
        http_threads=settings.CONFIG["http"]["threads"],
        celery_concurrency=settings.CELERY_WORKER_CONCURRENCY,
        celery_prefetch=settings.CELERY_WORKER_PREFETCH_MULTIPLIER,
        django_debug=settings.DEBUG,
        log_level=settings.CONFIG["django"]["log_level"],
        kafka=broker.bootstrap_servers,
    )
    bench_env.truncate_order_tables()
    run.results["baselines"] = {}


def _orm_phase(run: Run) -> None:
    """The ORM-only order transaction in 1 and in 2 processes."""
    d, baselines = run.d, run.baselines
    baselines["orm_1"] = _phase(f"ORM-only baseline, 1 process, {d.orm:.0f} s", run.results, run.progress,
                                _orm_baseline, run.noop_processes, duration=d.orm, processes=1) or {}
    baselines["orm_2"] = _phase(f"ORM-only baseline, 2 processes, {d.orm:.0f} s", run.results, run.progress,
                                _orm_baseline, run.noop_processes, duration=d.orm, processes=2) or {}
    rates = [b.get("rate") for b in (baselines["orm_1"], baselines["orm_2"]) if b.get("rate")]
    baselines["orm_baseline_rate"] = max(rates) if rates else None
    run.progress(f"  ORM-only: 1 process {baselines['orm_1'].get('rate', 0):.1f}/s, "
                 f"2 processes {baselines['orm_2'].get('rate', 0):.1f}/s")


def _census_phase(run: Run) -> None:
    """SQL statements and transactions per step of an order's life."""
    from devtools.bench import env as bench_env
    from devtools.bench import orm

    steps = _phase("query census (SQL statements and transactions per step)", run.results, run.progress,
                   orm.query_census, count=run.d.census_orders, log_path=run.run_dir / "census-emails.log")
    if steps:
        run.results["census"] = {"steps": steps, "per_order": orm.census_per_order(steps)}
    bench_env.truncate_order_tables()


def _kafka_phase(run: Run) -> None:
    """Raw produce and consume on a topic of the run's own."""
    from devtools.bench import kafka_raw

    bootstrap, d = run.broker.bootstrap_servers, run.d
    topic = f"bench-raw-{run.run_id}"

    def kafka_phase():
        kafka_raw.create_topic(bootstrap, topic)
        produced = kafka_raw.produce(bootstrap=bootstrap, topic=topic, duration=d.kafka_produce)
        run.progress(f"  produced {produced['rate']:.0f} msg/s; consuming")
        consumed = kafka_raw.consume(bootstrap=bootstrap, topic=topic)
        return {"topic": topic, "produce": produced, "consume": consumed}

    run.baselines["kafka"] = _phase(f"Kafka raw produce {d.kafka_produce:.0f} s and consume", run.results, run.progress,
                                    _with_cpu, run.noop_processes, kafka_phase) or {}


def _celery_phase(run: Run) -> None:
    """No-op tasks through the Celery broker, with the system's worker concurrency."""
    from django.conf import settings

    from devtools.bench import celery_raw

    run.baselines["celery_noop"] = _phase(
        f"Celery no-op baseline, {run.d.noop_tasks} tasks", run.results, run.progress, _with_cpu, run.noop_processes,
        celery_raw.run_noop_baseline,
        tasks=run.d.noop_tasks, concurrency=settings.CELERY_WORKER_CONCURRENCY, log_dir=run.run_dir, run_id=run.run_id,
        register=run.noop_processes.append,
    ) or {}


def _pipeline_phases(run: Run) -> None:
    """The API, then the pipeline end to end, on one system (web, bridge, workers, the webhook
    worker; the relay after the API phase), with two warm ORM-only processes for the paired rounds
    and brackets."""
    from devtools.bench import e2e, orm
    from devtools.bench import env as bench_env

    system = e2e.System(env={**os.environ, **run.app_env}, log_dir=run.run_dir, http_port=run.http_port,
                        workers=run.args.workers)
    _RUNNING["system"] = system
    run.progress(f"starting web, bridge, {run.args.workers} worker(s) and the webhook worker (relay after the API phase)")
    # The webhook worker runs in every end-to-end measurement: without an endpoint it still takes
    # each bridge batch's task (which finds no delivery), as in production.
    system.start("web", "bridge", *system.workers, e2e.WEBHOOK_WORKER)
    system.wait_web(timeout=60)
    system.wait_workers(timeout=90)
    system.wait_bridge(timeout=120)
    run.progress("  web healthy, workers ready, bridge has its partitions")
    # Two warm ORM-only processes for the paired API rounds and the brackets around the
    # end-to-end maximum; idle, they use no CPU.
    orm_load = _RUNNING["orm_load"] = orm.OrmLoad(2)
    broker_pid = run.broker.process.pid if run.broker.process else None
    if "api" in run.phases:
        _api_phase(run, system, orm_load, broker_pid=broker_pid)
    bench_env.truncate_order_tables()
    if "e2e" in run.phases:
        _e2e_phase(run, system, orm_load, broker_pid=broker_pid)
    _RUNNING.pop("system")
    run.progress("stopping web, relay, bridge, workers, webhook worker and receiver")
    system.stop()


def _api_phase(run: Run, system, orm_load, *, broker_pid: int | None) -> None:
    """POST /orders at each concurrency, then the best one and the ORM-only loops in paired rounds."""
    from devtools.bench import e2e

    d, progress = run.d, run.progress
    levels = _phase(f"API POST /orders at concurrency {', '.join(map(str, d.api_levels))}, {d.api:.0f} s each",
                    run.results, progress, e2e.api_levels, system, levels=list(d.api_levels), duration=d.api,
                    broker_pid=broker_pid) or []
    best = max((level["throughput"] for level in levels), default=None)
    run.results["api"] = {"levels": levels, "best_throughput": best}
    for level in levels:
        progress(f"  c={level['concurrency']}: {level['throughput']:.1f} orders/s, p99 {level['latency_ms']['p99'] or 0:.1f} ms,"
                 f" non-201 {level['non_201']}")
    if levels:
        best_level = max(levels, key=lambda level: level["throughput"])
        paired = _phase(f"API (c={best_level['concurrency']}) and ORM-only (2 processes) in {d.paired_rounds} paired"
                        f" rounds of {d.paired_slice:.0f} s each", run.results, progress, e2e.paired_api_vs_orm, system,
                        orm_load, concurrency=best_level["concurrency"], rounds=d.paired_rounds, duration=d.paired_slice)
        if paired:
            run.results["api"]["paired"] = paired
            progress(f"  paired: API {paired['api_rate']:.1f}/s, ORM-only {paired['orm_rate']:.1f}/s,"
                     f" ratio {paired['ratio']:.3f} (rounds {paired['ratio_per_round']})")


def _e2e_phase(run: Run, system, orm_load, *, broker_pid: int | None) -> None:
    """The relay started; the pipeline's maximum, bracketed by ORM-only rates; then with one
    webhook endpoint (as the peer runs): the maximum, half of it sustained, and the maximum with
    the gateway's latency."""
    d, progress = run.d, run.progress
    system.start("relay")
    system.wait_relay(timeout=60)
    run.results["e2e"] = e2e_results = {}
    # The ORM-only baseline just before and just after the maximum, in the same minutes.
    bracket = [orm_load.run(d.paired_slice)["rate"]]
    if _saturate("E2E", system, d, e2e_results, run.results, progress, broker_pid=broker_pid):
        bracket.append(orm_load.run(d.paired_slice)["rate"])
        e2e_results["orm_bracket"] = {"rates": [round(rate, 1) for rate in bracket],
                                      "rate": sum(bracket) / len(bracket), "slice_s": d.paired_slice}
        progress(f"  ORM-only (2 processes) just before and after: {bracket[0]:.1f} and {bracket[1]:.1f} orders/s")
        # Right after the maximum without it, so that the host's drift between the two stays small.
        _with_webhooks("E2E", system, d, e2e_results, run.results, progress, broker_pid=broker_pid)


def _peer_phase(run: Run) -> None:
    """The naive peer (web and workers, no outbox, Kafka or inbox), with one webhook endpoint: its
    maximum, half of it, and its maximum with the gateway's latency."""
    from devtools.bench import e2e, peer
    from devtools.bench import env as bench_env

    bench_env.truncate_order_tables()
    # Same commands, configuration and number of processes as the pipeline's web and workers;
    # its own logs, so that its task runs are not mixed with the pipeline's.
    (run.run_dir / "peer").mkdir()
    system = _RUNNING["peer"] = e2e.System(env=peer.environment({**os.environ, **run.app_env}, run_id=run.run_id),
                                           log_dir=run.run_dir / "peer", http_port=run.http_port, workers=run.args.workers)
    run.progress(f"starting the peer: web and {run.args.workers} worker(s)")
    system.start("web", *system.workers)
    system.wait_web(timeout=60)
    system.wait_workers(timeout=90)
    run.results["peer"] = peer_results = {}
    # No broker pid: the Kafka broker, idle, is not the peer's (its CPU counts as "other").
    _with_webhooks("peer", system, run.d, peer_results, run.results, run.progress, broker_pid=None)
    _RUNNING.pop("peer")
    run.progress("stopping the peer")
    system.stop()


def _with_webhooks(label: str, system, d: Durations, into: dict, results, progress, *, broker_pid: int | None) -> None:
    """With one webhook endpoint, the same for the pipeline and the peer: the maximum into
    ``into["webhook"]``, half of it sustained, then the workers restarted with the gateway's
    latency and the maximum again into ``into["gateway_latency"]``."""
    webhook_url = system.start_webhook_receiver()
    if not _saturate(f"{label} with one webhook endpoint", system, d, into.setdefault("webhook", {}), results, progress,
                     broker_pid=broker_pid, webhook_url=webhook_url):
        return
    _sustain(label, system, d, into, results, progress, broker_pid=broker_pid, webhook_url=webhook_url)
    progress(f"restarting the {label} workers with the gateway answering in {GATEWAY_LATENCY_MS} ms")
    system.restart_workers(PAYMENTS_LATENCY_MS=str(GATEWAY_LATENCY_MS))
    _saturate(f"{label} with one webhook endpoint, gateway latency {GATEWAY_LATENCY_MS} ms", system, d,
              into.setdefault("gateway_latency", {"latency_ms": GATEWAY_LATENCY_MS}), results, progress,
              broker_pid=broker_pid, webhook_url=webhook_url, window=d.latency_window)


def _profile_phase(run: Run) -> None:
    """pyinstrument profiles of the in-process paths."""
    from devtools.bench import env as bench_env
    from devtools.bench import profiling

    bench_env.truncate_order_tables()
    run.results["profiles"] = _phase("profiles (pyinstrument)", run.results, run.progress, profiling.run_profiles,
                                     duration=run.d.profile, out_dir=OUTPUT_DIR, stamp=run.stamp,
                                     log_path=run.run_dir / "profile-emails.log") or {}
    bench_env.truncate_order_tables()


def _saturate(label: str, system, d: Durations, into: dict, results, progress, *, broker_pid: int | None,
              webhook_url: str | None = None, window: float | None = None) -> dict | None:
    """``system``'s max sustainable rate into ``into["saturation"]``, its orders all finished after it.
    ``webhook_url``: with one endpoint there taking every order event. ``window``: other than the usual."""
    from devtools.bench import e2e

    window = window or d.saturation_window
    endpoint = e2e.webhook_endpoint(url=webhook_url) if webhook_url else contextlib.nullcontext()
    with endpoint:
        sat = _phase(f"{label} max sustainable rate ({d.saturation_warmup:.0f} s warm-up + {window:.0f} s)",
                     results, progress, e2e.saturation, system, warmup=d.saturation_warmup, window=window,
                     backlog=d.saturation_backlog, broker_pid=broker_pid, webhooks=bool(webhook_url),
                     drain_timeout=d.drain_timeout)
    if sat:
        into["saturation"] = sat
        progress(f"  max sustainable {sat['max_sustainable_rate']:.1f} orders/s (terminal {sat['terminal_rate']:.1f}/s),"
                 f" mix {sat['drain']['mix']}")
        if webhook_url:
            progress(f"  webhook deliveries: {sat['webhooks']}")
        drained = sat["drain"]
        progress(f"  drained in {drained['seconds']:.1f} s (drained {drained['drained']}, orders {drained['orders']},"
                 f" unpublished {drained['unpublished']}, deliveries pending {drained['deliveries_pending']})")
    return sat


def _sustain(label: str, system, d: Durations, into: dict, results, progress, *, broker_pid: int | None,
             webhook_url: str) -> None:
    """``system`` at half its max rate with the webhook endpoint into ``into["sustained"]``."""
    from devtools.bench import e2e

    rate = max(0.5, into["webhook"]["saturation"]["max_sustainable_rate"] / 2)
    with e2e.webhook_endpoint(url=webhook_url):
        sus = _phase(f"{label} sustained at {rate:.1f} orders/s for {d.sustained:.0f} s", results, progress,
                     e2e.sustained, system, rate=rate, duration=d.sustained, warm=d.sustained_warm,
                     broker_pid=broker_pid, drain_timeout=d.drain_timeout, idle_window=d.idle_window, webhooks=True)
    if sus:
        into["sustained"] = sus
        p = sus["stages_ms"].get("POST to terminal", {})
        progress(f"  {sus['terminal_rate'] or 0:.1f} orders/s terminal, POST-to-terminal p50 {p.get('p50') or 0:.0f} ms"
                 f" p99 {p.get('p99') or 0:.0f} ms")


def _report(results: dict, stamp: str, progress: Progress) -> int:
    from devtools.bench.e2e import dump_json
    from devtools.bench.report import chart, ratios, table

    results["ratios"] = ratios(results)
    text = table(results)
    print()
    print(text)
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    json_path = OUTPUT_DIR / f"benchmark-{stamp}.json"
    png_path = OUTPUT_DIR / f"benchmark-{stamp}.png"
    txt_path = OUTPUT_DIR / f"benchmark-{stamp}.txt"
    dump_json(json_path, results)
    txt_path.write_text(text + "\n")
    try:
        chart(results, png_path)
    except Exception as exc:  # noqa: BLE001 - the figures are in the JSON anyway
        results["errors"].append(f"chart: {type(exc).__name__}: {exc}")
        traceback.print_exc()
    print()
    print(f"chart: {png_path.relative_to(BASE_DIR)}")
    print(f"figures: {json_path.relative_to(BASE_DIR)}  table: {txt_path.relative_to(BASE_DIR)}")
    print(f"process logs: {results['meta']['logs']}")
    return 1 if results["errors"] else 0
