"""The last job of a session's group: merge its results, draw thumbnails.

The summary (one JSON per session) is what write-back and the report read;
the thumbnail is a small 8-bit picture of the central B-scan with any
detected boundaries drawn on it, for the report's worst-scan gallery. It is
not scan data (a downsampled preview), and it is the only image derived from
the scans that leaves the job.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from qmroct.archive.base import Archive, Session
from qmroct.staging import stage_session

THUMBNAIL_WIDTH = 320


def load_result(path: Path | str) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def summarise_session(session: Session, result_paths: list[Path]) -> dict[str, Any]:
    results = [load_result(p) for p in result_paths]
    algorithms = {
        r["algorithm"]["name"]: {
            "version": r["algorithm"]["version"],
            "code_checksum": r["algorithm"]["code_checksum"],
            "status": r["status"],
            "error": r.get("error"),
            "result": str(p),
        }
        for r, p in zip(results, result_paths, strict=True)
    }
    scans: dict[str, dict[str, Any]] = {
        s.id: {"scan": s.id, "type": s.type, "kqis": {}, "errors": {}} for s in session.scans
    }
    for r in results:
        name = r["algorithm"]["name"]
        for s in r["scans"]:
            entry = scans.setdefault(
                s["scan"], {"scan": s["scan"], "type": s.get("type", ""), "kqis": {}, "errors": {}}
            )
            if s["status"] == "ok":
                for kqi, v in s["kqis"].items():
                    entry["kqis"][f"{name}.{kqi}"] = v.get("value")
            else:
                entry["errors"][name] = s.get("error")
    return {
        "session": session.to_dict() | {"extra": {}},
        "algorithms": algorithms,
        "scans": list(scans.values()),
    }


def boundaries_for(
    result: dict[str, Any], result_path: Path, scan_id: str
) -> dict[str, np.ndarray]:
    """Boundary lines (name -> (n_bscans, width) px) from a segmentation result's extra files."""
    extras_dir = Path(str(result_path)[: -len(".json")] + ".files")
    for scan in result.get("scans", []):
        if scan["scan"] != scan_id:
            continue
        for rel in scan.get("extra_files", []):  # "<scan>/<file>", relative to <algorithm>.files/
            path = extras_dir / rel
            if path.suffix == ".npz" and path.exists():
                with np.load(path) as data:
                    # Boundary lines are float (bscan, ascan) arrays; masks and scalars are
                    # not drawn.
                    return {
                        k: np.asarray(data[k])
                        for k in data.files
                        if data[k].ndim == 2 and np.issubdtype(data[k].dtype, np.floating)
                    }
    return {}


def make_thumbnails(
    session: Session,
    archive: Archive,
    scratch_root: Path,
    out_dir: Path,
    result_paths: list[Path],
) -> list[str]:
    """One PNG per readable scan: the central B-scan, log-scaled, with boundaries."""
    from qmroct.thumbnail import write_thumbnail

    out_dir.mkdir(parents=True, exist_ok=True)
    staged = stage_session(scratch_root, session, archive)
    results = [(load_result(p), Path(p)) for p in result_paths]
    written = []
    for scan_id, item in staged.items():
        if item.volume_path is None:
            continue
        volume = np.load(item.volume_path, mmap_mode="r")
        b = volume.shape[0] // 2
        image = np.asarray(volume[b], dtype=np.float32)
        shown = (
            10 * np.log10(np.maximum(image, 1.0))
            if item.meta.get("intensity", "linear") == "linear"
            else image
        )
        lo, hi = np.percentile(shown, [1, 99.8])
        drawn = [
            lines[b]
            for result, path in results
            for lines in boundaries_for(result, path, scan_id).values()
            if lines.shape[0] > b and lines.shape[1] == image.shape[1]
        ]
        target = out_dir / f"{scan_id}.png"
        write_thumbnail(target, shown, float(lo), float(hi), THUMBNAIL_WIDTH, drawn)
        written.append(target.name)
    return written
