"""Discovery: the sessions table and one manifest per session.

``results/discovery/sessions.tsv`` is for people (one row per scan file:
project, subject, session, scan, type, file, size, checksum, fingerprint);
``results/discovery/sessions/<project>/<session>.json`` is each session's
manifest, the only input of that session's jobs. A manifest is byte-identical
across discoveries while the session is unchanged, so Snakemake's checksum
comparison reruns only sessions whose content changed.

Discovery is also where archive metadata is vetted, for every backend (see
qmroct.paths): a session whose project, subject, label or ID XNAT would
refuse, or whose label another session of the project also uses, keeps its
row with a ``problem``; so does a scan with an unsafe ID or file name. Such
sessions and scans are never fetched; the algorithms record them as failed
with the reason, and the other sessions are not affected.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from qmroct.archive import archive_for
from qmroct.archive.base import Scan, Session
from qmroct.paths import UnsafePath, check_label, check_relative, path_segment

INDEX_COLUMNS = [
    "project",
    "subject",
    "session",
    "session_id",
    "scan",
    "type",
    "file",
    "size",
    "checksum",
    "fingerprint",
    "path_key",
    "problem",
]
# XNAT's label characters, plus dots after the first
SCAN_ID = re.compile(r"[A-z0-9_-][A-z0-9_.-]{0,99}")


def archive_state_token(config: dict[str, Any]) -> str:
    with archive_for(config) as archive:
        archive.check()
        return archive.state_token(list(config["projects"]))


def vet_session(session: Session) -> Session:
    """The session with ``problem`` set on it or its scans where archive metadata is unsafe."""
    problem = session.problem
    if not problem:
        try:
            check_label("project", session.project)
            check_label("subject", session.subject)
            check_label("session label", session.label)
            if session.id:
                check_label("session ID", session.id)
        except UnsafePath as exc:
            problem = str(exc)
    scans = tuple(_vet_scan(scan) for scan in session.scans)
    return replace(session, problem=problem, scans=scans)


def _vet_scan(scan: Scan) -> Scan:
    if scan.problem:
        return scan
    try:
        if not isinstance(scan.id, str) or not SCAN_ID.fullmatch(scan.id):
            raise UnsafePath(f"scan ID {str(scan.id)[:80]!r} is not a valid XNAT scan ID")
        for entry in scan.files:
            check_relative(f"scan {scan.id} file name", entry.name)
    except UnsafePath as exc:
        return replace(scan, problem=str(exc))
    return scan


def _mark_duplicates(sessions: list[Session]) -> list[Session]:
    """Labels are unique per project in XNAT; a directory archive may still repeat one.
    Every session sharing a label fails with the reason, each under its own path key."""
    counts: dict[str, int] = {}
    for s in sessions:
        counts[s.key] = counts.get(s.key, 0) + 1
    out = []
    for s in sessions:
        if counts[s.key] > 1:
            reason = (
                f"session label {s.label!r} is used by {counts[s.key]} sessions of project "
                f"{s.project} (XNAT labels are unique per project)"
            )
            key = path_segment("\0".join([s.label, s.subject, s.id]), limit=0)
            s = replace(s, problem=s.problem or reason, path_key=key)
        out.append(s)
    return out


def write_discovery(sessions: list[Session], out_dir: Path, index_path: Path) -> None:
    out_dir = Path(out_dir)
    manifests = out_dir / "sessions"
    if manifests.exists():
        shutil.rmtree(manifests)  # a deleted session must not linger
    rows = []
    for session in sessions:
        path = Path(out_dir) / "sessions" / session.project / f"{session.path_key}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(session.to_dict(), indent=1, sort_keys=True))
        head = [session.project, session.subject, session.label, session.id]
        tail = [session.fingerprint, session.path_key]
        if not session.scans:
            rows.append([*head, "", "", "", "", "", *tail, session.problem])
        for scan in session.scans:
            problem = session.problem or scan.problem
            for f in scan.files or ():
                rows.append([*head, scan.id, scan.type, f.name, f.size, f.checksum, *tail, problem])
            if not scan.files:
                rows.append([*head, scan.id, scan.type, "", "", "", *tail, problem])
    index_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = index_path.with_name(f".{index_path.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
        writer.writerow(INDEX_COLUMNS)
        writer.writerows(rows)
    os.replace(tmp, index_path)


def vetted_sessions(config: dict[str, Any]) -> list[Session]:
    """The archive's sessions as the workflow sees them: vetted, duplicates marked
    (``qmroct discover`` lists the same problems the run would record)."""
    with archive_for(config) as archive:
        archive.check()
        sessions = archive.discover(list(config["projects"]))
    return _mark_duplicates([vet_session(s) for s in sessions])


def discover(config: dict[str, Any], out_dir: Path, index_path: Path) -> list[Session]:
    sessions = vetted_sessions(config)
    write_discovery(sessions, out_dir, index_path)
    return sessions


@functools.lru_cache(maxsize=8)
def _read_index_cached(path: str, mtime_ns: int) -> tuple[tuple[str, str], ...]:
    pairs: dict[tuple[str, str], None] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            # an index written before path keys existed: the label was the path
            pairs[(row["project"], row.get("path_key") or path_segment(row["session"]))] = None
    return tuple(pairs)


def read_session_index(path: Path | str) -> tuple[tuple[str, str], ...]:
    """(project, session path key) pairs, cached while the file is unchanged (input functions
    call this often). The path key is the session's folder and file name in results/."""
    path = str(path)
    return _read_index_cached(path, os.stat(path).st_mtime_ns)
