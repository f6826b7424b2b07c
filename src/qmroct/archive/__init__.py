"""Archives: where sessions come from and where assessments go back.

``open_archive(config["archive"])`` picks the backend named by ``backend``;
``archive_for(config)`` does so from the whole workflow config. Backends are
imported lazily so the directory archive needs no XNAT client.

A session's manifest (written by discovery, read by every later step) is the
archive's ``Session`` as JSON: ``manifest_path`` and ``load_manifest`` live
here so later steps need nothing from qmroct.discovery.
"""

from __future__ import annotations

import json
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

__all__ = [
    "Archive",
    "ArchiveError",
    "FileEntry",
    "Scan",
    "Session",
    "SessionUnavailable",
    "WriteOutcome",
    "archive_for",
    "load_manifest",
    "manifest_path",
    "open_archive",
]


def open_archive(archive_config: dict[str, Any], cache_dir: str | None = None) -> Archive:
    options = dict(archive_config)
    backend = options.pop("backend", "directory")
    if backend == "directory":
        from qmroct.archive.directory import DirectoryArchive

        cache = f"{cache_dir}/checksums.json" if cache_dir else None
        return DirectoryArchive(options["path"], checksum_cache=cache)
    if backend == "xnat":
        from qmroct.archive.xnat import XnatArchive

        return XnatArchive(**options, cache_dir=cache_dir)
    raise ArchiveError(f"unknown archive backend {backend!r} (known: directory, xnat)")


def archive_for(config: dict[str, Any]) -> Archive:
    """The archive the workflow config names, with its cache folder."""
    return open_archive(config["archive"], cache_dir=config.get("cache_dir"))


def manifest_path(discovery_dir: Path | str, project: str, label: str) -> Path:
    """The manifest of the session with this label (under its path key, never the raw label)."""
    from qmroct.paths import path_segment

    return Path(discovery_dir) / "sessions" / project / f"{path_segment(label)}.json"


def load_manifest(path: Path | str) -> Session:
    return Session.from_dict(json.loads(Path(path).read_text()))
