"""The ``xnat`` archive backend: sessions in a real XNAT, through pyxnat.

Config (``archive:`` in config.yaml) gives the constructor's options; the
credentials never come from config: ``XNAT_USER``/``XNAT_PASS`` (as XNAT's
Container Service sets them, or an alias token handed down by the head process,
see ``xnat_tokens``) or else ``~/.netrc`` for the server's host.

- discover: every session of the configured projects and session types, with
  scans (ID, type, series description, quality) and their files (name, size,
  MD5 digest as XNAT keeps it), so the Session fingerprint changes when data do.
- fetch: streamed downloads, checked against size and digest, retried with
  backoff on 5xx/timeouts/dropped connections; a session deleted after
  discovery raises SessionUnavailable naming it.
- write_assessment: one ``xnat:qcAssessmentData`` assessor per session and
  algorithm (stable label, replaced in place), a resource with the KQI JSON and
  extra files, a workflow (History) entry, and, opt-in, the scans' ``quality``
  field (never over a value a person set; what qmroct set is recorded in the
  assessor's fields).
"""

from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor
import hashlib
import logging
import netrc
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from ..assessment import XNAT_NS, Assessment
from ..checksums import file_digest
from .base import Archive, ArchiveError, FileEntry, Scan, Session, SessionUnavailable, WriteOutcome
from .xnat_http import BrokenBody, XnatAuthError, XnatHttp, XnatNotFound, body_chunks

log = logging.getLogger("qmroct.archive.xnat")

DEFAULT_SESSION_TYPES = ("xnat:optSessionData",)
QUALITY_VALUES = ("usable", "questionable", "unusable")
QUALITY_FIELD = "qmroct_quality_scan_"  # + scan ID: what qmroct set, recorded in the assessor


def resolve_credentials(server: str | None, netrc_file: str | None = None,
                        environ: Any = None) -> tuple[str, str, str]:
    """(server, user, password) from the environment or ~/.netrc, never config.

    ``XNAT_HOST`` gives the server when config does not; ``XNAT_USER`` and
    ``XNAT_PASS`` win over ``~/.netrc`` (jobs get an alias token that way).
    """
    environ = os.environ if environ is None else environ
    server = (server or environ.get("XNAT_HOST") or "").rstrip("/")
    if not server:
        raise ArchiveError("XNAT archive: no server URL (set archive.server in config or XNAT_HOST)")
    user, password = environ.get("XNAT_USER"), environ.get("XNAT_PASS")
    if user and password:
        return server, user, password
    host = urlsplit(server).hostname or ""
    netloc = urlsplit(server).netloc
    try:
        rc = netrc.netrc(netrc_file or environ.get("NETRC") or None)
        auth = rc.authenticators(netloc) or rc.authenticators(host)
    except FileNotFoundError:
        auth = None
    except netrc.NetrcParseError as err:
        raise ArchiveError(f"XNAT archive: cannot read the netrc file: {err.msg} (line {err.lineno})") from None
    if auth and auth[0] and auth[2]:
        return server, auth[0], auth[2]
    raise ArchiveError(
        f"XNAT archive: no credentials for {host}: add 'machine {host} login USER password ...' to ~/.netrc "
        "or set XNAT_USER and XNAT_PASS in the environment (never in config.yaml or on the command line)"
    )


def pyxnat_interface(server: str, user: str, password: str, verify: bool | str = True) -> Any:
    """A pyxnat Interface (no network call yet), with a clear error when pyxnat cannot start."""
    try:
        import pyxnat

        return pyxnat.Interface(server=server, user=user, password=password, verify=verify)
    except ModuleNotFoundError as err:  # pyxnat 1.6.4 imports nibabel (and numpy) without declaring them
        raise ArchiveError(
            f"the XNAT backend needs pyxnat 1.6.4 and its undeclared imports: {err} "
            "(pip install pyxnat==1.6.4 nibabel==5.4.2)"
        ) from None


