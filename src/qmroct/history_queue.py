"""Queued rows on XNAT's History, written by the head when it hands a job on.

XNAT's own pipeline engine marked a run *Queued* when it went to the batch
queue, *Running* when it started and *Complete*/*Failed* at the end; researchers
read that History to see what ran. Snakemake gives a workflow no per-job hook
before a job starts, but it does log a ``job_info`` event for every job at the
moment the scheduler hands it to the executor (``run_job_pre``, also for each
job of a group). That is when a job enters the queue: on the OpenStack pool it
may then wait minutes for a free VM. This module listens for those events in
the head process (a logging handler installed by the Snakefile's ``onstart``)
and opens one History row per (session, algorithm) with status Queued.

The compute job then claims that row (``Archive.queued_run``) and moves it to
Running; write-back moves it to Complete or Failed. If the run stops before a
queued job starts (an error elsewhere, Ctrl-C, a group whose first job failed),
``stop_history_queue(failed=True)`` marks the rows still Queued as Failed, so no
row claims to be waiting for a run that is over.

Only the head runs this (remote jobs run with ``--no-hooks``). A History write
that fails is logged and never fails the run: History is a record, not a gate.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from qmroct.archive.base import Archive, Session

log = logging.getLogger("qmroct.history")

# Snakemake's own logger; job_info events carry rule_name and wildcards.
SNAKEMAKE_LOGGER = "snakemake.logging"
JOB_INFO = "job_info"  # snakemake_interface_logger_plugins LogEvent.JOB_INFO (a StrEnum)
NOT_RUN = "not run: the workflow stopped before this job started"


class QueuedHistory(logging.Handler):
    """Opens a Queued History row for every compute job the scheduler hands on."""

    def __init__(self, archive: Archive, manifest_pattern: str, rules: dict[str, str]):
        """``manifest_pattern``: the session manifest path with {project}/{session}
        wildcards; ``rules``: compute rule name -> algorithm name."""
        super().__init__()
        self.archive = archive
        self.manifest_pattern = manifest_pattern
        self.rules = dict(rules)
        self.queued: list[tuple[Session, str, str]] = []  # (session, algorithm, launch time)
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if str(getattr(record, "event", "")) != JOB_INFO:
            return
        algorithm = self.rules.get(getattr(record, "rule_name", ""))
        if algorithm is None:
            return
        try:
            self.queue(dict(getattr(record, "wildcards", None) or {}), algorithm)
        except Exception as err:  # never break Snakemake's scheduler over a History row
            log.warning("History: could not mark %s Queued: %s", algorithm, err)

    def queue(self, wildcards: dict[str, str], algorithm: str) -> str | None:
        from qmroct.archive import load_manifest
        from qmroct.fileio import now_iso

        session = load_manifest(self.manifest_pattern.format(**wildcards))
        key = self.archive.record_history(session, algorithm, "Queued", launch_time=now_iso())
        if key:
            with self._lock:
                self.queued.append((session, algorithm, key))
        return key

    def close_run(self, failed: bool) -> int:
        """End of the run: rows this run queued and nobody started become Failed.

        Returns how many rows were closed that way. After a successful run every
        queued job has run, so only a failed run needs the look-up."""
        with self._lock:
            queued, self.queued = self.queued, []
        if not failed:
            return 0
        closed = 0
        for session, algorithm, key in queued:
            try:
                # A job claims the newest Queued row of its (session, algorithm); this
                # run's row is the newest, so it is unclaimed exactly when the claim
                # a job would make now still returns it.
                if self.archive.queued_run(session, algorithm) == key:
                    self.archive.record_history(
                        session, algorithm, "Failed", detail=NOT_RUN, launch_time=key
                    )
                    closed += 1
            except Exception as err:
                log.warning("History of %s (%s) not closed: %s", session.key, algorithm, err)
        return closed


_HANDLER: QueuedHistory | None = None


def start_history_queue(
    config: dict[str, Any], manifest_pattern: str, rules: dict[str, str]
) -> QueuedHistory | None:
    """Snakefile onstart: listen for jobs handed to the executor (XNAT with History only).

    Call it before start_archive_tokens: the head keeps its own connection with the
    user's credentials, so the History survives the alias tokens' renewal."""
    global _HANDLER
    archive_config = config.get("archive", {})
    if (
        archive_config.get("backend") != "xnat"
        or not archive_config.get("history", True)
        or _HANDLER is not None
    ):
        return _HANDLER
    from qmroct.archive import archive_for

    archive = archive_for(config)
    archive.check()  # logs in now: binds the user's own credentials, before the tokens replace them
    _HANDLER = QueuedHistory(archive, manifest_pattern, rules)
    logging.getLogger(SNAKEMAKE_LOGGER).addHandler(_HANDLER)
    return _HANDLER


def stop_history_queue(failed: bool) -> None:
    """Snakefile onsuccess/onerror: stop listening; on error, close what never started."""
    global _HANDLER
    if _HANDLER is None:
        return
    handler, _HANDLER = _HANDLER, None
    logging.getLogger(SNAKEMAKE_LOGGER).removeHandler(handler)
    closed = handler.close_run(failed)
    if closed:
        log.warning("History: %d queued run(s) marked Failed (%s)", closed, NOT_RUN)
    handler.archive.close()
