"""signal, motion and centering against the generator's ground truth."""

from __future__ import annotations


import numpy as np
import pytest

from qmroct.algorithms import load_algorithm

from tests.support import ALGORITHMS_DIR as ALGORITHMS


@pytest.fixture(scope="module")
def algos():
    return {n: load_algorithm(n, [ALGORITHMS]) for n in ("signal", "motion", "centering")}


# ------------------------------------------------------------------ signal
@pytest.mark.parametrize("looks", [1, 2])
@pytest.mark.parametrize("seed", [51, 52, 53, 54])
def test_shadow_detection_recall_and_precision(tmp_path, algos, synth, stage, seed, looks):
    vol, truth = synth(
        n_bscans=8,
        depth=320,
        width=256,
        noise_sigma=0.02,
        looks=looks,
        seed=seed,
        defects=("shadow", "tilt", "motion"),
    )
    path, meta = stage(tmp_path, vol, truth.spacing_mm)
    out = algos["signal"].run(path, meta, {}, tmp_path / "w")
    lost = np.load(out["files"][0])["lost"]
    m = truth.shadow_mask
    tp = (lost & m).sum()
    assert tp / m.sum() >= 0.9, "recall"
    assert tp / lost.sum() >= 0.9, "precision"
    assert out["kqis"]["shadow_fraction"]["value"] == pytest.approx(m.mean(), abs=0.01)


def test_no_shadow_no_loss_and_snr_cnr_track_noise(tmp_path, algos, synth, stage):
    res = {}
    for defects in ((), ("high_noise",)):
        vol, truth = synth(
            n_bscans=4, depth=320, width=256, noise_sigma=0.02, looks=2, seed=7, defects=defects
        )
        path, meta = stage(tmp_path / str(len(defects)), vol, truth.spacing_mm)
        res[defects] = algos["signal"].run(path, meta, {}, tmp_path / "w")["kqis"]
    assert res[()]["shadow_fraction"]["value"] <= 0.005
    assert res[("high_noise",)]["snr_seg_db"]["value"] < res[()]["snr_seg_db"]["value"]
    assert res[("high_noise",)]["cnr"]["value"] < res[()]["cnr"]["value"]


def test_informed_snr_matches_direct_definition(tmp_path, algos, synth, stage):
    """SNR/CNR recomputed here with boolean masks from the written boundaries (layers algorithm)."""
    vol, truth = synth(n_bscans=3, depth=320, width=256, noise_sigma=0.02, looks=2, seed=8)
    path, meta = stage(tmp_path, vol, truth.spacing_mm)
    sig = algos["signal"].run(path, meta, {}, tmp_path / "ws")["kqis"]
    lay = load_algorithm("layers", [ALGORITHMS]).run(path, meta, {}, tmp_path / "wl")
    z = np.load(lay["files"][0])
    for b in range(3):
        centre = np.arange(vol.shape[1])[:, None] + 0.5
        inside = (centre >= z["ilm"][b]) & (centre <= z["bm"][b])
        fg, bg = vol[b][inside].astype(float), vol[b][~inside].astype(float)
        snr = 10 * np.log10(fg.mean() ** 2 / bg.var(ddof=1))
        cnr = abs(fg.mean() - bg.mean()) / np.sqrt(fg.var(ddof=1) + bg.var(ddof=1))
        assert sig["snr_seg_db"]["per_bscan"][b] == pytest.approx(snr, abs=1e-6)
        assert sig["cnr"]["per_bscan"][b] == pytest.approx(cnr, rel=1e-6)


def test_blank_bscan_counts_as_lost(tmp_path, algos, synth, stage):
    vol, truth = synth(n_bscans=4, depth=320, width=256, noise_sigma=0.02, looks=2, seed=9)
    vol = vol.copy()
    vol[2] = truth.noise_floor + np.random.default_rng(0).normal(
        0, truth.noise_sigma, vol[2].shape
    )  # blink
    path, meta = stage(tmp_path, vol, truth.spacing_mm)
    out = algos["signal"].run(path, meta, {}, tmp_path / "w")["kqis"]
    per = out["shadow_fraction"]["per_bscan"]
    assert per[2] > 0.9 and max(per[0], per[1], per[3]) < 0.01


# ------------------------------------------------------------------ motion
@pytest.mark.parametrize("looks", [1, 2])
@pytest.mark.parametrize("sigma", [0.01, 0.02, 0.04])
@pytest.mark.parametrize("seed", [61, 62, 63])
def test_axial_shifts_within_half_a_pixel(tmp_path, algos, synth, stage, seed, sigma, looks):
    vol, truth = synth(
        n_bscans=16,
        depth=320,
        width=256,
        noise_sigma=sigma,
        looks=looks,
        seed=seed,
        defects=("motion", "tilt", "decentered"),
    )
    path, meta = stage(tmp_path, vol, truth.spacing_mm)
    out = algos["motion"].run(path, meta, {}, tmp_path / "w")
    dz_um = truth.spacing_mm["depth"] * 1000
    est = np.array(out["info"]["shift_um"]) / dz_um
    true = np.diff(truth.axial_shift)
    assert np.abs(est - true).max() <= 0.5
    assert out["kqis"]["max_shift_um"]["value"] == pytest.approx(
        np.abs(true).max() * dz_um, abs=0.5 * dz_um
    )
    assert out["kqis"]["jumps"]["value"] == np.sum(np.abs(true) * dz_um > 10)
    assert out["kqis"]["max_shift_um"]["per_bscan"][0] is None