class XnatArchive(Archive):
    backend = "xnat"

    def __init__(
        self,
        server: str | None = None,
        projects: list[str] | tuple[str, ...] = (),
        session_types: list[str] | tuple[str, ...] = DEFAULT_SESSION_TYPES,
        scan_resources: list[str] | tuple[str, ...] = (),
        verify: bool | str = True,
        timeout: float = 60.0,
        connect_timeout: float = 10.0,
        retries: int = 4,
        backoff: float = 0.5,
        resource_label: str = "QMROCT",
        history: bool = True,
        pipeline_prefix: str = "qmroct",
        chunk_size: int = 1 << 20,  # bytes per read: 1 MiB measured cheapest per byte (benchmarks/xnat)
        download_threads: int = 2,
        netrc_file: str | None = None,
        tokens: bool = True,
        **unknown: Any,
    ):
        if unknown:
            raise ArchiveError(f"XNAT archive: unknown option(s) {', '.join(sorted(unknown))}")
        self.server_option = server
        self.projects = list(projects)
        self.session_types = tuple(session_types) or DEFAULT_SESSION_TYPES
        self.scan_resources = tuple(scan_resources)
        self.verify = verify
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.resource_label = resource_label
        self.history = history
        self.pipeline_prefix = pipeline_prefix
        self.chunk_size = int(chunk_size)
        self.download_threads = max(1, int(download_threads))
        self.netrc_file = netrc_file
        self.tokens = tokens  # used by xnat_tokens.start_archive_tokens (head process)
        self._http: XnatHttp | None = None
        self._intf: Any = None

    # ------------------------------------------------------------------ connection
    @property
    def http(self) -> XnatHttp:
        if self._http is None:
            server, user, password = resolve_credentials(self.server_option, self.netrc_file)
            self._intf = pyxnat_interface(server, user, password, self.verify)
            self._http = XnatHttp(self._intf, server, user, timeout=self.timeout,
                                  connect_timeout=self.connect_timeout, retries=self.retries,
                                  backoff=self.backoff)
        return self._http

    @property
    def server(self) -> str:
        return self.http.server

    def close(self) -> None:
        if self._intf is not None:
            try:
                self._intf._http.close()
            except Exception:  # pragma: no cover - closing is best effort
                pass
        self._intf = None
        self._http = None

    def check(self) -> None:
        """Log in once and look at each configured project; clear errors otherwise."""
        http = self.http
        try:
            http.get("/data/JSESSION", retries=1, what="login")
        except XnatAuthError:
            raise
        except XnatNotFound:
            raise ArchiveError(f"{http.server} does not look like XNAT: /data/JSESSION is missing") from None
        except ArchiveError as err:
            raise ArchiveError(f"cannot reach XNAT at {http.server}: {err}") from None
        for project in self.projects:
            try:
                http.get(f"/data/projects/{quote(project)}", params={"format": "json"}, retries=1,
                         what=f"project {project}")
            except XnatNotFound:
                raise ArchiveError(
                    f"XNAT project '{project}' does not exist at {http.server} or user '{http.user}' cannot see it"
                ) from None

    # ------------------------------------------------------------------ discovery
    def _sessions_rows(self, project: str) -> list[dict[str, str]]:
        try:
            rows = self.http.listing(
                f"/data/projects/{quote(project)}/experiments",
                columns="ID,label,xsiType,subject_ID,subject_label,date,last_modified",
                what=f"sessions of project {project}",
            )
        except XnatNotFound:
            raise ArchiveError(f"XNAT project '{project}' not found at {self.http.server}") from None
        return sorted((r for r in rows if r.get("xsiType") in self.session_types), key=lambda r: r["label"])

    def state_token(self, projects: list[str]) -> str:
        """The sessions listing with each session's last_modified. An XNAT that
        does not give last_modified gets a token that always changes: discovery
        then runs every time and the fingerprints decide what is recomputed."""
        digest = hashlib.sha256()
        for project in sorted(projects or self.projects):
            for row in self._sessions_rows(project):
                if not row.get("last_modified"):
                    return "xnat:no-last-modified:" + dt.datetime.now().isoformat()
                digest.update(
                    "\t".join([project, row["ID"], row["label"], row["xsiType"], row.get("last_modified", "")]).encode()
                )
                digest.update(b"\n")
        return "xnat:" + digest.hexdigest()[:32]

    def discover(self, projects: list[str]) -> list[Session]:
        sessions = []
        for project in projects or self.projects:
            for row in self._sessions_rows(project):
                try:
                    sessions.append(self._session(project, row))
                except XnatNotFound:
                    log.warning("XNAT session %s/%s vanished during discovery; skipped", project, row["label"])
        return sessions

    def _session(self, project: str, row: dict[str, str]) -> Session:
        eid = row["ID"]
        scans = []
        scan_rows = self.http.listing(f"/data/experiments/{quote(eid)}/scans",
                                      columns="ID,type,series_description,quality,xsiType",
                                      what=f"scans of {project}/{row['label']}")
        for s in sorted(scan_rows, key=lambda r: _natural(r["ID"])):
            files = []
            base = f"/data/experiments/{quote(eid)}/scans/{quote(s['ID'])}"
            resources = self.http.listing(f"{base}/resources", what=f"resources of scan {s['ID']}")
            selected = [r for r in resources if not self.scan_resources or r.get("label") in self.scan_resources]
            for res in selected:
                rid = res.get("xnat_abstractresource_id") or res.get("label")
                for f in self.http.listing(f"{base}/resources/{quote(rid)}/files",
                                           what=f"files of scan {s['ID']} resource {res.get('label')}"):
                    path = re.sub(r"^.*/resources/[^/]+/files/", "", f["URI"], count=1)
                    name = path if len(selected) == 1 else f"{res.get('label')}/{path}"
                    digest = (f.get("digest") or "").strip()
                    files.append(FileEntry(
                        name=name,
                        size=int(f.get("Size") or 0),
                        checksum=f"md5:{digest}" if re.fullmatch(r"[0-9a-fA-F]{32}", digest) else "",
                        uri=f["URI"],
                    ))
            scans.append(Scan(
                id=s["ID"], type=s.get("type", ""), series_description=s.get("series_description", ""),
                quality=s.get("quality", ""), files=tuple(sorted(files, key=lambda f: f.name)),
            ))
        return Session(
            project=project, subject=row.get("subject_label") or row.get("subject_ID", ""), label=row["label"],
            id=eid, session_type=row["xsiType"], scans=tuple(scans),
            extra={"subject_id": row.get("subject_ID", ""), "date": row.get("date", ""),
                   "server": self.http.server},
        )

    # ------------------------------------------------------------------ download
    def _vanished(self, session: Session, detail: str) -> SessionUnavailable:
        try:
            self.http.get(f"/data/experiments/{quote(session.id)}", params={"format": "json"}, retries=1,
                          what=f"session {session.key}")
        except XnatNotFound:
            return SessionUnavailable(
                f"XNAT session {session.key} ({session.id}) is no longer available at {self.http.server}: "
                "it was deleted or moved after discovery"
            )
        return SessionUnavailable(
            f"XNAT session {session.key} ({session.id}) changed after discovery: {detail}; rerun discovery"
        )

    def fetch(self, session: Session, dest: Path) -> dict[str, list[Path]]:
        """Download every file of the session, ``download_threads`` at a time."""
        dest = Path(dest)
        jobs = [(scan, entry, dest / _safe(scan.id) / _safe_path(entry.name))
                for scan in session.scans for entry in scan.files]
        http = self.http  # connect (and resolve credentials) once, before the threads

        def one(job) -> None:
            scan, entry, target = job
            self._download(entry, target, f"{session.key} scan {scan.id} file {entry.name}")

        try:
            if self.download_threads > 1 and len(jobs) > 1:
                with ThreadPoolExecutor(max_workers=min(self.download_threads, len(jobs)),
                                        thread_name_prefix="xnat-download") as pool:
                    for future in [pool.submit(one, job) for job in jobs]:
                        future.result()
            else:
                for job in jobs:
                    one(job)
        except XnatNotFound:
            missing = next((e.name for _, e, t in jobs if not t.exists()), "?")
            raise self._vanished(session, f"file {missing} is missing") from None
        del http
        out: dict[str, list[Path]] = {scan.id: [] for scan in session.scans}
        for scan, _, target in jobs:
            out[scan.id].append(target)
        return out

    def _download(self, entry: FileEntry, target: Path, what: str) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        algo, _, expected = entry.checksum.partition(":")
        attempts = self.retries + 1
        problem = ""
        # one buffer for all the reads of this file (see body_chunks)
        buffer = memoryview(bytearray(self.chunk_size))
        for attempt in range(attempts):
            if attempt:
                self.http.sleep_before(attempt - 1)
            hasher = hashlib.new(algo) if algo in ("md5", "sha256", "sha1") else None
            size = 0
            # identity: size and digest are the stored file's, and a plain body
            # can be read straight into the buffer
            response = self.http.get(entry.uri, stream=True, ok=(200,), headers={"Accept-Encoding": "identity"},
                                     what=f"download {what}")
            try:
                with open(part, "wb") as fh:
                    for chunk in body_chunks(response, buffer):
                        if not size and bytes(chunk[:20]).lstrip().startswith((b"<!DOCTYPE", b"<html>")) \
                                and not entry.name.lower().endswith((".html", ".htm")):
                            raise ArchiveError(f"XNAT download {what} answered an error page")
                        if hasher:
                            hasher.update(chunk)  # releases the GIL: files hash in parallel
                        fh.write(chunk)  # pieces are larger than the file buffer: written straight through
                        size += len(chunk)
            except (requests.RequestException, BrokenBody) as err:  # dropped connection or truncated body
                problem = f"{_broken(err)} after {size} bytes"
                part.unlink(missing_ok=True)
                log.warning("XNAT download %s: %s (attempt %d of %d)", what, problem, attempt + 1, attempts)
                continue
            except (OSError, ArchiveError) as err:  # the local file (disk full, permissions) or an error page
                part.unlink(missing_ok=True)
                raise ArchiveError(f"XNAT download {what}: {err}") from None
            except Exception as err:  # anything else urllib3 raises mid-body
                problem = f"{type(err).__name__} after {size} bytes"
                part.unlink(missing_ok=True)
                log.warning("XNAT download %s: %s (attempt %d of %d)", what, problem, attempt + 1, attempts)
                continue
            finally:
                response.close()
            if size != entry.size:
                problem = f"got {size} bytes, XNAT lists {entry.size}"
            elif hasher and hasher.hexdigest() != expected.lower():
                problem = f"{algo} {hasher.hexdigest()} does not match XNAT's {expected}"
            else:
                os.replace(part, target)
                return
            part.unlink(missing_ok=True)
            log.warning("XNAT download %s: %s (attempt %d of %d)", what, problem, attempt + 1, attempts)
        raise ArchiveError(f"XNAT download {what} failed after {attempts} attempts: {problem}")

    # ------------------------------------------------------------------ write-back
    def _session_path(self, session: Session) -> str:
        return (f"/data/projects/{quote(session.project)}/subjects/{quote(session.subject)}"
                f"/experiments/{quote(session.id or session.label)}")

    def _existing_assessor(self, session: Session, label: str) -> tuple[str, ET.Element] | None:
        rows = self.http.listing(f"/data/experiments/{quote(session.id)}/assessors", columns="ID,label,xsiType",
                                 what=f"assessors of {session.key}")
        for row in rows:
            if row.get("label") == label:
                xml = self.http.get(f"/data/experiments/{quote(session.id)}/assessors/{quote(row['ID'])}",
                                    params={"format": "xml"}, what=f"assessor {label}").content
                return row["ID"], ET.fromstring(xml)
        return None

    def write_assessment(self, session: Session, assessment: Assessment) -> WriteOutcome:
        label = assessment.label
        try:
            existing = self._existing_assessor(session, label)
        except XnatNotFound:
            raise self._vanished(session, "its assessors cannot be listed") from None
        old_fields = _fields(existing[1]) if existing else {}
        base = f"{self._session_path(session)}/assessors/{quote(label)}"
        if existing and old_fields.get("qmroct_digest") == assessment.digest and \
                self._resource_complete(base, assessment):
            # Nothing to re-send; but if a compute job opened a History row for this
            # result (it recomputed the same KQIs), that row must still end.
            self._finish_history(session, assessment, note="assessment unchanged", only_if_open=True)
            return WriteOutcome(label, "unchanged", existing[0])

        document = assessment.to_xml()
        response = self.http.put(base, params={"inbody": "true", "allowDataDeletion": "true"}, data=document,
                                 headers={"Content-Type": "text/xml"}, what=f"assessor {label}")
        assessor_id = response.text.strip() or (existing[0] if existing else "")
        action = "created" if response.status_code == 201 or not existing else "updated"
        self._upload_files(base, assessment)
        self._finish_history(session, assessment)
        return WriteOutcome(label, action, assessor_id)

    def _finish_history(self, session: Session, assessment: Assessment, note: str = "",
                        only_if_open: bool = False) -> None:
        """Complete or Failed on the History row the compute job opened (same launch time)."""
        if not self.history:
            return
        status = "Failed" if assessment.status == "failed" else "Complete"
        launch_time = _launch_time(assessment)
        if only_if_open and self._history_status(session, assessment.algorithm, launch_time) in (None, status):
            return  # no such row, or it ended already: nothing to write
        detail = _status_detail(assessment) + (f" ({note})" if note else "")
        self.record_history(session, assessment.algorithm, status, detail=detail, launch_time=launch_time)

    def _history_status(self, session: Session, algorithm: str, launch_time: str) -> str | None:
        rows = self._history_rows(session, algorithm, launch_time)
        return rows[0].get("status") if rows else None

    def _resource_complete(self, base: str, assessment: Assessment) -> bool:
        try:
            rows = self.http.listing(f"{base}/resources/{quote(self.resource_label)}/files",
                                     what="assessor files")
        except XnatNotFound:
            return not assessment.files
        stored = {re.sub(r"^.*/resources/[^/]+/files/", "", r["URI"], count=1): r.get("digest", "") for r in rows}
        for name, path in assessment.files.items():
            if name not in stored:
                return False
            if stored[name] and stored[name] != _md5(path):
                return False
        return True

    def _upload_files(self, base: str, assessment: Assessment) -> None:
        res = f"{base}/resources/{quote(self.resource_label)}"
        self.http.put(res, params={"format": "JSON", "content": "qmroct KQIs"}, what="assessor resource")
        try:
            rows = self.http.listing(f"{res}/files", what="assessor files")
        except XnatNotFound:
            rows = []
        stored = {re.sub(r"^.*/resources/[^/]+/files/", "", r["URI"], count=1): r.get("digest", "") for r in rows}
        for name, path in sorted(assessment.files.items()):
            path = Path(path)
            if stored.get(name) and stored[name] == _md5(path):
                continue
            fmt = path.suffix.lstrip(".").upper() or "BIN"
            self.http.put(f"{res}/files/{_quote_path(name)}",
                          params={"inbody": "true", "overwrite": "true", "format": fmt,
                                  "content": "qmroct KQIs" if name.endswith(".json") else "qmroct output"},
                          data=lambda path=path: open(path, "rb"),
                          headers={"Content-Type": "application/octet-stream"}, what=f"upload {name}")
        for name in sorted(set(stored) - set(assessment.files)):
            self.http.request("DELETE", f"{res}/files/{_quote_path(name)}", what=f"remove stale {name}")

    # ------------------------------------------------------------------ scan quality (opt-in)
    def set_scan_quality(self, session: Session, study: str, verdicts: dict[str, str],
                         reasons: dict[str, str] | None = None) -> dict[str, str]:
        """Write a study's verdicts into the scans' ``quality`` field (opt-in).

        ``verdicts`` maps scan IDs to usable / questionable / unusable. A value a
        person set is never overwritten: a scan is changed only when its quality
        is empty or still what qmroct set last time. What qmroct set is recorded
        in a ``<session>_qmroct_study_<study>`` assessor (xnat:qcAssessmentData:
        per scan the verdict and its reason, and a ``qmroct_quality_scan_<id>``
        field per scan qmroct changed). Returns {scan: "set" | "kept" | "person"}.
        """
        reasons = reasons or {}
        bad = {k: v for k, v in verdicts.items() if v not in QUALITY_VALUES}
        if bad:
            raise ArchiveError(f"scan quality must be one of {', '.join(QUALITY_VALUES)}; got {bad}")
        label = f"{session.label}_qmroct_study_{study}"
        try:
            existing = self._existing_assessor(session, label)
            rows = self.http.listing(f"/data/experiments/{quote(session.id)}/scans", columns="ID,quality,xsiType",
                                     what=f"scans of {session.key}")
        except XnatNotFound:
            raise self._vanished(session, "its scans cannot be listed") from None
        recorded = {k[len(QUALITY_FIELD):]: v for k, v in (_fields(existing[1]) if existing else {}).items()
                    if k.startswith(QUALITY_FIELD)}
        current = {r["ID"]: (r.get("quality") or "", r.get("xsiType") or "xnat:imageScanData") for r in rows}
        outcome: dict[str, str] = {}
        record: dict[str, str] = {}
        for scan_id, value in sorted(verdicts.items()):
            if scan_id not in current:
                continue
            now, scan_type = current[scan_id]
            if now and now != recorded.get(scan_id):
                outcome[scan_id] = "person"  # someone chose this value: leave it
                log.info("XNAT %s scan %s: quality '%s' was set by a person; kept", session.key, scan_id, now)
                continue
            record[scan_id] = value
            if now == value:
                outcome[scan_id] = "kept"
                continue
            self.http.put(f"{self._session_path(session)}/scans/{quote(scan_id)}",
                          params={"xsiType": scan_type, f"{scan_type}/quality": value},
                          what=f"quality of scan {scan_id}")
            outcome[scan_id] = "set"
        document = _study_document(session, label, study, verdicts, reasons, record)
        self.http.put(f"{self._session_path(session)}/assessors/{quote(label)}",
                      params={"inbody": "true", "allowDataDeletion": "true"}, data=document,
                      headers={"Content-Type": "text/xml"}, what=f"assessor {label}")
        return outcome

    # ------------------------------------------------------------------ history
    def record_history(self, session: Session, algorithm: str, status: str, detail: str = "",
                       launch_time: str | None = None) -> str | None:
        """Create or update the session's workflow (History) entry for this
        algorithm run: Queued, Running, Complete or Failed (with the reason).
        Entries are keyed by (session, pipeline, launch time), so the same run
        moves through its states in one row. Returns the launch time used."""
        if status not in ("Queued", "Running", "Complete", "Failed"):
            raise ValueError(f"unknown workflow status {status}")
        if not self.history:
            return None
        launch_time = _history_key(launch_time) if launch_time else _xnat_time(dt.datetime.now())
        params = {
            "wrk:workflowData/id": session.id,
            "wrk:workflowData/pipeline_name": f"{self.pipeline_prefix} {algorithm}",
            "wrk:workflowData/launch_time": launch_time,
            "wrk:workflowData/status": status,
            "wrk:workflowData/data_type": session.session_type,
            "wrk:workflowData/ExternalID": session.project,
            "wrk:workflowData/category": "QC",
            "wrk:workflowData/type": "PROCESS",
            "wrk:workflowData/step_description": status if not detail else f"{status}: {detail}"[:250],
            "wrk:workflowData/details": detail[:2000],
            "wrk:workflowData/percentageComplete": "100" if status in ("Complete", "Failed") else "0",
        }
        self.http.put("/data/workflows", params=params, what=f"history of {session.key}")
        return launch_time  # the row's key, in XNAT's spelling

    def queued_run(self, session: Session, algorithm: str) -> str | None:
        """The launch time of this algorithm's newest Queued History row on the
        session (the head queued the job), so the job can move that very row
        to Running instead of opening a second one."""
        if not self.history:
            return None
        rows = self._history_rows(session, algorithm)
        queued = sorted(str(r["launch_time"]) for r in rows if r.get("status") == "Queued" and r.get("launch_time"))
        return queued[-1] if queued else None

    def history_entries(self, session: Session) -> list[dict[str, Any]]:
        """The session's workflow entries (what XNAT shows as History)."""
        return self._history_rows(session)

    def _history_rows(self, session: Session, algorithm: str | None = None,
                      launch_time: str | None = None) -> list[dict[str, Any]]:
        """The session's History rows, narrowed to one algorithm (and one run) by
        XNAT's own query fields."""
        params = {"format": "json", "wrk:workflowData/id": session.id}
        if algorithm is not None:
            params["wrk:workflowData/pipeline_name"] = f"{self.pipeline_prefix} {algorithm}"
        if launch_time is not None:
            params["wrk:workflowData/launch_time"] = launch_time
        response = self.http.get("/data/workflows", params=params, what=f"history of {session.key}")
        return [item["data_fields"] for item in response.json().get("items", [])]


