"""Vendor OCT exports beyond DICOM: Heidelberg .vol/.e2e, Topcon .fds/.fda, Zeiss .img,
Bioptigen .OCT.

``read_vendor(path) -> Volume`` (called by :func:`qmroct.scanio.read_scan`
for files that are neither DICOM nor .npy).

* Heidelberg ``.vol`` (Heyex raw export, magic ``HSF-OCT-``): read here with
  numpy from the published layout (2048-byte file header, SLO image, then per
  B-scan a header of ``BScanHdrSize`` bytes and SizeX*SizeY float32). The
  values are the device's *linear* reflectivity (0..1); FLT_MAX marks pixels
  outside the scan and becomes NaN. Spacing (mm) comes from the header.
* Heidelberg ``.e2e``/``.sdb``: eyepy (``import_heyex_e2e``, raw linear data,
  real spacing) when installed, else oct-converter's ``E2E``, whose B-scans are
  already log-compressed for display and whose lateral/B-scan spacing is *not*
  read from the file (oct-converter defaults); both facts are recorded in
  ``Volume.extra`` and the intensity kind is set accordingly.
* Topcon ``.fds``/``.fda``, Zeiss Cirrus ``.img``, Bioptigen ``.OCT``:
  oct-converter. These hold device display values (8-bit, log-like): intensity
  kind "log8"; spacing only where the reader provides it.

Intensity kinds matter for noise KQIs: a 0-100 rescaled or display-compressed
volume does not hold device noise levels; algorithms flag such inputs.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

from qmroct.scanio.volume import ScanError, Volume, check_decoded_size, decoded_limit_bytes

VOL_MAGIC = b"HSF-OCT-"
VOL_HEADER_SIZE = 2048
FLT_MAX = np.finfo(np.float32).max


def read_vendor(path: Path | str, max_bytes: int | None = None) -> Volume:
    """``max_bytes`` bounds what the .vol reader allocates (checked against its header);
    the oct-converter readers are bounded by the caller's file-size check only."""
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(16)
    suffix = path.suffix.lower()
    if head.startswith(VOL_MAGIC):
        return read_heyex_vol(path, max_bytes)
    if suffix in (".e2e", ".sdb") or head.startswith(b"CMDb"):
        return read_heyex_e2e(path)
    if suffix in (".fds", ".fda"):
        return _read_oct_converter(path, suffix, max_bytes)
    if suffix == ".img":
        return _read_oct_converter(path, suffix, max_bytes)
    if suffix == ".oct":
        return _read_oct_converter(path, suffix, max_bytes)
    raise ScanError(
        path,
        "unrecognised format (expected DICOM OPT, .npy, Heidelberg .vol/.e2e, Topcon .fds/.fda, "
        "Zeiss .img or Bioptigen .OCT)",
    )


# ---------------------------------------------------------------- Heyex .vol
def _unpack(fmt: str, buf: bytes, offset: int):
    return struct.unpack_from("<" + fmt, buf, offset)[0]


def read_heyex_vol_header(buf: bytes) -> dict[str, Any]:
    if len(buf) < VOL_HEADER_SIZE or not buf.startswith(VOL_MAGIC):
        raise ValueError("not a Heyex .vol file (no HSF-OCT- header)")
    return {
        "version": buf[:12].split(b"\0")[0].decode("ascii", "replace").strip(),
        "size_x": _unpack("I", buf, 12),
        "n_bscans": _unpack("I", buf, 16),
        "size_y": _unpack("I", buf, 20),
        "scale_x": _unpack("d", buf, 24),
        "distance": _unpack("d", buf, 32),
        "scale_y": _unpack("d", buf, 40),
        "size_x_slo": _unpack("I", buf, 48),
        "size_y_slo": _unpack("I", buf, 52),
        "scan_position": buf[84:88].split(b"\0")[0].decode("ascii", "replace").strip(),
        "scan_pattern": _unpack("i", buf, 96),
        "bscan_hdr_size": _unpack("I", buf, 100),
        "id": buf[104:120].split(b"\0")[0].decode("ascii", "replace"),
    }


