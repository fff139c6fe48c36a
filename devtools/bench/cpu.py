"""CPU seconds by process, from /proc: where the machine's 2 cores went during a phase."""

from __future__ import annotations

import os
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid_dir: Path) -> tuple[str, int, float] | None:
    """(comm, session id, CPU seconds) of a process, with those of its children that exited and
    were waited for (PostgreSQL backends that ended count in the postmaster's)."""
    try:
        raw = (pid_dir / "stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    rest = raw[raw.rindex(")") + 2 :].split()
    return comm, int(rest[3]), (int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14])) / TICKS


def snapshot(*, sessions: dict[str, list[int]], pids: dict[str, int], commands: dict[str, str]) -> dict:
    """CPU seconds so far: per name of sessions (processes started with start_new_session and
    their children), per pid, per command name (every ``postgres`` process, say), and every other
    process by pid (key ``_others``)."""
    totals: dict = dict.fromkeys([*sessions, *pids, *commands], 0.0)
    others: dict[int, tuple[str, float]] = {}
    by_session = {sid: name for name, sids in sessions.items() for sid in sids}
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
        else:
            others[pid] = (comm, seconds)
    totals["machine_busy"], totals["machine_total"] = machine_times()
    totals["_others"] = others
    return totals


def machine_times() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot (all cores; steal excluded)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq = fields[:7]
    busy = user + nice + system + irq + softirq
    return busy / TICKS, (busy + idle + iowait) / TICKS


def delta(before: dict, after: dict) -> dict:
    """CPU seconds used between two snapshots; ``other`` is the busy time no named process
    accounts for, ``other_top`` the unnamed processes that used most."""
    used = {key: after[key] - before.get(key, 0.0) for key in after if not key.startswith("_")}
    named = sum(value for key, value in used.items() if key not in ("machine_busy", "machine_total"))
    used["other"] = max(0.0, used["machine_busy"] - named)
    before_others = before.get("_others", {})
    top = []
    for pid, (comm, seconds) in after.get("_others", {}).items():
        spent = seconds - before_others.get(pid, (comm, 0.0))[1]
        if spent > 0.05:
            top.append((spent, f"{comm}[{pid}]"))
    used["_other_top"] = [f"{name} {spent:.1f}s" for spent, name in sorted(top, reverse=True)[:4]]
    return used


def busy_pct(used: dict) -> float | None:
    return 100 * used["machine_busy"] / used["machine_total"] if used.get("machine_total") else None