# ====================================================================== helpers
def _study_document(session: Session, label: str, study: str, verdicts: dict[str, str],
                    reasons: dict[str, str], record: dict[str, str]) -> bytes:
    """The study verdict assessor (xnat.xsd-valid QCAssessment)."""
    x = lambda tag: f"{{{XNAT_NS}}}{tag}"  # noqa: E731
    root = ET.Element(x("QCAssessment"), {"ID": "", "project": session.project, "label": label,
                                          "type": f"qmroct study {study}"})
    ET.SubElement(root, x("date")).text = dt.date.today().isoformat()
    ET.SubElement(root, x("note")).text = f"qmroct scan quality for study {study}"
    fields = ET.SubElement(root, x("fields"))
    ET.SubElement(fields, x("field"), {"name": "qmroct_study"}).text = study
    for scan_id, value in sorted(record.items()):
        ET.SubElement(fields, x("field"), {"name": QUALITY_FIELD + scan_id}).text = value
    ET.SubElement(root, x("imageSession_ID")).text = session.id
    scans = ET.SubElement(root, x("scans"))
    for scan_id, value in sorted(verdicts.items(), key=lambda kv: _natural(kv[0])):
        scan = ET.SubElement(scans, x("scan"), {"id": scan_id})
        stats = ET.SubElement(scan, x("scanStatistics"),
                              {"{http://www.w3.org/2001/XMLSchema-instance}type": "xnat:statisticsData"})
        ET.SubElement(stats, x("addField"), {"name": "quality"}).text = value
        if reasons.get(scan_id):
            ET.SubElement(stats, x("addField"), {"name": "reason"}).text = reasons[scan_id][:1000]
    return ET.tostring(root, xml_declaration=True, encoding="UTF-8")


