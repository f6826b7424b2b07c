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
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
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
)
from qmroct.checksums import file_digest

SESSION_TYPE = "xnat:optSessionData"


def sha256_file(path: Path) -> str:
    return "sha256:" + file_digest(path)


class DirectoryArchive(Archive):
    backend = "directory"

    def __init__(self, path: str | Path, checksum_cache: str | Path | None = None) -> None:
        self.root = Path(path)
        self.checksum_cache = Path(checksum_cache) if checksum_cache else None

    # -- reading -----------------------------------------------------------
    def check(self) -> None:
        if not self.root.is_dir():
            raise ArchiveError(f"directory archive {self.root} does not exist (run `qmroct demo-archive` to create one)")

    def _project_dir(self, project: str) -> Path:
        path = self.root / project
        if not path.is_dir():
            known = sorted(p.name for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []
            raise ArchiveError(f"project {project!r} not found in {self.root} (projects there: {', '.join(known) or 'none'})")
        return path

    def _session_dirs(self, project: str):
        for subject_dir in sorted((self._project_dir(project) / "subjects").glob("*")):
            for session_dir in sorted((subject_dir / "experiments").glob("*")):
                if (session_dir / "session.json").is_file():
                    yield subject_dir.name, session_dir

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
                    st = os.stat(os.path.join(dirpath, name))
                    h.update(f"{dirpath}/{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return "sha256:" + h.hexdigest()[:32]

    def discover(self, projects: list[str]) -> list[Session]:
        cache = self._load_cache()
        sessions = []
        for project in projects:
            for subject, session_dir in self._session_dirs(project):
                info = _read_json(session_dir / "session.json")
                scans = []
                for scan_dir in sorted((session_dir / "scans").glob("*"), key=lambda p: _natural(p.name)):
                    if not (scan_dir / "scan.json").is_file():
                        continue
                    scan_info = _read_json(scan_dir / "scan.json")
                    files = []
                    for resource_files in sorted((scan_dir / "resources").glob("*/files")):
                        for f in sorted(resource_files.iterdir()):
                            if f.is_file():
                                files.append(self._file_entry(f, cache))
                    scans.append(
                        Scan(
                            id=str(scan_info.get("ID", scan_dir.name)),
                            type=scan_info.get("type", ""),
                            series_description=scan_info.get("series_description", ""),
                            quality=scan_info.get("quality", ""),
                            files=tuple(files),
                        )
                    )
                sessions.append(
                    Session(
                        project=project,
                        subject=subject,
                        label=info.get("label", session_dir.name),
                        id=info.get("ID", session_dir.name),
                        session_type=info.get("xsiType", SESSION_TYPE),
                        scans=tuple(scans),
                    )
                )
        self._save_cache(cache)
        return sessions

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
            _atomic_write(self.checksum_cache, json.dumps(cache).encode())

    def fetch(self, session: Session, dest: Path) -> dict[str, list[Path]]:
        fetched: dict[str, list[Path]] = {}
        for scan in session.scans:
            paths = []
            for entry in scan.files:
                source = self.root / entry.uri
                if not source.is_file():
                    raise SessionUnavailable(f"session {session.key}: scan {scan.id} file {entry.name} is gone from the archive")
                target = dest / scan.id / entry.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
                if target.stat().st_size != entry.size or (entry.checksum and sha256_file(target) != entry.checksum):
                    raise SessionUnavailable(
                        f"session {session.key}: scan {scan.id} file {entry.name} changed since discovery; rerun to rediscover"
                    )
                paths.append(target)
            fetched[scan.id] = paths
        return fetched

    # -- writing -----------------------------------------------------------
    def session_dir(self, session: Session) -> Path:
        path = self.root / session.project / "subjects" / session.subject / "experiments" / session.label
        if not (path / "session.json").is_file():
            raise SessionUnavailable(f"session {session.key} is no longer in the archive")
        return path

    def write_assessment(self, session: Session, assessment) -> WriteOutcome:
        base = self.session_dir(session)
        target = base / "assessors" / assessment.label
        digest = assessment.digest
        record_path = target / "assessor.json"
        if record_path.is_file() and _read_json(record_path).get("digest") == digest:
            return WriteOutcome(assessment.label, "unchanged")
        action = "updated" if target.exists() else "created"
        # Build the new assessor beside the old one and swap, so a crash never
        # leaves a half-written assessor in the archive.
        (base / "assessors").mkdir(exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{assessment.label}.", dir=base / "assessors"))
        try:
            (staging / "assessor.xml").write_bytes(assessment.to_xml())
            files_dir = staging / "resources" / "QMROCT" / "files"
            files_dir.mkdir(parents=True)
            for name, path in sorted(assessment.files.items()):
                shutil.copyfile(path, files_dir / name)
            record = {"label": assessment.label, "digest": digest, "provenance": assessment.provenance, "written": _now()}
            (staging / "assessor.json").write_text(json.dumps(record, indent=1, default=str))
            if target.exists():
                old = base / "assessors" / f".{assessment.label}.old"
                shutil.rmtree(old, ignore_errors=True)
                target.rename(old)
                staging.rename(target)
                shutil.rmtree(old)
            else:
                staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._append_history(base, assessment, action)
        return WriteOutcome(assessment.label, action)

    def _append_history(self, base: Path, assessment, action: str) -> None:
        entry = {
            "time": _now(),
            "pipeline_name": f"qmroct {assessment.algorithm}",
            "version": assessment.version,
            "status": "Complete" if assessment.status != "failed" else "Failed",
            "details": f"assessor {assessment.label} {action}",
        }
        with open(base / "history.jsonl", "a") as fh:
            fh.write(json.dumps(entry) + "\n")

    def add_session(self, project: str, subject: str, label: str, scans: list[dict[str, Any]], move: bool = False) -> Path:
        """Put a session into the archive (used by the demo builder and tests).

        ``scans``: [{"id", "type", "series_description", "files": [paths]}].
        """
        project_dir = self.root / project
        project_dir.mkdir(parents=True, exist_ok=True)
        if not (project_dir / "project.json").exists():
            (project_dir / "project.json").write_text(json.dumps({"ID": project, "name": project}, indent=1))
        subject_dir = project_dir / "subjects" / subject
        subject_dir.mkdir(parents=True, exist_ok=True)
        if not (subject_dir / "subject.json").exists():
            (subject_dir / "subject.json").write_text(json.dumps({"label": subject, "project": project}, indent=1))
        session_dir = subject_dir / "experiments" / label
        session_dir.mkdir(parents=True, exist_ok=True)
        (session_dir / "session.json").write_text(
            json.dumps({"label": label, "ID": label, "xsiType": SESSION_TYPE, "subject": subject, "project": project}, indent=1)
        )
        for scan in scans:
            scan_dir = session_dir / "scans" / str(scan["id"])
            files_dir = scan_dir / "resources" / "DICOM" / "files"
            files_dir.mkdir(parents=True, exist_ok=True)
            meta = {"ID": str(scan["id"]), "xsiType": "xnat:optScanData", "quality": scan.get("quality", "")}
            meta.update({k: scan[k] for k in ("type", "series_description") if k in scan})
            (scan_dir / "scan.json").write_text(json.dumps(meta, indent=1))
            for f in scan.get("files", []):
                f = Path(f)
                (shutil.move if move else shutil.copyfile)(str(f), str(files_dir / f.name))
        return session_dir


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArchiveError(f"{path}: unreadable metadata ({exc})") from exc


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _natural(name: str):
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
