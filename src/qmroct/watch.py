"""``qmroct watch``: assess new and changed sessions without anyone starting a run.

Every ``--interval`` seconds the watcher asks the archive for its cheap state token
(the same token the discovery checkpoint keys on: a stat walk of a directory archive,
the sessions listing of an XNAT) and starts the workflow, the real ``snakemake``
with the arguments it was given, only when something changed: the token, the config
file, or the last run failed (a retry, backed off). An unchanged archive starts no
Snakemake at all, so with the OpenStack profile an idle cycle boots no VM.

Rules it keeps:

* one run at a time per folder: :mod:`qmroct.runlock` (a crashed watcher's lock is
  taken over once neither it nor its run is alive; Snakemake's own lock left by a
  killed run is then removed with ``snakemake --unlock`` before the next run);
* an unreachable archive is logged and polled again later, each time twice as late,
  up to ``--max-backoff``; the watcher never dies of it;
* SIGTERM/SIGINT end the current run as Ctrl-C does (SIGINT to Snakemake's process
  group: Snakemake cancels its jobs, runs ``onerror``, releases its lock), wait for
  it, record it as interrupted, then exit. Every watcher run passes
  ``--rerun-incomplete``, so the next run redoes what the interrupted one left half
  written and computes what it never reached;
* its state (last token, next poll, pid, archive reachability) is
  ``.qmroct/watch/state.json``, read by ``qmroct status``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from qmroct import runhistory
from qmroct.runlock import LockBusy, RunLock

log = logging.getLogger("qmroct.watch")

STATE_DIR = Path(".qmroct/watch")
STATE_FILE = STATE_DIR / "state.json"
LOCK_FILE = STATE_DIR / "lock"
SNAKEMAKE_LOCKED = "Directory cannot be locked"  # snakemake's LockException message


@dataclass
class WatchOptions:
    interval: float = 300.0
    once: bool = False
    max_backoff: float = 3600.0
    configfile: Path = Path("config.yaml")
    snakemake_args: list[str] = field(default_factory=list)
    snakemake: list[str] = field(default_factory=lambda: [sys.executable, "-m", "snakemake"])

    def run_args(self) -> list[str]:
        args = list(self.snakemake_args) or ["--cores", "all"]
        if "--rerun-incomplete" not in args and "--ri" not in args:
            args.append("--rerun-incomplete")
        return args


def iso(t: float | None) -> str | None:
    return (
        None if t is None else datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")
    )


def backoff_delay(interval: float, failures: int, cap: float) -> float:
    """interval, 2 x interval, 4 x interval ... for the 1st, 2nd, 3rd failure, at most cap."""
    if failures <= 0:
        return interval
    return min(interval * 2 ** (failures - 1), max(cap, interval))


def read_state(root: Path = Path(".")) -> dict[str, Any]:
    try:
        return json.loads((root / STATE_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return {}


def load_config(path: Path) -> dict[str, Any]:
    import yaml

    from qmroct.config import ConfigError, validate_schema

    try:
        config = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    validate_schema(config)
    return config


class Watcher:
    def __init__(self, options: WatchOptions):
        self.options = options
        self.state: dict[str, Any] = read_state()
        self.lock = RunLock(LOCK_FILE)
        self.stop = threading.Event()
        self.proc: subprocess.Popen | None = None
        self.interrupted = False
        self.needs_unlock = False

    # -- state -------------------------------------------------------------------
    def save(self, **changes: Any) -> None:
        self.state.update(changes)
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = STATE_FILE.with_name(f".{STATE_FILE.name}.tmp")
        tmp.write_text(json.dumps(self.state, indent=1, sort_keys=True))
        os.replace(tmp, STATE_FILE)

    # -- signals -----------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        log.info(
            "%s: %s",
            name,
            "ending the current run as Ctrl-C would, then stopping" if self.proc else "stopping",
        )
        self.stop.set()
        proc = self.proc
        if proc is not None and proc.poll() is None:
            self.interrupted = True
            try:
                os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does to a foreground snakemake
            except ProcessLookupError:
                pass

    # -- the loop ----------------------------------------------------------------
    def run(self) -> int:
        try:
            self.lock.acquire()
        except LockBusy as busy:
            log.warning("not starting: %s", busy)
            print(
                f"qmroct watch: another watcher or its run is active here ({busy}); "
                "nothing started",
                file=sys.stderr,
            )
            return 0 if self.options.once else 2
        stale = self.lock.took_over
        if stale is not None:
            log.warning("took over the stale lock of pid %s (%s)", stale.pid, stale.since)
            if stale.run:  # its Snakemake died too, possibly holding Snakemake's own lock
                self.needs_unlock = True
                self.close_dead_run(str(stale.run.get("run_id") or ""))
        previous = {
            signum: signal.signal(signum, self._on_signal)
            for signum in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            self.save(
                pid=os.getpid(),
                host=os.uname().nodename,
                started=iso(time.time()),
                stopped=None,
                mode="once" if self.options.once else "watch",
                interval=self.options.interval,
                run=None,
            )
            while not self.stop.is_set():
                delay = self.check()
                if self.options.once or self.stop.is_set():
                    break
                self.save(next_poll=iso(time.time() + delay))
                self.stop.wait(delay)
            return 0
        finally:
            self.save(stopped=iso(time.time()), next_poll=None, run=None)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self.lock.release()

    def close_dead_run(self, watch_id: str) -> None:
        """The record of a run that died with its watcher says so instead of 'running'."""
        run_id = runhistory.find_watch_run(watch_id, 0.0) if watch_id else None
        if run_id is None:
            return
        summary = runhistory.read_record(run_id).get("summary", {})
        if summary.get("outcome") in (None, "running"):
            runhistory.merge_summary(
                run_id,
                {
                    "outcome": "killed",
                    "exit_status": None,
                    "note": "the watcher and this run died without ending it",
                },
            )
            runhistory.write_pages(run_id)
        self.save(retry_at=time.time())  # finish what it left at the first check

    def check(self) -> float:
        """One poll; runs the workflow if needed. Returns the delay until the next poll."""
        from qmroct.archive.base import ArchiveError
        from qmroct.config import ConfigError
        from qmroct.discovery import archive_state_token

        now = time.time()
        try:
            config = load_config(self.options.configfile)
            token = archive_state_token(config)
        except (ArchiveError, ConfigError, OSError, ValueError) as err:
            failures = int(self.state.get("archive_failures", 0)) + 1
            delay = backoff_delay(self.options.interval, failures, self.options.max_backoff)
            # A broken config.yaml stops assessment just as an unreachable archive does, and
            # is retried the same way (someone is probably editing it); status names which.
            cause = "config" if isinstance(err, ConfigError) else "archive"
            log.warning("%s not usable (%s); next try in %.1f s", cause, err, delay)
            self.save(
                last_check=iso(now),
                archive={
                    "reachable": False,
                    "cause": cause,
                    "error": str(err),
                    "since": (
                        (self.state.get("archive") or {}).get("since") if failures > 1 else iso(now)
                    ),
                },
                archive_failures=failures,
            )
            return delay
        if self.state.get("archive_failures"):
            log.info("archive reachable again")
        self.save(last_check=iso(now), archive={"reachable": True}, archive_failures=0)

        digest = config_digest(self.options.configfile)
        settled = self.state.get("settled") or {}
        trigger = None
        if not settled:
            trigger = "first check"
        elif token != settled.get("token"):
            trigger = "archive changed"
        elif digest != settled.get("config"):
            trigger = "config changed"
        elif self.state.get("retry_at") and now >= float(self.state["retry_at"]):
            trigger = "retry after failed run"
        if trigger is None:
            log.info("no change")
            return self.options.interval
        if self.stop.is_set():  # asked to stop while polling: start nothing
            return 0.0
        self.run_workflow(trigger, token, digest, config)
        if self.state.get("retry_at") and not self.stop.is_set():
            return max(0.0, min(self.options.interval, float(self.state["retry_at"]) - time.time()))
        return self.options.interval

    # -- one run -----------------------------------------------------------------
    def run_workflow(self, trigger: str, token: str, digest: str, config: dict[str, Any]) -> None:
        args = self.options.run_args()
        if self.needs_unlock:
            log.info("removing the lock of the dead run (snakemake --unlock)")
            subprocess.run(
                [*self.options.snakemake, "--unlock", *args], capture_output=True, text=True
            )
            self.needs_unlock = False
        watch_id = runhistory.new_run_id()  # the run's id unless the run manifest names it
        logs = STATE_DIR / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{watch_id}.log"
        env = dict(
            os.environ,
            **{
                runhistory.RUN_ID_ENV: watch_id,
                runhistory.WATCH_ID_ENV: watch_id,
                runhistory.TRIGGER_ENV: trigger,
            },
        )
        started_at = time.time()
        log.info("run %s (%s): snakemake %s", watch_id, trigger, " ".join(args))
        self.interrupted = False
        with open(log_path, "w") as out:
            # Its own session: a terminal's Ctrl-C reaches the watcher only, which then
            # ends the run on purpose (and records it) instead of racing it.
            self.proc = subprocess.Popen(
                [*self.options.snakemake, *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
                start_new_session=True,
            )
            self.lock.set_run(self.proc.pid, watch_id)
            self.save(
                run={
                    "id": watch_id,
                    "pid": self.proc.pid,
                    "started": iso(started_at),
                    "trigger": trigger,
                }
            )
            if self.stop.is_set():  # a signal between the check and the start
                self.interrupted = True
                os.killpg(self.proc.pid, signal.SIGINT)
            tee = threading.Thread(target=_tee, args=(self.proc.stdout, out), daemon=True)
            tee.start()
            status = self.proc.wait()
            tee.join()
        self.proc = None
        self.lock.set_run(None)
        text = log_path.read_text(errors="replace")
        run_id = runhistory.find_watch_run(watch_id, started_at)
        if status != 0 and run_id is None and SNAKEMAKE_LOCKED in text:
            # Someone else's snakemake (a run by hand) is busy here: not a run of ours.
            log.warning("snakemake's lock is held by another run; trying again at the next poll")
            log_path.unlink()
            self.save(run=None, busy=iso(time.time()))
            return
        hooks_ran = run_id is not None
        run_id = run_id or watch_id  # Snakemake stopped before its hooks: the watcher records it
        runhistory.run_dir(run_id).mkdir(parents=True, exist_ok=True)
        os.replace(log_path, runhistory.run_dir(run_id) / "snakemake.log")
        if status < 0 and status != -signal.SIGINT:
            self.needs_unlock = True  # killed hard: its lock and incomplete markers stay
        if status == 0:
            note = ""  # finished before the signal reached it
        elif self.interrupted:
            note = "interrupted"
        else:
            note = "" if hooks_ran else _last_error(text)
        summary = runhistory.finalise_run(
            run_id, status, iso(started_at), trigger, started_at, note=note
        )
        runhistory.notify(config, summary)
        if status == 0:
            self.save(
                run=None,
                last_run=run_id,
                settled={"token": token, "config": digest},
                failed_runs=0,
                retry_at=None,
            )
        else:
            # An interrupted run is finished by the next watcher at its first check; a failed
            # one (archive trouble in a job) is retried later and later while it keeps failing.
            failed = int(self.state.get("failed_runs", 0)) + (0 if self.interrupted else 1)
            retry = time.time() + (
                0.0
                if self.interrupted
                else backoff_delay(self.options.interval, failed, self.options.max_backoff)
            )
            self.save(run=None, last_run=run_id, failed_runs=failed, retry_at=retry)
        log.info(
            "run %s: %s (exit %s), recorded in %s",
            watch_id,
            summary.get("outcome"),
            status,
            runhistory.run_dir(run_id),
        )


def _tee(stream, out) -> None:
    """Snakemake's output into the run's log and into the watcher's own (journal, terminal)."""
    for line in stream:
        out.write(line)
        out.flush()
        sys.stderr.write(line)
    stream.close()


def _last_error(text: str) -> str:
    """The error Snakemake stopped with: its 'XxxError in ...' line and the message after it."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for i in range(len(lines) - 1, -1, -1):
        if "Error" in lines[i] or "error" in lines[i]:
            return " ".join(lines[i : i + 2])[:500]
    return lines[-1][:500] if lines else "snakemake printed nothing"


def config_digest(path: Path) -> str:
    try:
        return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()[:32]
    except OSError:
        return ""


def watch(options: WatchOptions) -> int:
    return Watcher(options).run()
