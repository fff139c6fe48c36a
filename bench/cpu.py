"""CPU seconds by process, from /proc: where the machine's 2 cores went during a phase."""

from __future__ import annotations

import os
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid_dir: Path) -> tuple[str, int, float] | None:
    """(comm, session id, CPU seconds) of a process."""
    try:
        raw = (pid_dir / "stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    rest = raw[raw.rindex(")") + 2 :].split()
    return comm, int(rest[3]), (int(rest[11]) + int(rest[12])) / TICKS


def snapshot(*, sessions: dict[str, int], pids: dict[str, int], commands: dict[str, str]) -> dict[str, float]:
    """CPU seconds so far: per named session (a process started with start_new_session and its
    children), per pid, and per command name (every ``postgres`` process, say)."""
    totals = dict.fromkeys([*sessions, *pids, *commands], 0.0)
    by_session = {sid: name for name, sid in sessions.items()}
    by_pid = {pid: name for name, pid in pids.items()}
    by_comm = {comm: name for name, comm in commands.items()}
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        stat = _stat(pid_dir)
        if stat is None:
            continue
        comm, session, seconds = stat
        pid = int(pid_dir.name)
        if pid in by_pid:
            totals[by_pid[pid]] += seconds
        elif session in by_session:
            totals[by_session[session]] += seconds
        elif comm in by_comm:
            totals[by_comm[comm]] += seconds
    totals["machine_busy"], totals["machine_total"] = machine_times()
    return totals


def machine_times() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot (all cores)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return (total - idle) / TICKS, total / TICKS


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {key: after[key] - before.get(key, 0.0) for key in after}
