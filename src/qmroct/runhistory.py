"""Run history: what each workflow run did, one record per run, readable by people.

Every run (started by ``qmroct watch`` or by hand) gets ``results/runs/<run-id>/``
with ``manifest.json``; this module owns its ``summary`` section: start and end,
trigger, sessions new/changed/unchanged (discovery's index before vs after the run),
jobs run and failed per rule, failures by reason, VM-minutes and servers when the
OpenStack pool ran, and the exit status. Other sections of the manifest (the
reproducibility record of issue 10) are written by their own module; both merge
into the same file, so a run has one record, not two formats.

Who writes what:

* the Snakefile's ``onstart`` calls :func:`start_run`: it snapshots discovery's index
  and installs a logging handler that counts Snakemake's job events in the head;
* ``onsuccess``/``onerror`` call :func:`finish_run`: the summary is written, the
  run's failures page and the history page are rebuilt, and (for a run by hand)
  the configured notify command is run;
* ``qmroct watch`` names the run (``QMROCT_RUN_ID``) and its trigger
  (``QMROCT_RUN_TRIGGER``) in Snakemake's environment, and after Snakemake exits
  calls :func:`finalise_run` with the real exit status (an interrupted run ends in
  ``onerror`` with 1, Snakemake itself then exits 130), then notifies.
"""

from __future__ import annotations

import csv
import html
import json
import logging
import os
import re
import shlex
import subprocess
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from qmroct.fileio import now_iso, write_json_atomic
from qmroct.provenance.run_manifest import RUN_ID_ENV, new_run_id

log = logging.getLogger("qmroct.runs")

RUNS_DIR = Path("results/runs")
SESSION_INDEX = Path("results/discovery/sessions.tsv")
HISTORY_PAGE = Path("results/report/runs.html")
POOL_RUNS = Path(".snakemake/openstack")  # the executor's per-run folder, summary.json at shutdown
MANIFEST = "manifest.json"
SUMMARY_CACHE = Path(".qmroct/run-summaries.json")
SNAKEMAKE_LOGGER = "snakemake.logging"
# What Snakemake's scheduler logs when a KeyboardInterrupt ends the run (job_scheduler.py).
USER_STOP = "Terminating processes on user request"
WATCH_ID_ENV = "QMROCT_WATCH_RUN_ID"  # the watcher's name for a run it started
TRIGGER_ENV = "QMROCT_RUN_TRIGGER"  # why the watcher started it; "manual" when unset

# Environment variables that must never reach a notify command (credentials of the
# archive and the cloud; anything that looks like a secret).
SECRET_ENV = re.compile(r"(PASS|SECRET|TOKEN|CREDENTIAL|PRIVATE|API_?KEY|AUTH)", re.IGNORECASE)
SECRET_NAMES = {"XNAT_USER", "XNAT_PASS", "OS_PASSWORD", "OS_USERNAME", "OS_CLOUD"}


def current_run_id() -> str:
    """This Snakemake process's run id: the run manifest's (its onstart hook sets
    QMROCT_RUN_ID before ours runs), or, without one, a new id kept for the process."""
    if not os.environ.get(RUN_ID_ENV):
        os.environ[RUN_ID_ENV] = new_run_id()
    return os.environ[RUN_ID_ENV]


def find_watch_run(watch_id: str, since: float, root: Path = Path(".")) -> str | None:
    """The run id of the run the watcher named ``watch_id`` (records written since ``since``)."""
    if (run_dir(watch_id, root) / MANIFEST).is_file():
        return watch_id
    base = root / RUNS_DIR
    for path in sorted(base.glob(f"*/{MANIFEST}"), reverse=True) if base.is_dir() else ():
        try:
            if path.stat().st_mtime < since:
                continue
            if (json.loads(path.read_text()).get("summary") or {}).get("watch_run_id") == watch_id:
                return path.parent.name
        except (OSError, ValueError):
            continue
    return None


def run_dir(run_id: str, root: Path = Path(".")) -> Path:
    if not re.fullmatch(r"[A-Za-z0-9TZ_.-]+", run_id):
        raise ValueError(f"not a run id: {run_id!r}")
    return root / RUNS_DIR / run_id


# -- the record file ----------------------------------------------------------


def read_record(run_id: str, root: Path = Path(".")) -> dict[str, Any]:
    path = run_dir(run_id, root) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}


