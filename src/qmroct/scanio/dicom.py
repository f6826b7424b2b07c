"""DICOM Ophthalmic Tomography (OPT) images: write synthetic ones, read any.

Only what a quality workflow needs is written: patient/study/series identity,
the multi-frame pixel data (16-bit, MONOCHROME2), and the functional groups
that carry the geometry (pixel spacing, B-scan spacing, per-frame position).
``oct-converter``'s DICOM reader needs a Manufacturer attribute, so we always
write one.
"""

from __future__ import annotations

import datetime as _dt
import zlib
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.filebase import DicomBytesIO
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

from qmroct.scanio.volume import ScanError, Volume, check_decoded_size, decoded_limit_bytes

OPT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.5.4"  # Ophthalmic Tomography Image Storage
UID_ROOT = "1.2.826.0.1.3680043.10.1431."  # deterministic UIDs for deterministic archives


def write_opt_dicom(
    path: Path,
    data: np.ndarray,
    *,
    spacing_mm: dict[str, float],
    patient_id: str,
    study_id: str,
    series_number: int,
    description: str = "OCT Macular Cube",
    laterality: str = "OD",
    manufacturer: str = "qmroct synthetic",
    model: str = "Synthetic SD-OCT",
    acquired: _dt.datetime | None = None,
) -> None:
    """Write ``data`` (bscan, depth, ascan), values in 0..65535, as a multi-frame OPT."""
    if data.ndim != 3:
        raise ValueError(f"expected (bscan, depth, ascan), got shape {data.shape}")
    pixels = np.clip(np.round(data), 0, 65535).astype(np.uint16)
    acquired = acquired or _dt.datetime(2026, 1, 1, 9, 0, 0)
    seed = f"{patient_id}/{study_id}/{series_number}"
    study_uid = generate_uid(UID_ROOT, entropy_srcs=[patient_id, study_id])
    series_uid = generate_uid(UID_ROOT, entropy_srcs=[seed, "series"])
    sop_uid = generate_uid(UID_ROOT, entropy_srcs=[seed, "sop"])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = OPT_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = OPT_SOP_CLASS
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = generate_uid(UID_ROOT, entropy_srcs=[seed, "for"])
    ds.Modality = "OPT"
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = model
    ds.PatientID = patient_id
    ds.PatientName = patient_id
    ds.StudyID = study_id[:16]
    ds.StudyDescription = "Retinal OCT"
    ds.SeriesDescription = description
    ds.SeriesNumber = series_number
    ds.InstanceNumber = 1
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = acquired.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = acquired.strftime("%H%M%S")
    ds.ImageLaterality = "R" if laterality.upper() in ("OD", "R") else "L"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime

    n_frames, rows, cols = pixels.shape
    ds.NumberOfFrames = n_frames
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0

    measures = Dataset()
    measures.PixelSpacing = [f"{spacing_mm['depth']:.6g}", f"{spacing_mm['ascan']:.6g}"]
    measures.SliceThickness = f"{spacing_mm['bscan']:.6g}"
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for i in range(n_frames):
        position = Dataset()
        position.ImagePositionPatient = [0, f"{i * spacing_mm['bscan']:.6g}", 0]
        content = Dataset()
        content.StackID = "1"
        content.InStackPositionNumber = i + 1
        frame = Dataset()
        frame.PlanePositionSequence = Sequence([position])
        frame.FrameContentSequence = Sequence([content])
        per_frame.append(frame)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = pixels.tobytes()

    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def read_opt_dicom(path: Path, max_bytes: int | None = None) -> Volume:
    """Read a DICOM file that holds an OCT volume, or raise ScanError saying why not.

    The pixel data's size is checked against the header (rows x columns x frames x
    samples x bytes) and against ``max_bytes`` before anything is decoded; a deflated
    data set is inflated with the same bound (pydicom would inflate it whole).
    """
    limit = decoded_limit_bytes() if max_bytes is None else int(max_bytes)
    try:
        ds = _read_dataset(path, limit)
    except ScanError:
        raise
    except Exception as exc:  # pydicom raises many types for damaged files
        raise ScanError(path, f"corrupt DICOM ({type(exc).__name__}: {exc})") from exc
    modality = str(getattr(ds, "Modality", ""))
    sop_class = str(getattr(ds, "SOPClassUID", ""))
    if sop_class != OPT_SOP_CLASS and modality != "OPT":
        raise ScanError(
            path,
            f"not an OCT scan (Modality {modality or 'missing'}, "
            f"SOP class {sop_class or 'missing'})",
        )
    _check_pixel_data(path, ds, limit)
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        raise ScanError(
            path, f"corrupt or truncated pixel data ({type(exc).__name__}: {exc})"
        ) from exc
    if pixels.ndim == 2:
        pixels = pixels[None]
    data = pixels.astype(np.float32)
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    if slope != 1 or intercept != 0:
        data = data * slope + intercept
    intensity = "linear" if int(getattr(ds, "BitsStored", 16)) > 8 else "log8"
    if "DERIVED" in list(getattr(ds, "ImageType", [])) and data.size and float(data.max()) <= 100:
        # oct-converter's DICOM writer rescales every volume to 0..100: absolute
        # intensities (and noise levels) are gone, and algorithms must say so.
        intensity = "rescaled100"
    return Volume(
        data=data,
        spacing_mm=_spacing(ds),
        device=" ".join(
            str(getattr(ds, a, "")) for a in ("Manufacturer", "ManufacturerModelName")
        ).strip(),
        laterality={"R": "OD", "L": "OS"}.get(str(getattr(ds, "ImageLaterality", "")), ""),
        intensity=intensity,
        source=str(path),
        extra={"series_description": str(getattr(ds, "SeriesDescription", ""))},
    )


