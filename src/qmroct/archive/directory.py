"""The embedded default archive: a folder laid out like XNAT's hierarchy.

    <root>/<project>/subjects/<subject>/experiments/<session>/
        session.json                      label, ID, xsiType, subject, date
        scans/<scan>/scan.json            ID, type, series_description, quality
        scans/<scan>/resources/DICOM/files/<file>
        assessors/<session>_qmroct_<algorithm>/
            assessor.xml                  the xnat:QCAssessment document
            assessor.json                 digest and provenance (for idempotency)
            resources/QMROCT/files/<file> KQI JSON and extra outputs
        history.jsonl                     one line per write-back (XNAT's History)

Discovery checksums every scan file; checksums are cached by (path, size,
mtime) so rediscovering an unchanged archive of thousands of sessions is fast.

Links are never followed out of the archive root (qmroct.paths.confined), for
reading or writing: a session, scan, resource or file that leads outside is
listed with a ``problem`` and never read; a session folder or ``assessors/``
folder that leads outside is never written. Unreadable metadata is a problem
of that session or scan, not of the archive.

A write-back builds the new assessor in a hidden folder beside the old one,
``.qmroct-writing.<host>.<pid>.<start>.<random>`` (and moves the old one to
``.qmroct-old....``), then swaps. The names say who made them: a later
write-back into the same session deletes those whose process is gone (a run
killed mid-write), never another live writer's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import socket
from pathlib import Path
from typing import Any

from qmroct.archive.base import (
    Archive,
    ArchiveError,
    FileEntry,
    Scan,
    Session,
    SessionUnavailable,
    WriteOutcome,
    scan_order_key,
)
from qmroct.checksums import file_digest
from qmroct.fileio import now_iso, write_bytes_atomic, write_text_atomic
from qmroct.paths import UnsafePath, confined, is_confined, path_segment
from qmroct.scratch import Owner

SESSION_TYPE = "xnat:optSessionData"


def check_reachable_from_workers(archive: dict[str, Any]) -> None:
    """Refuse, before any job, a directory archive that remote workers cannot reach.

    A remote executor without a shared file system (the OpenStack executor) runs each
    job in its own folder on a worker: only the job's declared inputs travel there (the
    algorithm code does; the archive's scan files do not, they are read at staging). A
    relative ``archive.path`` then names a folder that is not in the job's folder. An
    absolute path works when every worker mounts the archive at that same path."""
    if archive.get("backend") != "directory":
        return
    path = str(archive.get("path", ""))
    if not os.path.isabs(path):
        raise ArchiveError(
            f"archive.path {path!r} is on this machine only: without a shared file system "
            "(the OpenStack executor) each job runs on a worker, in a folder of its own "
            "where the archive is not. "
            "Give archive.path as an absolute path that every worker mounts at the same place "
            "(shared storage), or use an XNAT archive (docs/xnat.md), or run locally."
        )


def sha256_file(path: Path) -> str:
    return "sha256:" + file_digest(path)


class DirectoryArchive(Archive):
    backend = "directory"
    versioned_labels = True  # a version bump writes a new assessor; the older stays, superseded

    def __init__(self, path: str | Path, checksum_cache: str | Path | None = None) -> None:
        self.root = Path(path)
        self.checksum_cache = Path(checksum_cache) if checksum_cache else None

    # -- reading -----------------------------------------------------------
    def check(self) -> None:
        if not self.root.is_dir():
            raise ArchiveError(
                f"directory archive {self.root} does not exist "
                "(run `qmroct demo-archive` to create one)"
            )

    def _project_dir(self, project: str) -> Path:
        path = self.root / project
        if not path.is_dir():
            known = (
                sorted(p.name for p in self.root.iterdir() if p.is_dir())
                if self.root.is_dir()
                else []
            )
            raise ArchiveError(
                f"project {project!r} not found in {self.root} "
                f"(projects there: {', '.join(known) or 'none'})"
            )
        return path

    def _session_dirs(self, project: str):
        """(subject folder name, session folder, problem) for every session folder."""
        project_dir = self._project_dir(project)
        if not is_confined(self.root, project_dir):
            raise ArchiveError(
                f"project folder {project_dir} leads outside the archive {self.root}"
            )
        for subject_dir in sorted((project_dir / "subjects").glob("*")):
            if not is_confined(self.root, subject_dir):
                yield subject_dir.name, subject_dir, "subject folder is a link out of the archive"
                continue
            for session_dir in sorted((subject_dir / "experiments").glob("*")):
                if not (
                    is_confined(self.root, session_dir)
                    and is_confined(self.root, session_dir / "session.json")
                ):
                    problem = "session folder is a link out of the archive"
                    yield subject_dir.name, session_dir, problem
                elif (session_dir / "session.json").is_file():
                    yield subject_dir.name, session_dir, ""

    def state_token(self, projects: list[str]) -> str:
        """Hash of every scan file's path, size and mtime: a stat walk, no reading."""
        h = hashlib.sha256()
        for project in sorted(projects):
            base = self._project_dir(project)
            for dirpath, dirnames, filenames in os.walk(base):
                dirnames[:] = sorted(d for d in dirnames if d != "assessors")
                for name in sorted(filenames):
                    if name == "history.jsonl":
                        continue
                    # links: their own stamp, never the target's
                    st = os.lstat(os.path.join(dirpath, name))
                    h.update(f"{dirpath}/{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return "sha256:" + h.hexdigest()[:32]

    def discover(self, projects: list[str]) -> list[Session]:
        cache = self._load_cache()
        sessions = []
        for project in projects:
            for subject, session_dir, problem in self._session_dirs(project):
                if problem:
                    sessions.append(Session(project, subject, session_dir.name, problem=problem))
                    continue
                try:
                    info = _metadata(session_dir / "session.json")
                    label = _text(info, "label", session_dir.name)
                    session_id = _text(info, "ID", session_dir.name)
                    session_type = _text(info, "xsiType", SESSION_TYPE)
                except ArchiveError as exc:
                    sessions.append(Session(project, subject, session_dir.name, problem=str(exc)))
                    continue
                scan_dirs = sorted(
                    (session_dir / "scans").glob("*"), key=lambda p: scan_order_key(p.name)
                )
                scans = [
                    self._scan(scan_dir, cache)
                    for scan_dir in scan_dirs
                    if (scan_dir / "scan.json").is_file() or (scan_dir / "scan.json").is_symlink()
                ]
                # where it was read is where it is written, whatever session.json says
                folder = session_dir.relative_to(self.root).as_posix()
                sessions.append(
                    Session(
                        project=project,
                        subject=subject,
                        label=label,
                        id=session_id,
                        session_type=session_type,
                        scans=tuple(scans),
                        extra={"folder": folder},
                    )
                )
        self._save_cache(cache)
        return sessions

    def _scan(self, scan_dir: Path, cache: dict[str, Any]) -> Scan:
        """One scan; a link out of the archive or unreadable metadata is the scan's problem."""
        if not (
            is_confined(self.root, scan_dir) and is_confined(self.root, scan_dir / "scan.json")
        ):
            return Scan(id=scan_dir.name, problem="scan folder is a link out of the archive")
        try:
            info = _metadata(scan_dir / "scan.json")
            scan = Scan(
                id=_text(info, "ID", scan_dir.name),
                type=_text(info, "type", ""),
                series_description=_text(info, "series_description", ""),
                quality=_text(info, "quality", ""),
            )
        except ArchiveError as exc:
            return Scan(id=scan_dir.name, problem=str(exc))
        files = []
        for resource_files in sorted((scan_dir / "resources").glob("*/files")):
            if not is_confined(self.root, resource_files):
                resource = resource_files.parent.name
                return Scan(
                    id=scan.id,
                    type=scan.type,
                    problem=f"resource folder {resource}/files is a link out of the archive",
                )
            for f in sorted(resource_files.iterdir()):
                if not is_confined(self.root, f):
                    return Scan(
                        id=scan.id,
                        type=scan.type,
                        problem=f"file {f.name} is a link out of the archive",
                    )
                if f.is_file():
                    files.append(self._file_entry(f, cache))
        return Scan(
            id=scan.id,
            type=scan.type,
            series_description=scan.series_description,
            quality=scan.quality,
            files=tuple(files),
        )

    def _file_entry(self, path: Path, cache: dict[str, Any]) -> FileEntry:
        rel = path.relative_to(self.root).as_posix()
        st = path.stat()
        stamp = [st.st_size, st.st_mtime_ns]
        cached = cache.get(rel)
        if cached and cached[:2] == stamp:
            checksum = cached[2]
        else:
            checksum = sha256_file(path)
            cache[rel] = [*stamp, checksum]
        return FileEntry(name=path.name, size=st.st_size, checksum=checksum, uri=rel)

    def _load_cache(self) -> dict[str, Any]:
        if self.checksum_cache and self.checksum_cache.is_file():
            try:
                return json.loads(self.checksum_cache.read_text())
            except json.JSONDecodeError:
                return {}  # a damaged cache only costs time
        return {}

    def _save_cache(self, cache: dict[str, Any]) -> None:
        if self.checksum_cache:
            write_bytes_atomic(self.checksum_cache, json.dumps(cache).encode())

    def fetch(self, session: Session, dest: Path) -> dict[str, list[Path]]:
        if not self.root.is_dir():  # discovery saw it: this host (a worker) does not
            raise SessionUnavailable(
                f"session {session.key}: the directory archive {self.root} is not reachable "
                f"from host {socket.gethostname()} (a remote worker needs it mounted at the "
                "same absolute path)"
            )
        fetched: dict[str, list[Path]] = {}
        for scan in session.scans:
            paths = []
            for entry in scan.files:
                try:  # the archive may have changed since discovery: check again
                    source = confined(self.root, self.root / entry.uri)
                    target = confined(dest, dest / scan.id / entry.name)
                except UnsafePath as exc:
                    raise SessionUnavailable(
                        f"session {session.key}: scan {scan.id}: {exc}"
                    ) from None
                if not source.is_file():
                    raise SessionUnavailable(
                        f"session {session.key}: scan {scan.id} file {entry.name} is not in the "
                        f"archive {self.root} as host {socket.gethostname()} sees it: gone "
                        "since discovery, or not reachable from this host"
                    )
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
                if target.stat().st_size != entry.size or (
                    entry.checksum and sha256_file(target) != entry.checksum
                ):
                    raise SessionUnavailable(
                        f"session {session.key}: scan {scan.id} file {entry.name} "
                        "changed since discovery; rerun to rediscover"
                    )
                paths.append(target)
            fetched[scan.id] = paths
        return fetched

    # -- writing -----------------------------------------------------------
    def session_dir(self, session: Session) -> Path:
        """The session's folder, resolved; never one outside the archive or of a session
        whose label or subject discovery refused."""
        if session.problem:
            raise ArchiveError(
                f"session {session.key}: not writing into the archive: {session.problem}"
            )
        folder = session.extra.get("folder")
        if folder:
            path = self.root / folder
        else:
            path = (
                self.root
                / session.project
                / "subjects"
                / session.subject
                / "experiments"
                / session.label
            )
        try:
            path = confined(self.root, path)
        except UnsafePath as exc:
            raise ArchiveError(
                f"session {session.key}: not writing into the archive: {exc}"
            ) from None
        if not (path / "session.json").is_file():
            raise SessionUnavailable(f"session {session.key} is no longer in the archive")
        return path

    def _assessors_dir(self, session: Session, base: Path) -> Path:
        assessors = base / "assessors"
        if assessors.is_symlink() or (assessors.exists() and not assessors.is_dir()):
            raise ArchiveError(
                f"session {session.key}: not writing: {assessors} is a link or not a folder"
            )
        assessors.mkdir(exist_ok=True)
        return assessors

    def write_assessment(self, session: Session, assessment) -> WriteOutcome:
        base = self.session_dir(session)
        assessors = self._assessors_dir(session, base)
        # the folder is named by the label, encoded where too long for a file name (qmroct.paths)
        folder = path_segment(assessment.label, limit=200)
        remove_interrupted_writes(assessors, folder)
        target = assessors / folder
        if target.is_symlink():
            raise ArchiveError(f"session {session.key}: not writing: {target} is a link")
        digest = assessment.digest
        record_path = target / "assessor.json"
        if record_path.is_file() and _read_json(record_path).get("digest") == digest:
            self._supersede_others(base, assessors, session, assessment)
            return WriteOutcome(assessment.label, "unchanged")
        action = "updated" if target.exists() else "created"
        # Build the new assessor beside the old one and swap, so a crash never
        # leaves a half-written assessor in the archive.
        staging = assessors / _work_name("writing")
        staging.mkdir()
        try:
            (staging / "assessor.xml").write_bytes(assessment.to_xml())
            files_dir = staging / "resources" / "QMROCT" / "files"
            files_dir.mkdir(parents=True)
            for name, path in sorted(assessment.files.items()):
                try:  # names come from algorithms' outputs: keep them in the folder
                    destination = confined(files_dir, files_dir / name)
                except UnsafePath as exc:
                    raise ArchiveError(
                        f"session {session.key}: assessment file {name!r}: {exc}"
                    ) from None
                shutil.copyfile(path, destination)
            record = {
                "label": assessment.label,
                "algorithm": assessment.algorithm,
                "version": assessment.version,
                "digest": digest,
                "provenance": assessment.provenance,
                "written": now_iso(),
            }
            (staging / "assessor.json").write_text(json.dumps(record, indent=1, default=str))
            if target.exists():
                old = assessors / _work_name("old")
                target.rename(old)
                staging.rename(target)
                shutil.rmtree(old)
            else:
                staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._append_history(base, assessment, action)
        self._supersede_others(base, assessors, session, assessment)
        return WriteOutcome(assessment.label, action)

    def _supersede_others(
        self, base: Path, assessors: Path, session: Session, assessment
    ) -> list[str]:
        """Older assessors of the same algorithm (other versions, or the unversioned label
        of earlier qmroct) stay, marked superseded by this one: a paper may cite them. This
        one, superseded earlier (a version rolled back), is current again."""
        from qmroct.assessment import SUPERSEDED_FIELD, assessment_label, mark_superseded

        unversioned = assessment_label(session.label, assessment.algorithm)
        _history_path(base)  # a linked history refuses before any record is marked
        marked = []
        for folder in sorted(assessors.iterdir()):
            record_path = folder / "assessor.json"
            if (
                folder.name.startswith(".")
                or folder.is_symlink()
                or not record_path.is_file()
                or record_path.is_symlink()
            ):
                continue
            record = _read_json(record_path)
            legacy = "algorithm" not in record and record.get("label") == unversioned
            if record.get("algorithm") != assessment.algorithm and not legacy:
                continue  # another algorithm (never matched by label prefix: noise vs noise_octave)
            if record.get("label") == assessment.label:
                if record.pop("superseded_by", None) is not None:
                    record.pop("superseded", None)
                    write_text_atomic(
                        record_path, json.dumps(record, indent=1, default=str), make_parents=False
                    )
                continue
            if record.get("superseded_by") == assessment.label:
                continue
            record.update(superseded_by=assessment.label, superseded=now_iso())
            xml_path = folder / "assessor.xml"
            try:
                xml = mark_superseded(xml_path.read_bytes(), assessment.label)
            except (OSError, ValueError, SyntaxError) as exc:  # the record still says it
                record["superseded_note"] = f"{SUPERSEDED_FIELD} not set in assessor.xml: {exc}"
            else:
                write_bytes_atomic(xml_path, xml, make_parents=False)
            write_text_atomic(
                record_path, json.dumps(record, indent=1, default=str), make_parents=False
            )
            marked.append(str(record.get("label") or folder.name))
        _append_history_lines(
            base,
            [
                {
                    "time": now_iso(),
                    "pipeline_name": f"qmroct {assessment.algorithm}",
                    "version": assessment.version,
                    "status": "Complete",
                    "details": f"assessor {label} superseded by {assessment.label}",
                }
                for label in marked
            ],
        )
        return marked

    def _append_history(self, base: Path, assessment, action: str) -> None:
        _append_history_lines(
            base,
            [
                {
                    "time": now_iso(),
                    "pipeline_name": f"qmroct {assessment.algorithm}",
                    "version": assessment.version,
                    "status": "Complete" if assessment.status != "failed" else "Failed",
                    "details": f"assessor {assessment.label} {action}",
                }
            ],
        )

    def add_session(
        self,
        project: str,
        subject: str,
        label: str,
        scans: list[dict[str, Any]],
        move: bool = False,
    ) -> Path:
        """Put a session into the archive (used by the demo builder and tests).

        ``scans``: [{"id", "type", "series_description", "files": [paths]}].
        """
        project_dir = self.root / project
        project_dir.mkdir(parents=True, exist_ok=True)
        if not (project_dir / "project.json").exists():
            (project_dir / "project.json").write_text(
                json.dumps({"ID": project, "name": project}, indent=1)
            )
        subject_dir = project_dir / "subjects" / subject
        subject_dir.mkdir(parents=True, exist_ok=True)
        if not (subject_dir / "subject.json").exists():
            (subject_dir / "subject.json").write_text(
                json.dumps({"label": subject, "project": project}, indent=1)
            )
        session_dir = subject_dir / "experiments" / label
        session_dir.mkdir(parents=True, exist_ok=True)
        (session_dir / "session.json").write_text(
            json.dumps(
                {
                    "label": label,
                    "ID": label,
                    "xsiType": SESSION_TYPE,
                    "subject": subject,
                    "project": project,
                },
                indent=1,
            )
        )
        for scan in scans:
            scan_dir = session_dir / "scans" / str(scan["id"])
            files_dir = scan_dir / "resources" / "DICOM" / "files"
            files_dir.mkdir(parents=True, exist_ok=True)
            meta = {
                "ID": str(scan["id"]),
                "xsiType": "xnat:optScanData",
                "quality": scan.get("quality", ""),
            }
            meta.update({k: scan[k] for k in ("type", "series_description") if k in scan})
            (scan_dir / "scan.json").write_text(json.dumps(meta, indent=1))
            for f in scan.get("files", []):
                f = Path(f)
                (shutil.move if move else shutil.copyfile)(str(f), str(files_dir / f.name))
        return session_dir


_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_WORK_NAME = re.compile(r"\.qmroct-(writing|old)\.([0-9a-f]{8})\.(\d+)\.(\d*)\.[0-9a-f]+")
# what earlier versions left: mkdtemp(prefix=".<label>.") and ".<label>.old"
_LEGACY_SUFFIX = re.compile(r"\.(old|[a-z0-9_]{8})")


def _work_name(kind: str) -> str:
    """A hidden working folder's name that says which process made it."""
    me = Owner.current()
    return f".qmroct-{kind}.{_HOST}.{me.pid}.{me.started}.{secrets.token_hex(4)}"


def remove_interrupted_writes(assessors: Path, folder: str) -> list[Path]:
    """Delete working folders of write-backs into ``assessors`` whose process is gone
    (killed mid-write), and earlier versions' leftovers of ``folder``; returns them."""
    removed = []
    for child in sorted(assessors.iterdir()):
        if child.is_symlink() or not child.is_dir():
            continue
        match = _WORK_NAME.fullmatch(child.name)
        if match:
            host, pid, started = match.group(2), int(match.group(3)), match.group(4)
            if host != _HOST or Owner(socket.gethostname(), pid, started).alive():
                continue  # another host's or a live writer's
        elif not (
            child.name.startswith(f".{folder}.")
            and "_qmroct_" in folder
            and _LEGACY_SUFFIX.fullmatch(child.name[len(folder) + 1 :])
        ):
            continue
        shutil.rmtree(child, ignore_errors=True)
        removed.append(child)
    return removed


def _history_path(base: Path) -> Path:
    """The session's history.jsonl, refused when it is a link: appending through a link
    would write outside the archive (the one check every history write goes through)."""
    history = base / "history.jsonl"
    if history.is_symlink():
        raise ArchiveError(f"not writing history: {history} is a link")
    return history


def _append_history_lines(base: Path, entries: list[dict[str, Any]]) -> None:
    if not entries:
        return
    history = _history_path(base)
    with open(history, "a") as fh:
        fh.write("".join(json.dumps(entry) + "\n" for entry in entries))


def _metadata(path: Path) -> dict[str, Any]:
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ArchiveError(f"{path.name}: unreadable metadata (not a JSON object)")
    return data


def _text(info: dict[str, Any], key: str, default: str) -> str:
    value = info.get(key, default)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # numeric scan IDs are common in hand-made metadata
    if not isinstance(value, str):
        raise ArchiveError(f"metadata field {key!r} is not text: {str(value)[:60]!r}")
    return value


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or bad UTF-8
        raise ArchiveError(f"{path.name}: unreadable metadata ({exc})") from exc
