"""Helpers shared by the XNAT tests (seeding sessions through pyxnat, a workflow copy
configured for the test server)."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import yaml

USER = "qmtester"


def xnat_workflow_config(root: Path, server_url: str, algorithms: dict) -> dict:
    """The workflow copy's config.yaml pointed at the test server's DEMO project, with
    ``algorithms`` and no studies (not written: callers add what their test needs)."""
    config = yaml.safe_load((Path(root) / "config.yaml").read_text())
    config.update(
        archive={"backend": "xnat", "server": server_url, "backoff": 0.1},
        projects=["DEMO"],
        algorithms=algorithms,
        studies={},
    )
    return config


def workflow_env(password: str, **extra: str) -> dict[str, str]:
    """Environment for a snakemake run against the test server: credentials as the
    Container Service gives them, this interpreter's bin first on PATH, and no XNAT_HOST or
    NETRC of the developer's that could stand in for them."""
    env = dict(
        os.environ,
        XNAT_USER=USER,
        XNAT_PASS=password,
        PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        **extra,
    )
    for key in ("XNAT_HOST", "NETRC"):
        env.pop(key, None)
    return env


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
