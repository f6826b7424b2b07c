"""XNAT History: the one module that reads and writes qmroct's workflow rows.

Researchers read a session's History (``wrk:workflowData`` rows) to see what
ran on it. qmroct keeps one row per algorithm run, keyed as XNAT keys it:
(experiment ID, pipeline name, launch time). The row moves Queued (the head
hands the job on, ``qmroct.history_queue``) -> Running (the compute job) ->
Complete or Failed (write-back); a run that dies first is closed as
``Failed: interrupted`` by the next run.

How XNAT answers, and therefore which calls this module makes:

- ``PUT /data/workflows?wrk:workflowData/...`` creates or updates the row
  matched on all three keys; a new row also needs ``data_type``
  (``WorkflowResource.handlePut``).
- ``GET /data/workflows?format=json&<the three keys>`` returns exactly that
  row; with fewer keys there is no row (404): XNAT looks it up with
  ``WorkflowUtils.getUniqueWorkflow``, never as a list.
- Listings go through ``GET /data/services/workflows/<pipeline>?experiment=<ID>
  &display=ALL&format=json`` (``WorkflowsRestlet``), which matches the pipeline
  with ``LIKE '%<lower-cased name>%'``: rows of other pipelines whose names
  contain ours come back too, so the exact names are filtered here.

History is a record, not a gate: every call goes through ``_guard``, which
logs a warning, keeps it in ``warnings`` (the steps put them in their result
or receipt) and never raises into a run.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from qmroct.archive.base import ArchiveError, Session
from qmroct.archive.xnat_http import XnatHttp, XnatNotFound

if TYPE_CHECKING:
    from qmroct.assessment import Assessment

log = logging.getLogger("qmroct.archive.xnat")

STATUSES = ("Queued", "Running", "Complete", "Failed")
INTERRUPTED = "interrupted: the run that started this job ended without finishing it"
T = TypeVar("T")


class XnatHistory:
    """qmroct's History rows on one XNAT, through the archive's connection."""

    def __init__(self, http: Callable[[], XnatHttp], prefix: str = "qmroct", enabled: bool = True):
        if prefix != prefix.lower():
            # WorkflowsRestlet lower-cases the name it looks for and compares with a
            # case-sensitive LIKE: a prefix with capitals would never be listed.
            raise ArchiveError(f"XNAT archive: pipeline_prefix must be lower case, got {prefix!r}")
        self._http = http
        self.prefix = prefix
        self.enabled = enabled
        self.warnings: list[str] = []

    def pipeline(self, algorithm: str) -> str:
        return f"{self.prefix} {algorithm}"

    # ------------------------------------------------------------------ the guard
    def _guard(self, what: str, call: Callable[[], T], default: T) -> T:
        """Run one History call; a failure is a warning, never the run's failure."""
        if not self.enabled:
            return default
        try:
            return call()
        except Exception as err:  # noqa: BLE001 - History must never stop a run
            message = f"XNAT History: {what} not recorded: {err}"
            log.warning(message)
            self.warnings.append(message)
            return default

    # ------------------------------------------------------------------ writes
    def record(
        self,
        session: Session,
        algorithm: str,
        status: str,
        detail: str = "",
        launch_time: str | None = None,
    ) -> str | None:
        """Create or move the run's row; returns its launch time in XNAT's spelling
        (the row's key), or None when History is off or the write failed."""
        if status not in STATUSES:
            raise ValueError(f"unknown workflow status {status}")
        key = history_key(launch_time) if launch_time else xnat_time(dt.datetime.now())

        def put() -> str:
            self._http().put(
                "/data/workflows",
                params=self._row(session, algorithm, status, detail, key),
                what=f"history of {session.key}",
            )
            return key

        recorded = self._guard(f"{status} for {session.key} {algorithm}", put, None)
        if status == "Running" and recorded:
            # one job per (session, algorithm) runs at a time: any other row still
            # open is what a killed run left (kill -9 runs no handler)
            self.close_interrupted(session, algorithm, keep=recorded)
        return recorded

    def _row(
        self, session: Session, algorithm: str, status: str, detail: str, key: str
    ) -> dict[str, str]:
        done = status in ("Complete", "Failed")
        return {
            "wrk:workflowData/id": session.id,
            "wrk:workflowData/pipeline_name": self.pipeline(algorithm),
            "wrk:workflowData/launch_time": key,
            "wrk:workflowData/status": status,
            "wrk:workflowData/data_type": session.session_type,
            "wrk:workflowData/ExternalID": session.project,
            "wrk:workflowData/category": "QC",
            "wrk:workflowData/type": "PROCESS",
            "wrk:workflowData/step_description": (f"{status}: {detail}" if detail else status)[
                :250
            ],
            "wrk:workflowData/details": detail[:2000],
            "wrk:workflowData/percentageComplete": "100" if done else "0",
        }

    def finish(
        self, session: Session, assessment: Assessment, note: str = "", only_if_open: bool = False
    ) -> None:
        """Complete or Failed on the row the compute job opened (same launch time)."""
        if not self.enabled:
            return
        status = "Failed" if assessment.status == "failed" else "Complete"
        key = launch_time_of(assessment)
        if only_if_open and self.status(session, assessment.algorithm, key) in (None, status):
            return  # no such row, or it ended already: nothing to write
        detail = status_detail(assessment) + (f" ({note})" if note else "")
        self.record(session, assessment.algorithm, status, detail=detail, launch_time=key)

    def close_interrupted(self, session: Session, algorithm: str, keep: str = "") -> int:
        """Rows of this algorithm left Queued or Running by a run that died
        (kill -9: no handler ran) become ``Failed: interrupted``; ``keep`` is the
        row of the job now running."""
        closed = 0
        for row in self.entries(session, algorithm):
            if row.get("status") in ("Queued", "Running") and row.get("launch_time") != keep:
                if self.record(
                    session,
                    algorithm,
                    "Failed",
                    detail=INTERRUPTED,
                    launch_time=str(row["launch_time"]),
                ):
                    closed += 1
        return closed

    # ------------------------------------------------------------------ reads
    def status(self, session: Session, algorithm: str, launch_time: str) -> str | None:
        """The status of exactly one row, looked up by all three keys."""

        def get() -> str | None:
            params = {
                "format": "json",
                "wrk:workflowData/id": session.id,
                "wrk:workflowData/pipeline_name": self.pipeline(algorithm),
                "wrk:workflowData/launch_time": history_key(launch_time),
            }
            try:
                response = self._http().get(
                    "/data/workflows", params=params, what=f"history of {session.key}"
                )
            except XnatNotFound:
                return None
            items = response.json().get("items", [])
            return items[0]["data_fields"].get("status") if items else None

        return self._guard(f"status of {session.key} {algorithm}", get, None)

    def entries(self, session: Session, algorithm: str | None = None) -> list[dict[str, Any]]:
        """qmroct's rows on the session (one algorithm's, or all), oldest first."""

        def listing() -> list[dict[str, Any]]:
            wanted = self.pipeline(algorithm) if algorithm else None
            response = self._http().get(
                f"/data/services/workflows/{quote(wanted or self.prefix)}",
                params={"experiment": session.id, "display": "ALL", "format": "json"},
                what=f"history of {session.key}",
            )
            rows = response.json().get("ResultSet", {}).get("Result", [])
            # LIKE matched substrings: keep exactly our pipeline names; and an
            # experiment XNAT cannot find (deleted) lists every experiment's rows
            ours = [r for r in rows if self._ours(r, session, wanted)]
            return sorted(
                ours, key=lambda r: (str(r.get("launch_time", "")), str(r.get("pipeline_name", "")))
            )

        return self._guard(f"listing of {session.key}", listing, [])

    def _ours(self, row: dict[str, Any], session: Session, wanted: str | None) -> bool:
        name = str(row.get("pipeline_name", ""))
        if (row.get("id") or row.get("ID")) != session.id:
            return False
        return name == wanted if wanted else name.startswith(self.prefix + " ")

    def queued_run(self, session: Session, algorithm: str) -> str | None:
        """The launch time of this algorithm's newest Queued row (the head queued
        the job), so the job moves that very row to Running."""
        queued = [
            str(r["launch_time"])
            for r in self.entries(session, algorithm)
            if r.get("status") == "Queued" and r.get("launch_time")
        ]
        return max(queued) if queued else None


# ====================================================================== launch times
def xnat_time(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def history_key(launch_time: str) -> str:
    """A row's launch time in XNAT's spelling: ISO times (a result's provenance)
    are converted (their wall-clock time, as the head and the job both write it),
    XNAT's own (a row XNAT listed) pass as they are."""
    if "T" not in launch_time:
        return launch_time
    return xnat_time(dt.datetime.fromisoformat(launch_time.replace("Z", "+00:00")))


def launch_time_of(assessment: Assessment) -> str:
    """The row's key: the Queued row the job claimed, else the job's start."""
    provenance = assessment.provenance or {}
    key = str(provenance.get("history_launch_time") or provenance.get("start_time") or "")
    try:
        return history_key(key) if key else xnat_time(dt.datetime.now())
    except ValueError:
        return xnat_time(dt.datetime.now())


def status_detail(assessment: Assessment) -> str:
    errors = [f"scan {s['scan']}: {s['error']}" for s in assessment.scans if s.get("error")]
    text = f"{assessment.algorithm} {assessment.version} {assessment.status}"
    return text + ("; " + "; ".join(errors) if errors else "")
