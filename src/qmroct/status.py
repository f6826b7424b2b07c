"""``qmroct status``: is the hands-off service healthy? For people and for monitoring.

Exit codes (what a Nagios-style check or a systemd timer can act on):

* 0: the watcher is running (or, for cron, checked recently: ``--max-age``), the
  archive answered its last poll and the last run had no failures;
* 1: the last run failed or recorded failures (bad scans, failed jobs);
* 2: the watcher is not running (or has not checked within ``--max-age``), or the
  archive was unreachable or the config invalid at its last poll. 2 wins over 1:
  nothing is being assessed.
"""

from __future__ import annotations

import csv
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from qmroct import runhistory
from qmroct.runlock import lock_alive, read_lock
from qmroct.watch import LOCK_FILE, read_state

KQI_TABLE = Path("results/tables/kqi.tsv")


def open_failures(table: Path = KQI_TABLE) -> Counter:
    """Reason -> number of scan-algorithm results currently failed (the tables' view)."""
    counts: Counter = Counter()
    try:
        with open(table, newline="") as fh:
            seen = set()
            for row in csv.DictReader(fh, delimiter="\t"):
                if row.get("status") != "failed":
                    continue
                key = (
                    row.get("project"),
                    row.get("session"),
                    row.get("scan"),
                    row.get("algorithm"),
                )
                if key not in seen:
                    seen.add(key)
                    counts[runhistory.reason_category(row.get("error") or "failed")] += 1
    except FileNotFoundError:
        pass
    return counts


def _age_s(stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        return (datetime.now().astimezone() - datetime.fromisoformat(stamp)).total_seconds()
    except ValueError:
        return None


def collect(root: Path = Path("."), max_age: float | None = None) -> tuple[dict[str, Any], int]:
    state = read_state(root)
    holder = read_lock(root / LOCK_FILE)
    watcher_running = bool(
        holder
        and holder.purpose == "watch"
        and lock_alive(holder)
        and state.get("pid") == holder.pid
    )
    recent = max_age is not None and (_age_s(state.get("last_check")) or float("inf")) <= max_age
    archive = state.get("archive") or {}
    runs = [r for r in runhistory.list_runs(root) if r.get("outcome") != "running"]
    last = runs[-1] if runs else None
    last_failed = bool(
        last
        and (last.get("exit_status") not in (0, None) or sum((last.get("failures") or {}).values()))
    )
    info = {
        "watcher": {
            "running": watcher_running,
            "pid": state.get("pid"),
            "since": state.get("started"),
            "stopped": state.get("stopped"),
            "mode": state.get("mode"),
        },
        "last_check": state.get("last_check"),
        "next_poll": state.get("next_poll") if watcher_running else None,
        "archive": archive,
        "current_run": state.get("run") if watcher_running else None,
        "last_run": last,
        "open_failures": dict(open_failures(root / KQI_TABLE)),
    }
    if not (watcher_running or recent) or archive.get("reachable") is False:
        code = 2
    elif last_failed:
        code = 1
    else:
        code = 0
    info["exit_code"] = code
    return info, code


def render(info: dict[str, Any]) -> str:
    w = info["watcher"]
    lines = []
    if w["running"]:
        lines.append(f"watcher: running (pid {w['pid']}, {w['mode']}, since {w['since']})")
    else:
        lines.append(
            f"watcher: not running (last seen {w.get('stopped') or w.get('since') or 'never'})"
        )
    archive = info["archive"]
    if archive.get("reachable") is False and archive.get("cause") == "config":
        lines.append(f"config: INVALID since {archive.get('since')}: {archive.get('error')}")
    elif archive.get("reachable") is False:
        lines.append(f"archive: UNREACHABLE since {archive.get('since')}: {archive.get('error')}")
    elif archive:
        lines.append(f"archive: reachable (checked {info['last_check']})")
    else:
        lines.append("archive: never checked")
    lines.append(f"next poll: {info['next_poll'] or '-'}")
    if info["current_run"]:
        run = info["current_run"]
        lines.append(f"running now: {run['id']} ({run['trigger']}, since {run['started']})")
    last = info["last_run"]
    if last:
        sessions = last.get("sessions") or {}
        failures = last.get("failures") or {}
        lines.append(
            f"last run: {last['run_id']} {last.get('outcome')} (exit {last.get('exit_status')}), "
            f"{last.get('trigger')}, {last.get('start')} to {last.get('end')}; sessions "
            f"{sessions.get('new', 0)} new, {sessions.get('changed', 0)} changed, "
            f"{sessions.get('unchanged', 0)} unchanged; "
            f"{sum((last.get('jobs') or {}).values())} jobs; "
            f"failures: {', '.join(f'{k} {v}' for k, v in failures.items()) or 'none'}"
        )
    else:
        lines.append("last run: none recorded")
    open_ = info["open_failures"]
    lines.append(
        "open failures: " + (", ".join(f"{k} {v}" for k, v in sorted(open_.items())) or "none")
    )
    return "\n".join(lines)
