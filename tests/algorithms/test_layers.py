"""layers: ILM/BM boundaries and segmentation KQIs against the generator's ground truth."""

from __future__ import annotations


import numpy as np
import pytest

from qmroct.algorithms import load_algorithm

from tests.support import ALGORITHMS_DIR as ALGORITHMS

SHAPE = dict(n_bscans=4, depth=320, width=256)


@pytest.fixture(scope="module")
def layers():
    return load_algorithm("layers", [ALGORITHMS])


def run(layers, tmp_path, stage, vol, truth, intensity="linear"):
    path, meta = stage(tmp_path / "in", vol, truth.spacing_mm, intensity=intensity)
    out = layers.run(path, meta, {}, tmp_path / "w")
    z = np.load(out["files"][0])
    return out, z


@pytest.mark.parametrize("looks", [1, 2])
@pytest.mark.parametrize("sigma", [0.01, 0.02, 0.04])
@pytest.mark.parametrize("seed", [31, 32])
def test_boundaries_within_tolerance(tmp_path, layers, synth, stage, sigma, looks, seed):
    vol, truth = synth(
        **SHAPE, noise_sigma=sigma, looks=looks, seed=seed, defects=("tilt", "motion", "decentered")
    )
    out, z = run(layers, tmp_path, stage, vol, truth)
    assert z["ilm"].shape == truth.ilm.shape
    ilm_mae = np.abs(z["ilm"] - truth.ilm).mean()
    bm_mae = np.abs(z["bm"] - truth.bm).mean()
    assert ilm_mae < 1.5, ilm_mae  # the tolerance (moderate noise)
    assert bm_mae < 1.5, bm_mae
    assert abs((z["ilm"] - truth.ilm).mean()) < 0.3  # no systematic offset
    assert abs((z["bm"] - truth.bm).mean()) < 0.3
    k = out["kqis"]
    assert k["detection_fraction"]["value"] >= 0.97
    true_thick = (truth.bm - truth.ilm) * truth.spacing_mm["depth"] * 1000
    assert k["thickness_mean_um"]["value"] == pytest.approx(true_thick.mean(), rel=0.02)
    assert k["thickness_min_um"]["value"] == pytest.approx(true_thick.min(), abs=12)


def test_high_noise_still_segmented(tmp_path, layers, synth, stage):
    vol, truth = synth(**SHAPE, noise_sigma=0.02, looks=2, seed=3, defects=("high_noise",))
    out, z = run(layers, tmp_path, stage, vol, truth)
    assert np.abs(z["ilm"] - truth.ilm).mean() < 2.0
    assert np.abs(z["bm"] - truth.bm).mean() < 2.0


def test_shadow_lowers_confidence_where_signal_is_lost(tmp_path, layers, synth, stage):
    vol, truth = synth(**SHAPE, noise_sigma=0.02, looks=2, seed=6, defects=("shadow",))
    assert truth.shadow_mask.any()
    out, z = run(layers, tmp_path, stage, vol, truth)
    conf = z["confident"]
    assert conf[truth.shadow_mask].mean() < 0.5
    assert conf[~truth.shadow_mask].mean() > 0.97
    assert out["kqis"]["detection_fraction"]["value"] < 1.0


def test_discontinuity_counted(tmp_path, layers, synth, stage):
    vol, truth = synth(**SHAPE, noise_sigma=0.02, looks=2, seed=9)
    clean, _ = run(layers, tmp_path / "a", stage, vol, truth)
    broken = vol.copy()
    broken[2, :, 128:] = np.roll(
        vol[2, :, 128:], 12, axis=0
    )  # lateral motion: half a B-scan drops 12 px
    out, z = run(layers, tmp_path / "b", stage, broken, truth)
    per = out["kqis"]["discontinuities"]["per_bscan"]
    assert per[2] >= 1 and clean["kqis"]["discontinuities"]["per_bscan"][2] == 0
    assert (
        sum(per) - per[2]
        == sum(clean["kqis"]["discontinuities"]["per_bscan"])
        - clean["kqis"]["discontinuities"]["per_bscan"][2]
    )
    assert (
        z["ilm"][2, 140:].mean() - z["ilm"][2, :116].mean() > 8
    )  # the segmentation followed the step


@pytest.mark.parametrize("sigma", [0.01, 0.02])
def test_log8_export(tmp_path, layers, synth, stage, sigma):
    from qmroct.synth import to_log8

    vol, truth = synth(**SHAPE, noise_sigma=sigma, looks=1, seed=41)
    out, z = run(layers, tmp_path, stage, to_log8(vol).astype(np.float32), truth, intensity="log8")
    assert np.abs(z["ilm"] - truth.ilm).mean() < 1.5
    assert np.abs(z["bm"] - truth.bm).mean() < 2.0
    assert out["kqis"]["detection_fraction"]["value"] > 0.95


def test_single_bscan_and_nans(tmp_path, layers, synth, stage):
    vol, truth = synth(n_bscans=1, depth=320, width=256, seed=8)
    vol = vol.copy()
    vol[0, 5:9, :] = np.nan
    out, z = run(layers, tmp_path, stage, vol, truth)
    assert np.abs(z["ilm"] - truth.ilm).mean() < 1.5
    assert any("non-finite" in n for n in out["notes"])


def test_all_zero_volume_is_defined(tmp_path, layers, stage):
    path, meta = stage(
        tmp_path, np.zeros((2, 64, 64), np.float32), {"bscan": 0.1, "depth": 0.004, "ascan": 0.01}
    )
    out = layers.run(path, meta, {}, tmp_path / "w")
    assert out["kqis"]["detection_fraction"]["value"] == 0.0
    assert out["kqis"]["thickness_mean_um"]["value"] is None


def test_shared_segmentation_is_never_stale(tmp_path, layers, synth, stage):
    """Two different volumes in a row in one process: each gets its own boundaries."""
    for seed in (81, 82):
        vol, truth = synth(
            **SHAPE, noise_sigma=0.02, looks=2, seed=seed, defects=("motion", "decentered")
        )
        out, z = run(layers, tmp_path / str(seed), stage, vol, truth)
        assert np.abs(z["ilm"] - truth.ilm).mean() < 1.5


@pytest.mark.parametrize("seed", [91, 92, 93])
def test_coarse_axial_sampling_small_volume(tmp_path, layers, synth, stage, seed):
    """The workflow's small test volumes (5 x 128 x 64, ~15 um per row): still the right
    boundaries."""
    vol, truth = synth(
        n_bscans=5,
        depth=128,
        width=64,
        spacing_mm=(0.12, 0.0151125, 0.0117),
        noise_sigma=0.02,
        looks=2,
        seed=seed,
        defects=("tilt",),
    )
    out, z = run(layers, tmp_path, stage, vol, truth)
    assert np.abs(z["ilm"] - truth.ilm).mean() < 2.0
    assert np.abs(z["bm"] - truth.bm).mean() < 2.0
