"""Issue 9 case 4: a scan's decoded size is bounded before memory is allocated.

A 297 KB deflated DICOM used to expand to 1.5 GB of memory: pydicom inflates a
deflated data set whole, and pixel_array allocates whatever the header says.
"""

from __future__ import annotations

import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian

from qmroct.scanio import ScanError, read_scan
from qmroct.scanio.dicom import write_opt_dicom
from qmroct.scanio.vendor import write_heyex_vol
from qmroct.scanio.volume import MAX_DECODED_ENV

SPACING = {"bscan": 0.1, "depth": 0.004, "ascan": 0.01}
MB = 2**20


def small_dicom(path: Path, shape=(3, 32, 16)) -> np.ndarray:
    data = np.random.default_rng(1).integers(0, 4000, shape).astype(np.float32)
    write_opt_dicom(path, data, spacing_mm=SPACING, patient_id="P", study_id="S", series_number=1)
    return data


def deflated_bomb(path: Path, frames: int = 1200, size: int = 512) -> Path:
    """A small deflated DICOM whose (all-zero) pixel data inflates to frames*size*size*2 bytes."""
    small_dicom(path.with_name("seed.dcm"))
    ds = pydicom.dcmread(path.with_name("seed.dcm"))
    ds.NumberOfFrames, ds.Rows, ds.Columns = frames, size, size
    ds.PerFrameFunctionalGroupsSequence = ds.PerFrameFunctionalGroupsSequence[:1]
    ds.PixelData = bytes(frames * size * size * 2)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path)
    return path


def _peak(fn):
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_deflated_bomb_is_refused_before_it_inflates(tmp_path):
    bomb = deflated_bomb(tmp_path / "bomb.dcm")
    assert bomb.stat().st_size < 2 * MB  # 600 MB of pixel data, as float32 1.2 GB

    def read():
        with pytest.raises(ScanError, match="more than the limit of 64.0 MB"):
            read_scan(bomb, max_bytes=64 * MB)

    assert _peak(read) < 40 * MB


def test_deflated_dicom_within_the_limit_reads(tmp_path):
    data = small_dicom(tmp_path / "plain.dcm")
    ds = pydicom.dcmread(tmp_path / "plain.dcm")
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(tmp_path / "deflated.dcm")
    volume = read_scan(tmp_path / "deflated.dcm")
    assert np.array_equal(volume.data, data) and volume.spacing_mm["depth"] == pytest.approx(0.004)


def test_deflated_stream_longer_than_its_header_promises(tmp_path):
    """A header promising little in front of a stream that inflates to much more."""
    bomb = deflated_bomb(tmp_path / "bomb.dcm", frames=400)
    ds = pydicom.dcmread(bomb)  # (test only: pydicom inflates it whole)
    ds.NumberOfFrames = 1
    ds.save_as(tmp_path / "liar.dcm")
    with pytest.raises(ScanError, match="more than its header promises"):
        read_scan(tmp_path / "liar.dcm", max_bytes=16 * MB)


def test_native_pixel_data_checked_against_the_header(tmp_path):
    small_dicom(tmp_path / "a.dcm")
    ds = pydicom.dcmread(tmp_path / "a.dcm")
    ds.NumberOfFrames = 10_000_000  # promises 20 GB as float32
    ds.save_as(tmp_path / "big.dcm")
    with pytest.raises(ScanError, match="header promises .* more than the limit"):
        read_scan(tmp_path / "big.dcm")
    ds.NumberOfFrames = 4  # promises one frame more than it holds
    ds.save_as(tmp_path / "short.dcm")
    with pytest.raises(ScanError, match="truncated pixel data"):
        read_scan(tmp_path / "short.dcm")


def test_npy_header_checked_before_loading(tmp_path):
    path = tmp_path / "v.npy"
    np.save(path, np.zeros((3, 16, 16), np.float32))
    raw = bytearray(path.read_bytes())
    header_end = raw.index(b"\n") + 1
    header = raw[10:header_end].decode("latin1").replace("(3, 16, 16)", "(300000, 1600, 1600)")
    header = header[:-1].ljust(header_end - 10 - 1) + "\n"
    path.write_bytes(bytes(raw[:10]) + header.encode("latin1") + bytes(raw[header_end:]))

    def read():
        with pytest.raises(ScanError, match="more than the limit"):
            read_scan(path)

    assert _peak(read) < 8 * MB


def test_heyex_vol_header_checked_against_the_limit(tmp_path):
    path = tmp_path / "v.vol"
    write_heyex_vol(path, np.ones((2, 16, 16), np.float32), 0.01, 0.004, 0.1)
    raw = bytearray(path.read_bytes())
    struct.pack_into("<III", raw, 12, 16384, 4096, 16384)
    path.write_bytes(bytes(raw))
    with pytest.raises(ScanError, match="more than the limit"):
        read_scan(path)


def test_file_larger_than_the_limit_and_the_configured_limit(tmp_path, monkeypatch):
    small_dicom(tmp_path / "a.dcm", shape=(4, 64, 64))  # 128 KB as float32
    assert read_scan(tmp_path / "a.dcm").data.shape == (4, 64, 64)
    monkeypatch.setenv(
        MAX_DECODED_ENV, "0.05"
    )  # what rules/common.smk sets from limits/scan_decoded_mb
    with pytest.raises(ScanError, match="limits/scan_decoded_mb"):
        read_scan(tmp_path / "a.dcm")


def test_only_scan_errors_escape(tmp_path):
    """Whatever a damaged file makes a library raise reaches the caller as ScanError."""
    small_dicom(tmp_path / "a.dcm")
    raw = (tmp_path / "a.dcm").read_bytes()
    assert b"0.004\\0.01" in raw  # PixelSpacing, as written
    (tmp_path / "b.dcm").write_bytes(raw.replace(b"0.004\\0.01", b"abcde\\0.01"))
    with pytest.raises(ScanError, match="ValueError"):
        read_scan(tmp_path / "b.dcm")
