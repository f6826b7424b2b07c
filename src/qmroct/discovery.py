"""Discovery: the sessions table and one manifest per session.

``results/discovery/sessions.tsv`` is for people (one row per scan file:
project, subject, session, scan, type, file, size, checksum, fingerprint);
``results/discovery/sessions/<project>/<session>.json`` is each session's
manifest, the only input of that session's jobs. A manifest is byte-identical
across discoveries while the session is unchanged, so Snakemake's checksum
comparison reruns only sessions whose content changed.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import shutil
from pathlib import Path
from typing import Any

from qmroct.archive import open_archive
from qmroct.archive.base import Session

INDEX_COLUMNS = ["project", "subject", "session", "session_id", "scan", "type", "file", "size", "checksum", "fingerprint"]


def archive_for(config: dict[str, Any]):
    return open_archive(config["archive"], cache_dir=config.get("cache_dir"))


def archive_state_token(config: dict[str, Any]) -> str:
    with archive_for(config) as archive:
        archive.check()
        return archive.state_token(list(config["projects"]))


def manifest_path(out_dir: Path, project: str, label: str) -> Path:
    return Path(out_dir) / "sessions" / project / f"{label}.json"


def write_discovery(sessions: list[Session], out_dir: Path, index_path: Path) -> None:
    out_dir = Path(out_dir)
    manifests = out_dir / "sessions"
    if manifests.exists():
        shutil.rmtree(manifests)  # a deleted session must not linger
    rows = []
    for session in sessions:
        path = manifest_path(out_dir, session.project, session.label)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(session.to_dict(), indent=1, sort_keys=True))
        if not session.scans:
            rows.append([session.project, session.subject, session.label, session.id, "", "", "", "", "", session.fingerprint])
        for scan in session.scans:
            for f in scan.files or ():
                rows.append(
                    [session.project, session.subject, session.label, session.id, scan.id, scan.type, f.name, f.size, f.checksum, session.fingerprint]
                )
            if not scan.files:
                rows.append([session.project, session.subject, session.label, session.id, scan.id, scan.type, "", "", "", session.fingerprint])
    index_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = index_path.with_name(f".{index_path.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
        writer.writerow(INDEX_COLUMNS)
        writer.writerows(rows)
    os.replace(tmp, index_path)


def discover(config: dict[str, Any], out_dir: Path, index_path: Path) -> list[Session]:
    with archive_for(config) as archive:
        archive.check()
        sessions = archive.discover(list(config["projects"]))
    labels = [s.key for s in sessions]
    duplicates = sorted({k for k in labels if labels.count(k) > 1})
    if duplicates:
        raise ValueError(f"session labels must be unique per project; duplicated: {', '.join(duplicates)}")
    write_discovery(sessions, out_dir, index_path)
    return sessions


@functools.lru_cache(maxsize=8)
def _read_index_cached(path: str, mtime_ns: int) -> tuple[tuple[str, str], ...]:
    pairs: dict[tuple[str, str], None] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            pairs[(row["project"], row["session"])] = None
    return tuple(pairs)


def read_session_index(path: Path | str) -> tuple[tuple[str, str], ...]:
    """(project, session) pairs, cached while the file is unchanged (input functions call this often)."""
    path = str(path)
    return _read_index_cached(path, os.stat(path).st_mtime_ns)


def load_manifest(path: Path | str) -> Session:
    return Session.from_dict(json.loads(Path(path).read_text()))
