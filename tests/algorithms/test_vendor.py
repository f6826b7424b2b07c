"""Vendor readers: Heidelberg .vol round trip through read_scan, broken vendor files fail
clearly."""

from __future__ import annotations


import numpy as np
import pytest

from qmroct.algorithms import load_algorithm
from qmroct.scanio import ScanError, read_scan
from qmroct.scanio.vendor import read_heyex_vol_header, write_heyex_vol

from tests.support import ALGORITHMS_DIR as ALGORITHMS


@pytest.fixture
def vol_file(tmp_path, synth):
    vol, truth = synth(n_bscans=3, depth=320, width=128, noise_sigma=0.02, seed=5)
    linear = (vol / 65535.0).astype(np.float32)  # Heyex .vol holds linear reflectivity in 0..1
    linear[1, :3, :5] = np.nan  # outside the scan area
    path = tmp_path / "scan.vol"
    sp = truth.spacing_mm
    write_heyex_vol(
        path,
        linear,
        scale_x=sp["ascan"],
        scale_y=sp["depth"],
        distance=sp["bscan"],
        laterality="OS",
    )
    return path, linear, truth


def test_vol_roundtrip_through_read_scan(vol_file):
    path, linear, truth = vol_file
    header = read_heyex_vol_header(path.read_bytes()[:2048])
    assert (header["n_bscans"], header["size_y"], header["size_x"]) == linear.shape
    v = read_scan(path)
    assert v.data.shape == linear.shape and v.data.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(v.data), np.isnan(linear))
    np.testing.assert_array_equal(v.data[~np.isnan(v.data)], linear[~np.isnan(linear)])
    assert v.spacing_mm == pytest.approx(truth.spacing_mm)
    assert v.laterality == "OS" and v.intensity == "linear" and "Spectralis" in v.device
    assert v.extra["invalid_voxels"] == 15


def test_noise_on_vol_export(tmp_path, vol_file):
    path, linear, truth = vol_file
    v = read_scan(path)
    vpath, _ = v.save(tmp_path / "staged", "scan")
    out = load_algorithm("noise", [ALGORITHMS]).run(vpath, v.meta("scan"), {}, tmp_path / "w")
    assert out["kqis"]["noise_sigma"]["value"] == pytest.approx(
        truth.noise_sigma / 65535.0, rel=0.03
    )
    assert any("non-finite" in n for n in out["notes"])


def test_truncated_vol(tmp_path, vol_file):
    path, _, _ = vol_file
    cut = tmp_path / "cut.vol"
    cut.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(ScanError, match="truncated"):
        read_scan(cut)


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("junk.bin", "unrecognised format"),
        ("junk.e2e", "e2e"),
        ("junk.fds", "fds"),
        ("junk.img", "img"),
    ],
)
def test_broken_vendor_files_fail_clearly(tmp_path, name, fragment):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).integers(0, 255, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(ScanError) as err:
        read_scan(path)
    assert fragment in str(err.value) and str(path) in str(err.value)