def test_no_motion_and_high_noise(tmp_path, algos, synth, stage):
    vol, truth = synth(n_bscans=12, depth=320, width=256, noise_sigma=0.02, looks=2, seed=64)
    path, meta = stage(tmp_path / "a", vol, truth.spacing_mm)
    out = algos["motion"].run(path, meta, {}, tmp_path / "w")["kqis"]
    assert out["max_shift_um"]["value"] < 0.5 * 3.9 and out["jumps"]["value"] == 0
    vol, truth = synth(
        n_bscans=12,
        depth=320,
        width=256,
        noise_sigma=0.02,
        looks=1,
        seed=65,
        defects=("motion", "high_noise"),
    )
    path, meta = stage(tmp_path / "b", vol, truth.spacing_mm)
    out = algos["motion"].run(path, meta, {}, tmp_path / "w")
    err = np.abs(np.array(out["info"]["shift_um"]) / 3.9 - np.diff(truth.axial_shift))
    assert err.mean() < 0.5 and err.max() < 1.5  # documented: looser under 4x noise


def test_single_bscan_motion_is_null(tmp_path, algos, synth, stage):
    vol, truth = synth(n_bscans=1, depth=320, width=256, seed=66)
    path, meta = stage(tmp_path, vol, truth.spacing_mm)
    out = algos["motion"].run(path, meta, {}, tmp_path / "w")
    assert out["kqis"]["max_shift_um"]["value"] is None and any(
        "single B-scan" in n for n in out["notes"]
    )


# --------------------------------------------------------------- centering
@pytest.mark.parametrize("looks", [1, 2])
@pytest.mark.parametrize("sigma", [0.01, 0.02, 0.04])
@pytest.mark.parametrize("seed", [71, 72, 73])
def test_fovea_within_3_ascans(tmp_path, algos, synth, stage, seed, sigma, looks):
    from qmroct.synth.generator import fovea_offset_mm

    vol, truth = synth(
        n_bscans=25,
        depth=320,
        width=256,
        spacing_mm=(0.24, 0.0039, 0.0234),
        noise_sigma=sigma,
        looks=looks,
        seed=seed,
        defects=("decentered", "tilt", "motion", "shadow"),
    )
    path, meta = stage(tmp_path, vol, truth.spacing_mm)
    k = {
        n: v["value"]
        for n, v in algos["centering"].run(path, meta, {}, tmp_path / "w")["kqis"].items()
    }
    assert abs(k["fovea_ascan"] - truth.fovea_ascan) <= 3
    assert abs(k["fovea_bscan"] - truth.fovea_bscan) <= 0.5
    assert k["fovea_offset_mm"] == pytest.approx(fovea_offset_mm(truth), abs=0.05)
    assert k["fovea_offset_mm"] > 0.5  # decentred by 0.6..1 mm: fails the default threshold


def test_centred_fovea_and_no_pit(tmp_path, algos, synth, stage):
    vol, truth = synth(n_bscans=9, depth=320, width=256, noise_sigma=0.02, looks=2, seed=74)
    path, meta = stage(tmp_path / "a", vol, truth.spacing_mm)
    k = {
        n: v["value"]
        for n, v in algos["centering"].run(path, meta, {}, tmp_path / "w")["kqis"].items()
    }
    assert k["fovea_offset_mm"] < 0.05 and k["pit_depth_um"] > 100
    flat = np.repeat(vol[:, :, :40], 7, axis=2)[:, :, :256]  # periphery only: no pit
    path, meta = stage(tmp_path / "b", flat, truth.spacing_mm)
    out = algos["centering"].run(path, meta, {}, tmp_path / "w")
    assert out["kqis"]["fovea_offset_mm"]["value"] is None and any(
        "no foveal pit" in n for n in out["notes"]
    )


def test_single_bscan_centering(tmp_path, algos, synth, stage):
    vol, truth = synth(n_bscans=1, depth=320, width=256, seed=75, defects=("decentered",))
    path, meta = stage(tmp_path, vol, truth.spacing_mm)
    k = {
        n: v["value"]
        for n, v in algos["centering"].run(path, meta, {}, tmp_path / "w")["kqis"].items()
    }
    assert abs(k["fovea_ascan"] - truth.fovea_ascan) <= 3
