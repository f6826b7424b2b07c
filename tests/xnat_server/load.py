"""Load a directory archive (the ``qmroct demo-archive`` layout) into an XNAT server.

Used by the tests and by hand (``python -m tests.xnat_server --load demo/archive``):
everything goes through pyxnat's REST calls, as a site's upload tool would, so the
server ends up with what a real XNAT holds after an upload (projects, subjects,
sessions, scans, DICOM resources with their files).
"""

from __future__ import annotations

import json
from pathlib import Path


class LoadError(Exception):
    """The folder is not a directory archive the loader understands."""


def session_folders(archive: Path) -> list[Path]:
    """Session folders of a directory archive: <project>/subjects/<subject>/experiments/<label>."""
    archive = Path(archive)
    if not archive.is_dir():
        raise LoadError(f"{archive} is not a folder (make one with `qmroct demo-archive`)")
    folders = sorted(p for p in archive.glob("*/subjects/*/experiments/*") if p.is_dir())
    if not folders:
        raise LoadError(
            f"{archive} holds no sessions: expected <project>/subjects/<subject>/experiments/"
            "<session>/session.json (the layout `qmroct demo-archive` writes)"
        )
    return folders


def upload_archive(intf, archive: Path, only: set[str] | None = None) -> list[str]:
    """Put a directory archive into XNAT through pyxnat ``intf``; the labels uploaded.

    ``only``: session labels to upload (all when None). A project the server lacks is
    created first (an XNAT site admin's PUT /data/projects/<id>)."""
    labels = []
    projects_done: set[str] = set()
    for session_dir in session_folders(archive):
        info = json.loads((session_dir / "session.json").read_text())
        if only is not None and info["label"] not in only:
            continue
        if info["project"] not in projects_done:
            project = intf.select.project(info["project"])
            if not project.exists():
                project.create()
            projects_done.add(info["project"])
        exp = intf.select(
            f"/project/{info['project']}/subject/{info['subject']}/experiment/{info['label']}"
        )
        exp.create(experiments=info.get("xsiType", "xnat:optSessionData"))
        for scan_dir in sorted((session_dir / "scans").iterdir()):
            scan = json.loads((scan_dir / "scan.json").read_text())
            stype = scan.get("xsiType", "xnat:optScanData")
            exp.scan(scan["ID"]).create(
                scans=stype,
                **{
                    f"{stype}/type": scan.get("type", ""),
                    f"{stype}/series_description": scan.get("series_description", ""),
                },
            )
            for f in sorted(scan_dir.glob("resources/*/files/*")):
                res = f.parent.parent.name
                exp.scan(scan["ID"]).resource(res).file(f.name).put(
                    str(f), format="DICOM", content="RAW"
                )
        labels.append(info["label"])
    return labels


def load_archive(url: str, login: str, password: str, archive: Path) -> list[str]:
    """Upload the sessions of ``archive`` the server does not hold yet; their labels."""
    import pyxnat

    intf = pyxnat.Interface(server=url, user=login, password=password)
    try:
        missing = set()
        for folder in session_folders(archive):
            info = json.loads((folder / "session.json").read_text())
            path = f"/project/{info['project']}/subject/{info['subject']}"
            if not intf.select(f"{path}/experiment/{info['label']}").exists():
                missing.add(info["label"])
        return upload_archive(intf, archive, only=missing)
    finally:
        intf.disconnect()
