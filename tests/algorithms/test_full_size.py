"""Full-size checks: a 49 x 496 x 512 volume with every defect through all six algorithms,
and log8 exports."""

from __future__ import annotations


import numpy as np
import pytest

from qmroct.algorithms import load_algorithm

from tests.support import ALGORITHMS_DIR as ALGORITHMS, PYTHON_ALGORITHMS as SIX


@pytest.mark.slow
def test_full_size_volume_all_defects(tmp_path, synth, stage):
    from qmroct.synth.generator import fovea_offset_mm

    vol, truth = synth(
        n_bscans=49,
        depth=496,
        width=512,
        noise_sigma=0.02,
        looks=1,
        seed=1,
        defects=("shadow", "motion", "decentered", "tilt", "high_noise"),
    )
    path, meta = stage(tmp_path, vol, truth.spacing_mm, device="Heidelberg Spectralis")
    out = {n: load_algorithm(n, [ALGORITHMS]).run(path, meta, {}, tmp_path / n) for n in SIX}
    k = {n: {q: v["value"] for q, v in o["kqis"].items()} for n, o in out.items()}
    dz_um = truth.spacing_mm["depth"] * 1000
    assert k["noise"]["noise_sigma"] == pytest.approx(truth.noise_sigma, rel=0.03)
    z = np.load(out["layers"]["files"][0])
    assert (
        np.abs(z["ilm"] - truth.ilm).mean() < 1.5 and np.abs(z["bm"] - truth.bm).mean() < 2.0
    )  # 4x noise
    shifts = np.array(out["motion"]["info"]["shift_um"]) / dz_um
    assert np.abs(shifts - np.diff(truth.axial_shift)).mean() < 0.5
    assert k["motion"]["max_shift_um"] == pytest.approx(
        np.abs(np.diff(truth.axial_shift)).max() * dz_um, abs=1.5 * dz_um
    )
    assert abs(k["centering"]["fovea_ascan"] - truth.fovea_ascan) <= 3
    assert k["centering"]["fovea_offset_mm"] == pytest.approx(fovea_offset_mm(truth), abs=0.05)
    lost = np.load(out["signal"]["files"][0])["lost"]
    tp = (lost & truth.shadow_mask).sum()
    assert tp / truth.shadow_mask.sum() >= 0.9 and tp / lost.sum() >= 0.9
    assert k["mtci"]["mtci"] is not None and k["mtci"]["mtci"] > 0


@pytest.mark.parametrize("seed", [101, 102])
def test_log8_export_motion_centering_signal(tmp_path, synth, stage, seed):
    from qmroct.synth import to_log8

    vol, truth = synth(
        n_bscans=12,
        depth=320,
        width=256,
        spacing_mm=(0.24, 0.0039, 0.0234),
        noise_sigma=0.01,
        looks=2,
        seed=seed,
        defects=("motion", "decentered", "shadow"),
    )
    path, meta = stage(
        tmp_path, to_log8(vol).astype(np.float32), truth.spacing_mm, intensity="log8"
    )
    mo = load_algorithm("motion", [ALGORITHMS]).run(path, meta, {}, tmp_path / "m")
    est = np.array(mo["info"]["shift_um"]) / (truth.spacing_mm["depth"] * 1000)
    assert np.abs(est - np.diff(truth.axial_shift)).max() <= 0.5
    ce = load_algorithm("centering", [ALGORITHMS]).run(path, meta, {}, tmp_path / "c")["kqis"]
    assert abs(ce["fovea_ascan"]["value"] - truth.fovea_ascan) <= 3
    si = load_algorithm("signal", [ALGORITHMS]).run(path, meta, {}, tmp_path / "s")
    lost = np.load(si["files"][0])["lost"]
    tp = (lost & truth.shadow_mask).sum()
    assert tp / truth.shadow_mask.sum() >= 0.9 and tp / max(lost.sum(), 1) >= 0.9