def merge_summary(run_id: str, summary: dict[str, Any], root: Path = Path(".")) -> Path:
    """Merge ``summary`` into the run's manifest.json, keeping every other section."""
    path = run_dir(run_id, root) / MANIFEST
    record = read_record(run_id, root)
    record.setdefault("run_id", run_id)
    record["summary"] = {**record.get("summary", {}), **summary, "run_id": run_id}
    write_json_atomic(path, record)
    return path


def list_runs(root: Path = Path(".")) -> list[dict[str, Any]]:
    """Every run's summary (with ``run_id``, without the long lists), oldest first.

    A manifest lists every result file with its checksum (megabytes at ten thousand
    sessions), and the history page is rebuilt after every run, so summaries are kept in a
    cache keyed by each manifest's size and mtime (``.qmroct/run-summaries.json``; derived,
    safe to delete): only manifests written since are parsed again."""
    runs: list[dict[str, Any]] = []
    base = root / RUNS_DIR
    if not base.is_dir():
        return runs
    cache_path = root / SUMMARY_CACHE
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    fresh: dict[str, Any] = {}
    for path in sorted(base.glob(f"*/{MANIFEST}")):
        try:
            st = path.stat()
        except OSError:
            continue
        stamp = [st.st_size, st.st_mtime_ns]
        hit = cache.get(path.parent.name)
        if hit and hit.get("stamp") == stamp:
            summary = hit["summary"]
        else:
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                log.warning("run record %s unreadable: %s", path, err)
                continue
            summary = _brief(record.get("summary") or {})
            summary.setdefault("run_id", record.get("run_id", path.parent.name))
        fresh[path.parent.name] = {"stamp": stamp, "summary": summary}
        runs.append(summary)
    if fresh != cache:
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_path.with_name(f".{cache_path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(fresh))
            os.replace(tmp, cache_path)
        except OSError as err:  # a read-only folder still lists its runs
            log.debug("run summary cache not written: %s", err)
    runs.sort(key=lambda s: (s.get("start") or "", s["run_id"]))
    return runs


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    """A summary without its long lists (each failure, each new session): those stay in the
    run's manifest and its failures page; listings and the cache need only the counts."""
    brief = {k: v for k, v in summary.items() if k != "failure_list"}
    if isinstance(brief.get("sessions"), dict):
        counts = brief["sessions"].items()
        brief["sessions"] = {k: v for k, v in counts if not k.endswith("_sessions")}
    return brief


# -- sessions before and after --------------------------------------------------


def session_fingerprints(index: Path = SESSION_INDEX) -> dict[str, str]:
    """project/session -> fingerprint, from discovery's index (empty before the first run)."""
    found: dict[str, str] = {}
    try:
        with open(index, newline="") as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                found[f"{row['project']}/{row['session']}"] = row["fingerprint"]
    except FileNotFoundError:
        pass
    return found


def compare_sessions(before: dict[str, str], after: dict[str, str]) -> dict[str, Any]:
    new = sorted(k for k in after if k not in before)
    changed = sorted(k for k in after if k in before and before[k] != after[k])
    removed = sorted(k for k in before if k not in after)
    return {
        "new": len(new),
        "changed": len(changed),
        "unchanged": len(after) - len(new) - len(changed),
        "removed": len(removed),
        "new_sessions": new,
        "changed_sessions": changed,
        "removed_sessions": removed,
    }


# -- what the head saw happen ---------------------------------------------------


class RunLedger(logging.Handler):
    """Counts Snakemake's job events in the head: handed on, finished, failed."""

    def __init__(self) -> None:
        super().__init__()
        self.jobs: dict[int, tuple[str, dict[str, str]]] = {}  # jobid -> (rule, wildcards)
        self.finished: list[tuple[str, dict[str, str]]] = []
        self.failed: list[dict[str, Any]] = []
        self.interrupted = False  # Ctrl-C (or the watcher's SIGINT) ended the run
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        event = str(getattr(record, "event", ""))
        try:
            with self._lock:
                if event == "job_info":
                    self.jobs[int(record.jobid)] = (record.rule_name, dict(record.wildcards or {}))
                elif event == "job_finished":
                    self.finished.append(self.jobs.get(int(record.job_id), ("?", {})))
                elif not event and USER_STOP in str(record.msg):
                    self.interrupted = True
                elif event == "job_error":
                    _, wildcards = self.jobs.get(int(record.jobid), ("", {}))
                    self.failed.append(
                        {
                            "rule": record.rule_name,
                            "wildcards": wildcards,
                            "log": [str(p) for p in (getattr(record, "log", None) or [])],
                        }
                    )
        except Exception as err:  # a record is a record: never break the scheduler over it
            log.debug("run ledger ignored a %s event: %s", event, err)


class _Run:
    def __init__(
        self,
        run_id: str,
        start: str,
        sessions_before: dict[str, str],
        ledger: RunLedger,
        compute_rules: dict[str, str],
        t0: float,
    ):
        self.run_id = run_id
        self.start = start
        self.sessions_before = sessions_before
        self.ledger = ledger
        self.compute_rules = compute_rules
        self.t0 = t0

    def head_fields(self) -> dict[str, Any]:
        """Written at the start and again at the end (a writer of the manifest's other
        sections may have rewritten the file from its own copy in between)."""
        return {
            "start": self.start,
            "trigger": os.environ.get(TRIGGER_ENV, "manual"),
            "watch_run_id": os.environ.get(WATCH_ID_ENV),
            "host": os.uname().nodename,
            "pid": os.getpid(),
        }


_RUN: _Run | None = None


def start_run(compute_rules: dict[str, str]) -> str | None:
    """Snakefile onstart. ``compute_rules``: compute rule name -> algorithm name.

    A record is a record: a failure here is printed and never stops the run."""
    try:
        return _start_run(compute_rules)
    except Exception as err:
        log.error("run history: not recorded: %s: %s", type(err).__name__, err)
        return None


def finish_run(config: dict[str, Any], failed: bool) -> dict[str, Any] | None:
    """Snakefile onsuccess/onerror: write the summary, the pages, and notify a run by hand.

    Never raises: the hooks after it (alias token invalidation, scratch) must run."""
    try:
        return _finish_run(config, failed)
    except Exception as err:
        log.error("run history: summary not written: %s: %s", type(err).__name__, err)
        return None


def _start_run(compute_rules: dict[str, str]) -> str:
    global _RUN
    if _RUN is not None:
        return _RUN.run_id
    run_id = current_run_id()
    ledger = RunLedger()
    logging.getLogger(SNAKEMAKE_LOGGER).addHandler(ledger)
    _RUN = _Run(run_id, now_iso(), session_fingerprints(), ledger, dict(compute_rules), time.time())
    merge_summary(run_id, _RUN.head_fields() | {"outcome": "running"})
    return run_id


def _finish_run(config: dict[str, Any], failed: bool) -> dict[str, Any] | None:
    global _RUN
    if _RUN is None:
        return None
    run, _RUN = _RUN, None
    logging.getLogger(SNAKEMAKE_LOGGER).removeHandler(run.ledger)
    summary = run.head_fields() | {
        "end": now_iso(),
        "sessions": compare_sessions(run.sessions_before, session_fingerprints()),
        "jobs": dict(sorted(Counter(rule for rule, _ in run.ledger.finished).items())),
        "jobs_failed": dict(sorted(Counter(f["rule"] for f in run.ledger.failed).items())),
        "exit_status": 1 if failed else 0,
        "outcome": ("interrupted" if run.ledger.interrupted else "failed") if failed else "success",
    }
    failures = result_failures(run.ledger.finished, run.compute_rules) + job_failures(
        run.ledger.failed
    )
    summary["failures"] = failures_by_reason(failures)
    summary["failure_list"] = failures
    pool = pool_usage(run.t0)
    if pool:
        summary["pool"] = pool
    merge_summary(run.run_id, summary)
    write_pages(run.run_id)
    if not os.environ.get(WATCH_ID_ENV):  # a run by hand; the watcher notifies for its own runs
        notify(config, read_record(run.run_id).get("summary", {}))
    return summary


def finalise_run(
    run_id: str,
    exit_status: int,
    start: str,
    trigger: str,
    started_at: float,
    note: str = "",
    root: Path = Path("."),
) -> dict[str, Any]:
    """The watcher, after Snakemake exited: the real exit status, and a record even when
    Snakemake stopped before its hooks ran (bad config, its lock held, nothing to do)."""
    record = read_record(run_id, root).get("summary", {})
    summary: dict[str, Any] = {"exit_status": exit_status, "trigger": trigger}
    if exit_status == 0:
        summary["outcome"] = "success"
    elif exit_status in (130, -2) or note == "interrupted":
        summary["outcome"] = "interrupted"
    else:
        summary["outcome"] = "failed"
    if not record.get("start"):
        summary["start"] = start
    if not record.get("end"):
        summary["end"] = now_iso()
    if "sessions" not in record:  # hooks did not run: no job ran
        summary.update(jobs={}, jobs_failed={}, failures={}, failure_list=[])
        pool = pool_usage(started_at, root)
        if pool:
            summary["pool"] = pool
    if note:
        summary["note"] = note
    merge_summary(run_id, summary, root)
    write_pages(run_id, root)
    return read_record(run_id, root)["summary"]


# -- failures -------------------------------------------------------------------


def result_failures(
    finished: list[tuple[str, dict[str, str]]],
    compute_rules: dict[str, str],
    root: Path = Path("."),
) -> list[dict[str, Any]]:
    """Scans whose result, written by a compute job of this run, records a failure."""
    failures = []
    for rule, wildcards in finished:
        algorithm = compute_rules.get(rule)
        if algorithm is None:
            continue
        project, session = wildcards.get("project", ""), wildcards.get("session", "")
        path = root / "results/kqi" / project / session / f"{algorithm}.json"
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        base = {"project": project, "session": session, "algorithm": algorithm}
        if not doc.get("scans") and doc.get("error"):
            failures.append(base | {"scan": "", "reason": doc["error"]})
        for scan in doc.get("scans", ()):
            if scan.get("status") == "failed":
                failures.append(
                    base
                    | {"scan": str(scan.get("scan", "")), "reason": scan.get("error") or "failed"}
                )
    return failures


def job_failures(failed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Jobs that failed (archive trouble, a crash of the job itself): the session is retried."""
    return [
        {
            "project": f["wildcards"].get("project", ""),
            "session": f["wildcards"].get("session", ""),
            "algorithm": "",
            "scan": "",
            "rule": f["rule"],
            "log": f["log"],
            "reason": f"job {f['rule']} failed",
        }
        for f in failed
    ]


def reason_category(reason: str) -> str:
    """'scan not readable: truncated ...' -> 'scan not readable'; counts group on this."""
    return reason.split(":", 1)[0].strip() or "unknown"


def failures_by_reason(failures: list[dict[str, Any]]) -> dict[str, int]:
    return dict(sorted(Counter(reason_category(f["reason"]) for f in failures).items()))


# -- the OpenStack pool -----------------------------------------------------------


def pool_usage(since: float, root: Path = Path(".")) -> dict[str, Any] | None:
    """VM-minutes and servers of pool runs that ended during this run (the executor writes
    .snakemake/openstack/<pool-run>/summary.json when it shuts down), or None."""
    vm_minutes, created, found = 0.0, 0, False
    for path in sorted((root / POOL_RUNS).glob("*/summary.json")):
        try:
            if path.stat().st_mtime < since:
                continue
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        found = True
        vm_minutes += float(data.get("vm_minutes") or 0.0)
        created += int(data.get("servers_created") or 0)
    return {"vm_minutes": round(vm_minutes, 2), "servers": created} if found else None


# -- pages ----------------------------------------------------------------------------


def _cell(value: Any) -> str:
    return f"<td>{html.escape(str(value))}</td>"


def write_pages(run_id: str, root: Path = Path(".")) -> None:
    """This run's failures page and the history page of every run."""
    summary = read_record(run_id, root).get("summary", {})
    failures = summary.get("failure_list") or []
    rows = "".join(
        "<tr>"
        + "".join(
            _cell(f.get(k, "")) for k in ("project", "session", "scan", "algorithm", "reason")
        )
        + "</tr>"
        for f in failures
    )

    def field(key: str) -> str:
        return html.escape(str(summary.get(key, "?")))

    header = "".join(f"<th>{k}</th>" for k in ("project", "session", "scan", "algorithm", "reason"))
    table = f"<table border='1'><tr>{header}</tr>{rows}</table>" if failures else "<p>None.</p>"
    page = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>qmroct run {html.escape(run_id)}: failures</title></head><body>",
        f"<h1>Run {html.escape(run_id)}</h1>",
        f"<p>{field('outcome')} (exit {field('exit_status')}), trigger {field('trigger')}, "
        f"{field('start')} to {field('end')}. <a href='{MANIFEST}'>manifest.json</a></p>",
        "<h2>Failures</h2>",
        table,
        "</body></html>",
    ]
    (run_dir(run_id, root) / "failures.html").write_text("\n".join(page))
    write_history_page(root)


def write_history_page(root: Path = Path(".")) -> Path:
    path = root / HISTORY_PAGE
    path.parent.mkdir(parents=True, exist_ok=True)
    body = []
    for s in reversed(list_runs(root)):
        rid = s["run_id"]
        sessions = s.get("sessions") or {}
        n_failures = sum((s.get("failures") or {}).values())
        link = f"../runs/{html.escape(rid)}/failures.html"
        pool = s.get("pool") or {}
        body.append(
            "<tr>"
            + _cell(rid)
            + _cell(s.get("start", ""))
            + _cell(s.get("end", ""))
            + _cell(s.get("trigger", ""))
            + _cell("/".join(str(sessions.get(k, 0)) for k in ("new", "changed", "unchanged")))
            + _cell(sum((s.get("jobs") or {}).values()))
            + f"<td><a href='{link}'>{n_failures}</a></td>"
            + _cell(f"{pool['vm_minutes']} min, {pool['servers']} servers" if pool else "")
            + _cell(f"{s.get('outcome', '?')} ({s.get('exit_status', '?')})")
            + "</tr>"
        )
    path.write_text(
        "\n".join(
            [
                "<!DOCTYPE html><html><head><meta charset='utf-8'>",
                "<title>qmroct run history</title><style>body{font-family:system-ui,sans-serif;"
                "margin:2em}table{border-collapse:collapse;font-size:13px}"
                "td,th{border:1px solid #ccc;padding:3px 7px}</style></head><body>",
                "<h1>Run history</h1><p><a href='index.html'>quality report</a></p>",
                "<table><tr><th>run</th><th>start</th><th>end</th><th>trigger</th>"
                "<th>sessions new/changed/unchanged</th><th>jobs</th><th>failures</th><th>pool</th>"
                "<th>outcome (exit)</th></tr>",
                *body,
                "</table></body></html>",
            ]
        )
    )
    return path


def runs_table(runs: list[dict[str, Any]]) -> str:
    """``qmroct runs``: one line per run, newest last."""
    header = [
        "run",
        "start",
        "min",
        "trigger",
        "new",
        "chg",
        "same",
        "jobs",
        "failures",
        "VM-min",
        "outcome",
    ]
    rows = [header]
    for s in runs:
        sessions = s.get("sessions") or {}
        failures = s.get("failures") or {}
        rows.append(
            [
                s["run_id"],
                str(s.get("start", ""))[:19],
                _minutes(s.get("start"), s.get("end")),
                str(s.get("trigger", "")),
                str(sessions.get("new", "")),
                str(sessions.get("changed", "")),
                str(sessions.get("unchanged", "")),
                str(sum((s.get("jobs") or {}).values())),
                ", ".join(f"{k} {v}" for k, v in failures.items()) or "0",
                str((s.get("pool") or {}).get("vm_minutes", "")),
                f"{s.get('outcome', '?')} ({s.get('exit_status', '?')})",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _minutes(start: str | None, end: str | None) -> str:
    try:
        delta = datetime.fromisoformat(str(end)) - datetime.fromisoformat(str(start))
    except (TypeError, ValueError):
        return ""
    return f"{delta.total_seconds() / 60:.1f}"


# -- notify -----------------------------------------------------------------------------


def notify_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The notify command's environment: everything but credentials."""
    environ = dict(os.environ if environ is None else environ)
    return {k: v for k, v in environ.items() if k not in SECRET_NAMES and not SECRET_ENV.search(k)}


def redact(text: str, environ: dict[str, str] | None = None) -> str:
    """Replace the value of every secret-looking environment variable found in ``text``."""
    environ = dict(os.environ if environ is None else environ)
    for key, value in environ.items():
        if value and len(value) >= 4 and (key in SECRET_NAMES or SECRET_ENV.search(key)):
            text = text.replace(value, "***")
    return text


def notify(config: dict[str, Any], summary: dict[str, Any]) -> int | None:
    """Run the configured notify command with the run summary as JSON on stdin.

    Never fails the run: a broken notifier is logged. Returns its exit status, or None
    when no command is configured or it could not run."""
    spec = config.get("notify") or {}
    command = spec.get("command")
    if not command:
        return None
    argv = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
    payload = redact(json.dumps(summary, indent=1, sort_keys=True))
    try:
        proc = subprocess.run(
            argv,
            input=payload,
            text=True,
            env=notify_env(),
            capture_output=True,
            timeout=float(spec.get("timeout_s", 60)),
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        log.warning("notify command %s did not run: %s", argv[0], err)
        return None
    if proc.returncode != 0:
        log.warning(
            "notify command %s exited %d: %s", argv[0], proc.returncode, proc.stderr.strip()[-500:]
        )
    return proc.returncode
