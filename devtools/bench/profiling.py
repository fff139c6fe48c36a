"""``--profile``: pyinstrument on the in-process paths an order takes (no HTTP server, no broker)."""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

from devtools.bench.env import SOURCE, seed_items, seed_order
from devtools.bench.orm import order_events, prepared_orders, quiet_stdout

INTERVAL = 0.0005


def _hot_spots(session, *, top: int = 10) -> list[dict[str, Any]]:
    """Self time aggregated by function over the whole call tree, largest first."""
    totals: dict[tuple[str, str, int], float] = defaultdict(float)
    root = session.root_frame()
    if root is None:
        return []
    total = root.time or 1e-9
    stack = [root]
    while stack:
        frame = stack.pop()
        if not frame.is_synthetic:
            self_time = frame.total_self_time
            if self_time:
                totals[(frame.function, frame.file_path_short or "", frame.line_no or 0)] += self_time
        stack.extend(frame.children)
    ranked = sorted(totals.items(), key=lambda item: item[1], reverse=True)[:top]
    return [
        {"function": function, "where": f"{path}:{line}", "self_s": round(seconds, 3), "pct": round(100 * seconds / total, 1)}
        for (function, path, line), seconds in ranked
    ]


def _app_frames(session, *, top: int = 10) -> list[dict[str, Any]]:
    """The project's own functions by total (inclusive) time: which step of ours costs most."""
    totals: dict[str, float] = defaultdict(float)
    root = session.root_frame()
    if root is None:
        return []
    total = root.time or 1e-9
    project_dirs = ("orders/", "events/", "payments/", "notifications/", "orders_project/")

    def walk(frame, seen: frozenset):
        key = f"{frame.function} ({frame.file_path_short}:{frame.line_no})"
        is_ours = (frame.file_path_short or "").startswith(project_dirs)
        if is_ours and key not in seen:
            totals[key] += frame.time
            seen = seen | {key}
        for child in frame.children:
            walk(child, seen)

    walk(root, frozenset())
    ranked = sorted(totals.items(), key=lambda item: item[1], reverse=True)[:top]
    return [{"function": key, "total_s": round(s, 3), "pct": round(100 * s / total, 1)} for key, s in ranked]


def _profile(name: str, body: Callable[[], int], out_dir: Path, stamp: str) -> dict[str, Any]:
    from pyinstrument import Profiler

    profiler = Profiler(interval=INTERVAL)
    profiler.start()
    started = time.perf_counter()
    calls = body()
    elapsed = time.perf_counter() - started
    profiler.stop()
    slug = name.split(":")[0].replace(" ", "_").replace("/", "").lower()
    html = out_dir / f"profile-{stamp}-{slug}.html"
    text = out_dir / f"profile-{stamp}-{slug}.txt"
    html.write_text(profiler.output_html())
    text.write_text(profiler.output_text(unicode=True, color=False, show_all=False))
    session = profiler.last_session
    return {
        "calls": calls,
        "ms_per_call": round(elapsed / max(1, calls) * 1000, 2),
        "html": str(html.relative_to(out_dir.parent.parent)),
        "text": str(text.relative_to(out_dir.parent.parent)),
        "hot_spots": _hot_spots(session),
        "app_functions": _app_frames(session),
    }


def run_profiles(*, duration: float, out_dir: Path, stamp: str, log_path: Path) -> dict[str, Any]:
    from rest_framework.test import APIClient

    from devtools.bench.httpload import order_body
    from notifications.services import send_event_notifications
    from orders.services import create_order, start_processing
    from payments.services import charge_order

    results: dict[str, Any] = {}
    with quiet_stdout(log_path):

        def timed(loop_once: Callable[[], None]) -> Callable[[], int]:
            def body() -> int:
                deadline = time.perf_counter() + duration
                calls = 0
                while time.perf_counter() < deadline:
                    loop_once()
                    calls += 1
                return calls

            return body

        results["create_order (in-process loop)"] = _profile(
            "create_order",
            timed(
                lambda: create_order(
                    user_id=seed_order()["user_id"], email=seed_order()["email"], items=seed_items(),
                    correlation_id=str(uuid.uuid4()), idempotency_key=f"bench-prof-{uuid.uuid4().hex}",
                )
            ),
            out_dir, stamp,
        )
        client = APIClient()

        def post() -> None:
            response = client.post("/orders", data=order_body(), content_type="application/json",
                                   HTTP_IDEMPOTENCY_KEY=f"bench-prof-{uuid.uuid4().hex}")
            assert response.status_code == 201, response.content

        results["POST /orders (DRF test client)"] = _profile("post_orders", timed(post), out_dir, stamp)

        # The tasks' service functions on orders made beforehand (not profiled), one pass each.
        orders = prepared_orders(max(50, int(duration * 60)))

        def each(function: Callable[[dict], Any], items: list) -> Callable[[], int]:
            def body() -> int:
                for item in items:
                    function(item)
                return len(items)

            return body

        results["start_processing (process_order task)"] = _profile(
            "start_processing",
            each(lambda o: start_processing(order_id=o["event"].order_id, event_id=o["event"].event_id, source=SOURCE), orders),
            out_dir, stamp,
        )
        results["charge_order (charge_payment task)"] = _profile(
            "charge_order",
            each(lambda o: charge_order(order_id=o["event"].order_id, event_id=o["event"].event_id, source=SOURCE), orders),
            out_dir, stamp,
        )
        events = [
            event
            for o in orders
            for event in order_events(o["order_id"], ("ORDER_CREATED", "ORDER_PROCESSING", "ORDER_PAID", "PAYMENT_FAILED"))
        ]
        results["send_event_notifications (send_notifications_batch task, per event)"] = _profile(
            "send_event_notifications",
            each(lambda event: send_event_notifications(event=event), events),
            out_dir, stamp,
        )
    return results