def read_heyex_vol(path: Path, max_bytes: int | None = None) -> Volume:
    limit = decoded_limit_bytes() if max_bytes is None else int(max_bytes)
    try:
        with open(path, "rb") as fh:
            header = read_heyex_vol_header(fh.read(VOL_HEADER_SIZE))
            nx, nb, nz = header["size_x"], header["n_bscans"], header["size_y"]
            hdr = header["bscan_hdr_size"]
            if not (0 < nx <= 16384 and 0 < nb <= 4096 and 0 < nz <= 16384) or hdr < 256:
                raise ValueError(
                    f"implausible header: {nb} B-scans of {nz} x {nx}, B-scan header {hdr} bytes"
                )
            check_decoded_size(path, nb * nz * nx, nb * nz * nx * 4, limit)
            slo = header["size_x_slo"] * header["size_y_slo"]
            offset = VOL_HEADER_SIZE + slo
            stride = hdr + 4 * nx * nz
            expected = offset + nb * stride
            size = path.stat().st_size
            if size < expected:
                raise ValueError(f"truncated: {size} bytes, header promises {expected}")
            raw = np.memmap(path, dtype=np.uint8, mode="r", offset=offset, shape=(nb, stride))
            data = (
                np.ascontiguousarray(raw[:, hdr:])
                .view("<f4")
                .reshape(nb, nz, nx)
                .astype(np.float32)
            )
            del raw
    except (OSError, ValueError, struct.error) as exc:
        raise ScanError(path, f"unreadable Heidelberg .vol: {exc}") from exc
    invalid = data >= FLT_MAX * 0.99
    data[invalid] = np.nan
    lat = header["scan_position"].upper()
    return Volume(
        data=data,
        spacing_mm={
            "bscan": float(header["distance"]),
            "depth": float(header["scale_y"]),
            "ascan": float(header["scale_x"]),
        },
        device="Heidelberg Engineering Spectralis",
        laterality=lat if lat in ("OD", "OS") else "",
        intensity="linear",
        source=str(path),
        extra={
            "format": "heyex-vol",
            "vol_version": header["version"],
            "scan_pattern": header["scan_pattern"],
            "invalid_voxels": int(invalid.sum()),
        },
    )


# ---------------------------------------------------------------- Heyex .e2e
def read_heyex_e2e(path: Path) -> Volume:
    try:
        import eyepy  # noqa: F401
    except ImportError:
        eyepy = None
    if eyepy is not None:
        try:
            ev = eyepy.import_heyex_e2e(path)
            data = np.asarray(ev.data_raw, dtype=np.float32)
            data[data > 1.99] = np.nan  # empty regions in E2E exports
            return Volume(
                data=data,
                spacing_mm={
                    "bscan": float(ev.scale_z),
                    "depth": float(ev.scale_y),
                    "ascan": float(ev.scale_x),
                },
                device="Heidelberg Engineering Spectralis",
                laterality=_laterality(ev.meta.get("laterality", "")),
                intensity="linear",
                source=str(path),
                extra={"format": "heyex-e2e", "reader": "eyepy"},
            )
        except Exception as exc:  # eyepy raises many types on broken files
            raise ScanError(path, f"unreadable Heidelberg .e2e (eyepy): {exc}") from exc
    return _read_oct_converter(path, ".e2e")


def _laterality(text: Any) -> str:
    t = str(text or "").upper()
    if t in ("OD", "R", "RIGHT"):
        return "OD"
    if t in ("OS", "L", "LEFT"):
        return "OS"
    return ""


# --------------------------------------------------------- oct-converter set
def _check_bioptigen(path: Path, limit: int) -> None:
    """Bound oct-converter's Bioptigen reader before it runs: it reads every length field
    with file.read(n), which allocates n bytes even past the end of the file, and then
    allocates the volume its header declares (np.empty). Parsed here from memory (the
    file is within the limit), where a read stops at the end, with the reader's own
    structure; then the declared volume is checked against the limit."""
    import io

    from oct_converter.readers.boct import BOCT

    parsed = BOCT.file_structure.parse_stream(io.BytesIO(path.read_bytes()))
    header, frames = parsed.header, parsed.data
    if not frames:
        raise ValueError("no frames")
    count = header.frames.value * header.scans.value
    voxels = count * frames[0].image.columns * frames[0].image.rows
    check_decoded_size(path, voxels, voxels * 2, limit)