def _fields(root: ET.Element) -> dict[str, str]:
    fields = root.find(f"{{{XNAT_NS}}}fields")
    if fields is None:
        return {}
    return {f.get("name", ""): (f.text or "") for f in fields.findall(f"{{{XNAT_NS}}}field")}


def _status_detail(assessment: Assessment) -> str:
    errors = [f"scan {s['scan']}: {s['error']}" for s in assessment.scans if s.get("error")]
    text = f"{assessment.algorithm} {assessment.version} {assessment.status}"
    return text + ("; " + "; ".join(errors) if errors else "")


def _xnat_time(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def _history_key(launch_time: str) -> str:
    """A History row's launch time in XNAT's spelling: ISO times (a result's
    provenance) are converted, XNAT's own (a row XNAT listed) pass as they are."""
    if "T" not in launch_time:
        return launch_time
    return _xnat_time(dt.datetime.fromisoformat(launch_time.replace("Z", "+00:00")))


def _launch_time(assessment: Assessment) -> str:
    """The History row's key: the Queued row the job claimed, else the job's start."""
    provenance = assessment.provenance or {}
    key = str(provenance.get("history_launch_time") or provenance.get("start_time") or "")
    try:
        return _history_key(key) if key else _xnat_time(dt.datetime.now())
    except ValueError:
        return _xnat_time(dt.datetime.now())


def _broken(err: Exception) -> str:
    # a BrokenBody says what broke; requests' own errors are named by their type, as before
    return str(err) if isinstance(err, BrokenBody) else type(err).__name__


def _md5(path: Path) -> str:
    return file_digest(path, "md5")


def _natural(text: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text))


def _safe(part: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._\-]", "_", part)
    return cleaned if cleaned not in ("", ".", "..") else "_"


def _safe_path(name: str) -> Path:
    return Path(*[_safe(p) for p in name.split("/") if p])


def _quote_path(name: str) -> str:
    return "/".join(quote(p) for p in name.split("/"))
