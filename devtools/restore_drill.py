"""``bin/restore-drill``: the restore drill (devtools.harness.restore_drill) on a running
``bin/run-local``: its processes are stopped and started again through run-local's hold file while
its Kafka broker runs on, and its database (``DATABASE_URL``, by default ``var/db.sqlite3``) is
restored in place, as an operator would. Prints the audit, one JSON object; exits 1 if the
restore did not come back whole. The orders after the backup are lost from the database, as in a
real restore: run it on a stack whose data you can lose.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import django

from devtools.harness.waiting import answers, wait_until
from orders_project.config import BASE_DIR

# How long run-local takes to act on its hold file: a process may take its whole stop timeout.
HOLD_TIMEOUT = 60.0


class RunLocalStack:
    """A running run-local, driven through its hold file (devtools.local_stack); ``env``: that of
    manage.py commands on its database."""

    def __init__(self, *, base_url: str, hold_file: Path, env: dict[str, str]):
        self.base_url = base_url
        self.hold_file = hold_file
        self.held_file = hold_file.with_suffix(".held")
        self.env = env

    def held(self) -> set[str]:
        try:
            return set(self.held_file.read_text().split())
        except FileNotFoundError:
            return set()

    def stop(self, names) -> None:
        wanted = self.held() | set(names)
        self.hold_file.write_text("".join(f"{name}\n" for name in sorted(wanted)))
        wait_until(
            lambda: self.held() == wanted,
            timeout=HOLD_TIMEOUT,
            interval=0.2,
            message=f"run-local did not stop {sorted(wanted)}: is it running, with the hold file {self.hold_file}?",
        )

    def restart_on(self, database: dict[str, Any]) -> None:
        # run-local's processes use its own database, the one restored in place.
        self.hold_file.unlink()
        wait_until(lambda: not self.held(), timeout=HOLD_TIMEOUT, interval=0.2, message="run-local did not start its processes")
        wait_until(lambda: answers(f"{self.base_url}/health"), timeout=HOLD_TIMEOUT, message="web did not come up")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bin/restore-drill", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://localhost:8080", help="run-local's API (default http://localhost:8080)")
    parser.add_argument("--hold-file", type=Path, default=BASE_DIR / "var" / "run-local.hold", help="run-local's hold file")
    parser.add_argument(
        "--backup", type=Path, default=BASE_DIR / "var" / "restore-drill.backup", help="where the drill writes its backup"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orders_project.settings")
    django.setup()
    from django.db import connection

    from devtools.harness.restore_drill import audit_problems, run_drill

    database = connection.settings_dict
    stack = RunLocalStack(base_url=args.url.rstrip("/"), hold_file=args.hold_file, env=dict(os.environ))
    audit = run_drill(stack, database=database, restored=database, backup=args.backup)
    print(json.dumps(audit, indent=2))
    return 1 if audit_problems(audit) else 0


if __name__ == "__main__":
    sys.exit(main())