def _read_oct_converter(path: Path, suffix: str, limit: int | None = None) -> Volume:
    limit = decoded_limit_bytes() if limit is None else limit
    try:
        from oct_converter import readers
    except ImportError as exc:
        raise ScanError(
            path,
            f"reading {suffix} files needs oct-converter (pip install oct-converter==0.7.0): {exc}",
        ) from exc
    try:
        if suffix == ".e2e" or suffix == ".sdb":
            volumes = readers.E2E(path).read_oct_volume()
            if not volumes:
                raise ValueError("no OCT volume in the file")
            oct_vol = volumes[0]
            device = "Heidelberg Engineering Spectralis"
        elif suffix == ".fds":
            oct_vol, device = readers.FDS(path).read_oct_volume(), "Topcon"
        elif suffix == ".fda":
            oct_vol, device = readers.FDA(path).read_oct_volume(), "Topcon"
        elif suffix == ".img":
            oct_vol, device = readers.IMG(path).read_oct_volume(), "Carl Zeiss Meditec Cirrus"
        else:
            _check_bioptigen(path, limit)
            oct_vol, device = readers.BOCT(path).read_oct_volume()[0], "Bioptigen"
        data = np.asarray(oct_vol.volume, dtype=np.float32)
    except ScanError:
        raise
    except Exception as exc:  # the readers raise anything on a broken file
        raise ScanError(path, f"unreadable {suffix} export (oct-converter): {exc}") from exc
    spacing = list(getattr(oct_vol, "pixel_spacing", None) or [])
    notes = []
    if len(spacing) == 3:
        spacing_mm = {
            "ascan": float(spacing[0]),
            "depth": float(spacing[1]),
            "bscan": float(spacing[2]),
        }
        if suffix in (".e2e", ".sdb"):
            notes.append(
                "oct-converter E2E: lateral and B-scan spacing are reader defaults, "
                "not read from the file"
            )
    else:
        spacing_mm = {"bscan": 0.0, "depth": 0.0, "ascan": 0.0}
        notes.append("no pixel spacing from the reader")
    kind = "log8" if float(np.nanmax(data)) <= 255.0 else "linear"
    notes.append(
        f"{suffix} via oct-converter holds display (log-compressed) values: intensity {kind!r}"
    )
    return Volume(
        data=data,
        spacing_mm=spacing_mm,
        device=device,
        laterality=_laterality(getattr(oct_vol, "laterality", "")),
        intensity=kind,
        source=str(path),
        extra={"format": suffix.lstrip("."), "reader": "oct-converter", "notes": notes},
    )


def write_heyex_vol(
    path: Path,
    data: np.ndarray,
    scale_x: float,
    scale_y: float,
    distance: float,
    laterality: str = "OD",
    bscan_hdr_size: int = 2048,
) -> None:
    """Write a minimal Heyex .vol (for tests and fixtures): header, a 1x1 SLO, B-scans.

    ``data`` is (bscan, depth, ascan) linear float32; NaN is written as FLT_MAX.
    """
    nb, nz, nx = data.shape
    head = bytearray(VOL_HEADER_SIZE)
    head[:12] = b"HSF-OCT-103\0"
    struct.pack_into("<III", head, 12, nx, nb, nz)
    struct.pack_into("<ddd", head, 24, scale_x, distance, scale_y)
    struct.pack_into("<II", head, 48, 1, 1)
    head[84:88] = laterality.encode("ascii").ljust(4, b"\0")
    struct.pack_into("<i", head, 96, 3)
    struct.pack_into("<I", head, 100, bscan_hdr_size)
    with open(path, "wb") as fh:
        fh.write(bytes(head))
        fh.write(b"\0")  # SLO 1 x 1
        for b in range(nb):
            bh = bytearray(bscan_hdr_size)
            bh[:12] = b"HSF-BS-103\0\0"
            struct.pack_into("<I", bh, 12, bscan_hdr_size)
            fh.write(bytes(bh))
            fh.write(np.where(np.isnan(data[b]), FLT_MAX, data[b]).astype("<f4").tobytes())
