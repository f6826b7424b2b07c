"""Archives: where sessions come from and where assessments go back.

``open_archive(config["archive"])`` picks the backend named by ``backend``.
Backends are imported lazily so the directory archive needs no XNAT client.
"""

from __future__ import annotations

from typing import Any

from qmroct.archive.base import Archive, ArchiveError, FileEntry, Scan, Session, SessionUnavailable, WriteOutcome

__all__ = ["Archive", "ArchiveError", "FileEntry", "Scan", "Session", "SessionUnavailable", "WriteOutcome", "open_archive"]


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
