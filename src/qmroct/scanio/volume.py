"""The normalised volume and format dispatch."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


class ScanError(ValueError):
    """A file that cannot be used as an OCT volume; the message names file and reason."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass
class Volume:
    data: np.ndarray  # float32, (bscan, depth, ascan)
    spacing_mm: dict[str, float]  # {"bscan", "depth", "ascan"}
    device: str = ""
    laterality: str = ""
    intensity: str = "linear"  # "linear", "log8" or "rescaled100" (see oct-quality notes)
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def meta(self, scan_id: str) -> dict[str, Any]:
        """The metadata JSON handed to algorithms next to the array."""
        return {
            "scan_id": scan_id,
            "spacing_mm": self.spacing_mm,
            "device": self.device,
            "laterality": self.laterality,
            "intensity": self.intensity,
            "shape": list(self.data.shape),
            "source": self.source,
        }

    def save(self, directory: Path, scan_id: str) -> tuple[Path, Path]:
        """Write volume.npy and meta.json (the algorithm contract's input)."""
        directory.mkdir(parents=True, exist_ok=True)
        volume_path = directory / "volume.npy"
        meta_path = directory / "meta.json"
        np.save(volume_path, np.ascontiguousarray(self.data, dtype=np.float32))
        meta_path.write_text(json.dumps(self.meta(scan_id), indent=1))
        return volume_path, meta_path


def read_scan(path: Path | str) -> Volume:
    """Read one scan file; the format is recognised from its content."""
    path = Path(path)
    if not path.is_file():
        raise ScanError(path, "file not found")
    with open(path, "rb") as fh:
        head = fh.read(132)
    if len(head) == 132 and head[128:132] == b"DICM":
        from qmroct.scanio.dicom import read_opt_dicom

        volume = read_opt_dicom(path)
    elif head.startswith(b"\x93NUMPY"):
        volume = _read_npy(path)
    else:
        try:
            from qmroct.scanio import vendor  # vendor exports (.vol, .e2e, ...), optional readers
        except ImportError:
            vendor = None
        if vendor is None:
            raise ScanError(path, "unrecognised format (expected DICOM OPT or .npy)")
        volume = vendor.read_vendor(path)
    _check_volume(path, volume)
    return volume


def _read_npy(path: Path) -> Volume:
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ScanError(path, f"unreadable .npy: {exc}") from exc
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if data.ndim == 2:
        data = data[None]
    spacing = meta.get("spacing_mm", {"bscan": 0.0, "depth": 0.0, "ascan": 0.0})
    return Volume(
        data=data.astype(np.float32, copy=False),
        spacing_mm=spacing,
        device=meta.get("device", ""),
        laterality=meta.get("laterality", ""),
        intensity=meta.get("intensity", "linear"),
        source=str(path),
    )


def _check_volume(path: Path, volume: Volume) -> None:
    data = volume.data
    if data.ndim != 3:
        raise ScanError(path, f"expected a 3-D volume (bscan, depth, ascan), got shape {data.shape}")
    if min(data.shape) < 1 or data.shape[1] < 8 or data.shape[2] < 8:
        raise ScanError(path, f"volume too small to be an OCT scan: shape {data.shape}")
