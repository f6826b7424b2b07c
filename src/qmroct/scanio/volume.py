"""The normalised volume and format dispatch."""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# The largest decoded scan a reader may produce, in MB (config: limits/scan_decoded_mb).
# The workflow hands the configured value to its jobs in this environment variable
# (rules/common.smk), because readers run deep inside staging, far from the config.
MAX_DECODED_ENV = "QMROCT_SCAN_DECODED_MB"
DEFAULT_MAX_DECODED_MB = 2048
NPY_HEADER_MAX = 65536  # numpy itself refuses headers over 10,000 bytes by default


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


def decoded_limit_bytes() -> int:
    """The decoded-size limit in bytes: the workflow's configured value, else the default."""
    try:
        mb = float(os.environ.get(MAX_DECODED_ENV, DEFAULT_MAX_DECODED_MB))
    except ValueError:
        mb = DEFAULT_MAX_DECODED_MB
    return int(mb * 2**20)


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def check_decoded_size(path: Path | str, voxels: int, stored_bytes: int, limit: int) -> None:
    """Refuse, before anything is allocated, a scan whose header promises more than ``limit``
    bytes, as float32 voxels (what every reader produces) or as stored pixel data."""
    largest = max(voxels * 4, stored_bytes)
    if largest > limit:
        raise ScanError(
            path,
            f"header promises {_mb(largest)} of decoded data, more than the "
            f"limit of {_mb(limit)} (limits/scan_decoded_mb)",
        )


def read_scan(path: Path | str, max_bytes: int | None = None) -> Volume:
    """Read one scan file; the format is recognised from its content.

    Raises only :class:`ScanError`, whatever the file holds: a reader's own
    checks name the problem, anything else a reader raises on a damaged file is
    wrapped. ``max_bytes`` bounds the decoded size (default: ``decoded_limit_bytes()``).
    """
    path = Path(path)
    limit = decoded_limit_bytes() if max_bytes is None else int(max_bytes)
    if not path.is_file():
        raise ScanError(path, "file not found")
    size = path.stat().st_size
    if size > limit:  # every supported format decodes to at least its stored size
        raise ScanError(
            path,
            f"file is {_mb(size)}, more than the limit of {_mb(limit)} (limits/scan_decoded_mb)",
        )
    try:
        volume = _read_any(path, limit)
    except ScanError:
        raise
    except Exception as exc:  # a damaged file can make any library raise anything
        raise ScanError(path, f"unreadable ({type(exc).__name__}: {exc})") from exc
    _check_volume(path, volume)
    if volume.data.nbytes > limit:  # readers we cannot bound beforehand (oct-converter)
        raise ScanError(
            path,
            f"decoded volume is {_mb(volume.data.nbytes)}, more than the "
            f"limit of {_mb(limit)} (limits/scan_decoded_mb)",
        )
    return volume


def _read_any(path: Path, limit: int) -> Volume:
    with open(path, "rb") as fh:
        head = fh.read(132)
    if len(head) == 132 and head[128:132] == b"DICM":
        from qmroct.scanio.dicom import read_opt_dicom

        return read_opt_dicom(path, max_bytes=limit)
    if head.startswith(b"\x93NUMPY"):
        return _read_npy(path, limit)
    try:
        from qmroct.scanio import vendor  # vendor exports (.vol, .e2e, ...), optional readers
    except ImportError:
        vendor = None
    if vendor is None:
        raise ScanError(path, "unrecognised format (expected DICOM OPT or .npy)")
    return vendor.read_vendor(path, max_bytes=limit)


def _read_npy(path: Path, limit: int) -> Volume:
    # The header says how much the array holds: check it against the limit and the
    # file's size before np.load allocates that much.
    try:
        with open(path, "rb") as fh:
            # from a bounded buffer: a damaged header length would make a file read allocate it
            head = io.BytesIO(fh.read(NPY_HEADER_MAX))
        version = np.lib.format.read_magic(head)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(head)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(head)
        offset = head.tell()
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as exc:
        raise ScanError(path, f"unreadable .npy header: {exc}") from exc
    if dtype.hasobject or dtype.kind not in "biuf":
        raise ScanError(path, f"unsupported .npy data type {dtype}")
    if len(shape) not in (2, 3):
        raise ScanError(path, f"expected a 3-D volume (bscan, depth, ascan), got shape {shape}")
    voxels = int(np.prod(shape, dtype=object))
    check_decoded_size(path, voxels, voxels * dtype.itemsize, limit)
    if path.stat().st_size - offset < voxels * dtype.itemsize:
        raise ScanError(
            path, f"truncated .npy: header promises {voxels * dtype.itemsize} bytes of data"
        )
    try:
        data = np.load(path, allow_pickle=False, mmap_mode="r")
    except (ValueError, OSError, EOFError) as exc:
        raise ScanError(path, f"unreadable .npy: {exc}") from exc
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if data.ndim == 2:
        data = data[None]
    spacing = meta.get("spacing_mm", {"bscan": 0.0, "depth": 0.0, "ascan": 0.0})
    return Volume(
        data=np.array(data, dtype=np.float32),  # a copy: the memory map closes with the file
        spacing_mm=spacing,
        device=meta.get("device", ""),
        laterality=meta.get("laterality", ""),
        intensity=meta.get("intensity", "linear"),
        source=str(path),
    )


def _check_volume(path: Path, volume: Volume) -> None:
    data = volume.data
    if data.ndim != 3:
        raise ScanError(
            path, f"expected a 3-D volume (bscan, depth, ascan), got shape {data.shape}"
        )
    if min(data.shape) < 1 or data.shape[1] < 8 or data.shape[2] < 8:
        raise ScanError(path, f"volume too small to be an OCT scan: shape {data.shape}")
