"""The octave runtime: .m algorithms run with GNU Octave, agreeing with Python within 1 %."""

from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest

from qmroct.algorithms import AlgorithmFailure, load_algorithm

from tests.support import ALGORITHMS_DIR as ALGORITHMS

HAVE_OCTAVE = bool(shutil.which("octave-cli") or os.environ.get("OCTAVE_EXECUTABLE"))
if not HAVE_OCTAVE and os.environ.get("QMROCT_REQUIRE_OCTAVE") == "1":
    raise RuntimeError(
        "QMROCT_REQUIRE_OCTAVE=1 but octave-cli is not installed (apt-get install octave)"
    )
pytestmark = pytest.mark.skipif(not HAVE_OCTAVE, reason="GNU Octave (octave-cli) not installed")


@pytest.mark.parametrize(
    "seed, defects, looks, device",
    [
        (1, (), 2, "Spectralis"),
        (2, ("high_noise",), 1, "Cirrus HD-OCT"),
        (3, ("shadow", "motion", "tilt"), 1, "RTVue"),
        (4, ("decentered",), 3, "unknown"),
    ],
)
def test_octave_and_python_mtci_agree(tmp_path, synth, stage, seed, defects, looks, device):
    py = load_algorithm("mtci", [ALGORITHMS])
    octave = load_algorithm("mtci_octave", [ALGORITHMS])
    assert octave.runtime == "octave"
    vol, truth = synth(
        n_bscans=4, depth=320, width=256, noise_sigma=0.02, looks=looks, seed=seed, defects=defects
    )
    path, meta = stage(tmp_path, vol, truth.spacing_mm, device=device)
    a = py.run(path, meta, {}, tmp_path / "py")["kqis"]
    b = octave.run(path, meta, {}, tmp_path / "oct", timeout=120)["kqis"]
    for name in ("mtci", "mtci_min"):
        assert b[name]["value"] == pytest.approx(a[name]["value"], rel=0.01)
    pa, pb = np.array(a["mtci"]["per_bscan"], float), np.array(b["mtci"]["per_bscan"], float)
    np.testing.assert_allclose(pb, pa, rtol=0.01)


@pytest.mark.parametrize("case", ["linear", "log8", "nan_voxels", "high_noise"])
def test_octave_and_python_noise_agree(tmp_path, synth, stage, case):
    from qmroct.synth import to_log8

    vol, truth = synth(
        n_bscans=3,
        depth=320,
        width=256,
        noise_sigma=0.02,
        looks=1,
        seed=7,
        defects=("high_noise",) if case == "high_noise" else ("shadow",),
    )
    intensity = "linear"
    if case == "log8":
        vol, intensity = to_log8(vol).astype(np.float32), "log8"
    if case == "nan_voxels":
        vol = vol.copy()
        vol[1, 10:20, 30:40] = np.nan
    path, meta = stage(tmp_path, vol, truth.spacing_mm, intensity=intensity)
    a = load_algorithm("noise", [ALGORITHMS]).run(path, meta, {}, tmp_path / "py")
    b = load_algorithm("noise_octave", [ALGORITHMS]).run(
        path, meta, {}, tmp_path / "oct", timeout=120
    )
    for name in ("noise_sigma", "noise_floor", "snr_db", "snr_db_min"):
        assert b["kqis"][name]["value"] == pytest.approx(a["kqis"][name]["value"], rel=0.01), name
    for name in ("noise_sigma", "snr_db"):
        np.testing.assert_allclose(
            b["kqis"][name]["per_bscan"], a["kqis"][name]["per_bscan"], rtol=0.01
        )
    if case != "log8":
        assert b["kqis"]["noise_sigma"]["value"] == pytest.approx(truth.noise_sigma, rel=0.03)
    else:
        assert "log8" in b["kqis"]["noise_sigma"]["note"]


def test_octave_single_bscan_and_mat_input(tmp_path, synth, stage):
    vol, truth = synth(n_bscans=1, depth=320, width=256, seed=5)
    path, meta = stage(tmp_path, vol, truth.spacing_mm)
    root = tmp_path / "algs"
    shutil.copytree(ALGORITHMS / "mtci_octave", root / "mtci_octave")
    manifest = root / "mtci_octave" / "algorithm.yaml"
    manifest.write_text(
        manifest.read_text().replace("runtime: octave\n", "runtime: octave\ninput_format: mat\n")
    )
    py = load_algorithm("mtci", [ALGORITHMS]).run(path, meta, {}, tmp_path / "py")["kqis"]
    for search in ([ALGORITHMS], [root]):
        out = load_algorithm("mtci_octave", search).run(
            path, meta, {}, tmp_path / "oct", timeout=120
        )["kqis"]
        assert isinstance(out["mtci"]["per_bscan"], list) and len(out["mtci"]["per_bscan"]) == 1
        assert out["mtci"]["value"] == pytest.approx(py["mtci"]["value"], rel=0.01)
    assert not list((tmp_path / "oct").glob("_volume.mat"))  # the staged copy is removed


def test_octave_error_is_an_algorithm_failure(tmp_path, stage):
    folder = tmp_path / "algs" / "broken_m"
    folder.mkdir(parents=True)
    (folder / "broken_kqi.m").write_text(
        textwrap.dedent("""\
        function result = broken_kqi(vol, meta, params, outdir)
          error('no retina found in %d B-scans', size(vol, 3));
        end
        """)
    )
    (folder / "algorithm.yaml").write_text(
        "name: broken_m\nversion: '1'\nruntime: octave\nentry: broken_kqi.m\n"
        "kqis: [{name: a, unit: px, higher_is_better: true}]\n"
    )
    path, meta = stage(
        tmp_path / "in",
        np.ones((3, 16, 16), np.float32),
        {"bscan": 0.1, "depth": 0.004, "ascan": 0.01},
    )
    with pytest.raises(AlgorithmFailure) as err:
        load_algorithm("broken_m", [tmp_path / "algs"]).run(
            path, meta, {}, tmp_path / "w", timeout=120
        )
    assert "exited with status 1" in str(err.value)
    assert "no retina found in 3 B-scans" in err.value.stderr_tail


def test_octave_reads_npy_exactly(tmp_path):
    """The .npy reader keeps values and axis order (C order, float32 and uint16)."""
    import subprocess

    support = Path(__file__).resolve().parents[2] / "src" / "qmroct" / "algorithms" / "octave"
    arr = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4) * 1.5
    np.save(tmp_path / "a.npy", arr)
    np.save(tmp_path / "b.npy", arr.astype(np.uint16))
    code = (
        f"addpath('{support}'); a = qmroct_read_npy('{tmp_path}/a.npy'); "
        f"b = qmroct_read_npy('{tmp_path}/b.npy');"
        "printf('%d %d %d|%g %g %g|%g\\n', size(a), a(1,1,1), a(2,3,4), a(1,2,3), b(2,3,4));"
    )
    out = subprocess.run(
        ["octave-cli", "--no-gui", "--norc", "--quiet", "--eval", code],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"2 3 4|0 {arr[1, 2, 3]:g} {arr[0, 1, 2]:g}|{int(arr[1, 2, 3])}"
