"""noise: background sigma and SNR against the generator's ground truth."""

from __future__ import annotations


import numpy as np
import pytest

from qmroct.algorithms import AlgorithmFailure, load_algorithm

from tests.support import ALGORITHMS_DIR as ALGORITHMS

SHAPE = dict(n_bscans=4, depth=320, width=256)


@pytest.fixture(scope="module")
def noise():
    return load_algorithm("noise", [ALGORITHMS])


@pytest.mark.parametrize("looks", [1, 3])
@pytest.mark.parametrize("sigma", [0.005, 0.02, 0.08])
@pytest.mark.parametrize("seed", [11, 12, 13])
def test_sigma_within_3_percent(tmp_path, noise, synth, stage, sigma, looks, seed):
    vol, truth = synth(
        **SHAPE, noise_sigma=sigma, looks=looks, seed=seed, defects=("tilt", "motion")
    )
    path, meta = stage(tmp_path, vol, truth.spacing_mm)
    out = noise.run(path, meta, {}, tmp_path / "w")["kqis"]
    assert out["noise_sigma"]["value"] == pytest.approx(truth.noise_sigma, rel=0.03)
    assert out["noise_floor"]["value"] == pytest.approx(truth.noise_floor, rel=0.01)
    per = np.array(out["noise_sigma"]["per_bscan"])
    assert per.shape == (SHAPE["n_bscans"],)
    np.testing.assert_allclose(per, truth.noise_sigma, rtol=0.06)


def test_high_noise_defect_quadruples_sigma(tmp_path, noise, synth, stage):
    vol, truth = synth(**SHAPE, noise_sigma=0.02, seed=5, defects=("high_noise", "shadow"))
    assert truth.noise_sigma == pytest.approx(4 * 0.02 * 4000)
    path, meta = stage(tmp_path, vol, truth.spacing_mm)
    out = noise.run(path, meta, {}, tmp_path / "w")["kqis"]
    assert out["noise_sigma"]["value"] == pytest.approx(truth.noise_sigma, rel=0.03)


def test_snr_drops_6db_per_doubling_and_thresholds_separate(tmp_path, noise, synth, stage):
    snr = {}
    for sigma in (0.01, 0.02, 0.04):
        vol, truth = synth(**SHAPE, noise_sigma=sigma, looks=2, seed=3)
        path, meta = stage(tmp_path / str(sigma), vol, truth.spacing_mm)
        snr[sigma] = noise.run(path, meta, {}, tmp_path / "w")["kqis"]["snr_db"]["value"]
    assert snr[0.01] - snr[0.02] == pytest.approx(6.02, abs=0.5)
    assert snr[0.02] - snr[0.04] == pytest.approx(6.02, abs=0.5)
    op, limit = noise.thresholds["snr_db"].split()
    assert op == ">=" and snr[0.02] >= float(limit)
    vol, truth = synth(**SHAPE, noise_sigma=0.02, looks=2, seed=3, defects=("high_noise",))
    path, meta = stage(tmp_path / "hn", vol, truth.spacing_mm)
    assert noise.run(path, meta, {}, tmp_path / "w")["kqis"]["snr_db"]["value"] < float(limit)


@pytest.mark.parametrize("sigma", [0.01, 0.02, 0.04])
def test_log8_export_gives_comparable_snr(tmp_path, noise, synth, stage, sigma):
    from qmroct.synth import to_log8

    vol, truth = synth(**SHAPE, noise_sigma=sigma, looks=1, seed=21)
    lin_path, meta = stage(tmp_path / "lin", vol, truth.spacing_mm)
    lin = noise.run(lin_path, meta, {}, tmp_path / "w")
    log_path, meta8 = stage(
        tmp_path / "log", to_log8(vol).astype(np.float32), truth.spacing_mm, intensity="log8"
    )
    log = noise.run(log_path, meta8, {}, tmp_path / "w")
    assert log["kqis"]["snr_db"]["value"] == pytest.approx(lin["kqis"]["snr_db"]["value"], abs=1.5)
    assert "log8" in log["kqis"]["noise_sigma"]["note"]
    assert not lin["notes"]


def test_rescaled100_is_flagged(tmp_path, noise, synth, stage):
    vol, truth = synth(**SHAPE, seed=2)
    rescaled = np.round((vol - vol.min()) / (vol.max() - vol.min()) * 100)
    path, meta = stage(tmp_path, rescaled, truth.spacing_mm, intensity="rescaled100")
    out = noise.run(path, meta, {}, tmp_path / "w")
    assert any("0-100" in n for n in out["notes"])
    assert all("0-100" in k["note"] for k in out["kqis"].values())


def test_rescaled100_declared_linear_is_flagged_anyway(tmp_path, noise, synth, stage):
    vol, truth = synth(**SHAPE, seed=2)
    rescaled = np.round((vol - vol.min()) / (vol.max() - vol.min()) * 100)
    path, meta = stage(tmp_path, rescaled, truth.spacing_mm, intensity="linear")
    out = noise.run(path, meta, {}, tmp_path / "w")
    assert all("rescaled to 0-100" in k["note"] for k in out["kqis"].values())
    path, meta = stage(
        tmp_path / "b", np.round(vol), truth.spacing_mm, intensity="linear"
    )  # integer device units
    assert not noise.run(path, meta, {}, tmp_path / "w")["notes"]


def test_nan_voxels_give_a_defined_result(tmp_path, noise, synth, stage):
    vol, truth = synth(**SHAPE, seed=2)
    vol = vol.copy()
    vol[0, :, :10] = np.nan
    path, meta = stage(tmp_path, vol, truth.spacing_mm)
    out = noise.run(path, meta, {}, tmp_path / "w")
    assert out["kqis"]["noise_sigma"]["value"] == pytest.approx(truth.noise_sigma, rel=0.05)
    assert any("non-finite" in n for n in out["notes"])


def test_all_nan_is_a_clear_failure(tmp_path, noise, stage):
    path, meta = stage(
        tmp_path,
        np.full((2, 64, 64), np.nan, np.float32),
        {"bscan": 0.1, "depth": 0.004, "ascan": 0.01},
    )
    with pytest.raises(AlgorithmFailure, match="no finite voxel"):
        noise.run(path, meta, {}, tmp_path / "w")


def test_all_zero_volume(tmp_path, noise, stage):
    path, meta = stage(
        tmp_path, np.zeros((3, 64, 64), np.float32), {"bscan": 0.1, "depth": 0.004, "ascan": 0.01}
    )
    out = noise.run(path, meta, {}, tmp_path / "w")
    assert out["kqis"]["noise_sigma"]["value"] == 0.0
    assert out["kqis"]["snr_db"]["value"] is None
    assert any("SNR undefined" in n for n in out["notes"])


def test_single_bscan(tmp_path, noise, synth, stage):
    vol, truth = synth(n_bscans=1, depth=320, width=256, seed=8)
    path, meta = stage(tmp_path, vol, truth.spacing_mm)
    out = noise.run(path, meta, {}, tmp_path / "w")["kqis"]
    assert out["noise_sigma"]["value"] == pytest.approx(truth.noise_sigma, rel=0.05)
    assert len(out["snr_db"]["per_bscan"]) == 1


def test_corrupt_input_file_is_a_failure(tmp_path, noise):
    bad = tmp_path / "volume.npy"
    bad.write_bytes(b"\x93NUMPY\x01\x00garbage")
    with pytest.raises(AlgorithmFailure, match="cannot read input volume"):
        noise.run(bad, {}, {}, tmp_path / "w")
