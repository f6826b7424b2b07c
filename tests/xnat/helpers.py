"""Helpers shared by the XNAT tests (seeding sessions through pyxnat)."""

from __future__ import annotations

import hashlib

USER = "qmtester"


def file_bytes(project: str, session: str, scan: str, index: int, size: int = 4096) -> bytes:
    seed = hashlib.sha256(f"{project}/{session}/{scan}/{index}".encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def seed_session(
    intf,
    project: str,
    subject: str,
    label: str,
    scans=("1", "2"),
    files_per_scan: int = 2,
    size: int = 4096,
    session_type: str = "xnat:optSessionData",
) -> None:
    """Create a session with scans and DICOM-resource files through pyxnat."""
    scan_type = session_type.replace("SessionData", "ScanData")
    exp = intf.select(f"/project/{project}/subject/{subject}/experiment/{label}")
    exp.create(experiments=session_type, **{f"{session_type}/date": "2026-01-15"})
    for scan in scans:
        sc = exp.scan(scan)
        sc.create(
            scans=scan_type,
            **{f"{scan_type}/type": "OCT", f"{scan_type}/series_description": "Macula 6x6"},
        )
        for i in range(files_per_scan):
            sc.resource("DICOM").file(f"{label}_{scan}_{i:03d}.dcm").put(
                file_bytes(project, label, scan, i, size), format="DICOM", content="RAW"
            )