# Bytes a deflated data set may hold beyond its pixel data (the other elements).
DEFLATE_HEADROOM = 16 * 2**20


def _read_dataset(path: Path, limit: int) -> Dataset:
    # Everything from memory, the file meta information included: pydicom reads each
    # element with fp.read(length), and a file object allocates the whole (damaged, huge)
    # length up front; a BytesIO stops at the end. The file's size is within the limit
    # (read_scan checks it).
    raw = path.read_bytes()
    fh = DicomBytesIO(raw)
    pydicom.filereader.read_preamble(fh, False)
    meta = pydicom.filereader._read_file_meta_info(fh)  # positions fh after group 2 (pydicom 3.0)
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return pydicom.dcmread(DicomBytesIO(raw))
    # PS3.5 A.5: everything after the file meta information is one raw deflate stream.
    # pydicom.filereader.read_partial inflates it whole (zlib.decompress): a few hundred KB
    # can become gigabytes. Here the elements before the pixel data are inflated first
    # (at most DEFLATE_HEADROOM bytes), the header's promise is checked against the
    # limit, and only then the rest, bounded by that promise.
    compressed = fh.read()
    del fh, raw
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    data = bytearray(inflater.decompress(compressed, DEFLATE_HEADROOM))
    del compressed
    try:
        header = pydicom.filereader.read_dataset(
            DicomBytesIO(bytes(data)),
            is_implicit_VR=False,
            is_little_endian=True,
            stop_when=lambda tag, vr, length: tag == PIXEL_DATA,
        )
        header.file_meta = meta
    except Exception as exc:
        raise ScanError(
            path, f"corrupt deflated DICOM header ({type(exc).__name__}: {exc})"
        ) from exc
    promised = _check_pixel_data(path, header, limit, check_length=False)
    data += inflater.decompress(inflater.unconsumed_tail, promised + DEFLATE_HEADROOM)
    if inflater.unconsumed_tail:
        raise ScanError(path, "deflated data set inflates to more than its header promises")
    ds = pydicom.filereader.read_dataset(
        DicomBytesIO(bytes(data)), is_implicit_VR=False, is_little_endian=True
    )
    # its pixel data is native (uncompressed) once inflated
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


PIXEL_DATA = 0x7FE00010


def _check_pixel_data(path: Path, ds: Dataset, limit: int, check_length: bool = True) -> int:
    """The header's promise (stored bytes), checked against the limit before pixel_array
    allocates it, and against the pixel data actually held."""
    if check_length and "PixelData" not in ds:
        raise ScanError(path, "corrupt or truncated pixel data (no Pixel Data element)")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
        bits = int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ScanError(path, f"corrupt pixel data header ({type(exc).__name__}: {exc})") from exc
    if min(rows, cols, frames, samples, bits) < 1:
        raise ScanError(
            path, f"corrupt pixel data header: {frames} frames of {rows} x {cols}, {bits} bits"
        )
    voxels = rows * cols * frames * samples
    stored = (voxels * bits + 7) // 8
    check_decoded_size(path, voxels, stored, limit)
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if check_length and (syntax is None or not syntax.is_compressed):
        held = len(ds.PixelData)
        if held < stored:
            raise ScanError(
                path, f"corrupt or truncated pixel data: {held} bytes, the header promises {stored}"
            )
    return stored


def _spacing(ds: Dataset) -> dict[str, float]:
    """Spacing from the shared functional groups, falling back to top-level attributes."""
    measures = None
    try:
        measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    except (AttributeError, IndexError, KeyError):
        measures = ds
    pixel_spacing = getattr(measures, "PixelSpacing", None) or [0, 0]
    thickness = (
        getattr(measures, "SliceThickness", None) or getattr(ds, "SpacingBetweenSlices", 0) or 0
    )
    return {
        "bscan": float(thickness),
        "depth": float(pixel_spacing[0]),
        "ascan": float(pixel_spacing[1]),
    }
