"""mtci: the published definition checked against hand-computed values on constructed histograms."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from qmroct.algorithms import load_algorithm

from tests.support import ALGORITHMS_DIR as ALGORITHMS


@pytest.fixture(scope="module")
def mod():
    spec = importlib.util.spec_from_file_location(
        "mtci_under_test", ALGORITHMS / "mtci" / "mtci.py"
    )
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


def constructed() -> np.ndarray:
    # range 0..200 in 200 bins: bin width 1, centres k + 0.5
    return np.concatenate(
        [
            [0.0],  # bin 0: 1 value (sets the minimum)
            np.full(960, 9.25),  # bin 9: 960 >= 0.95 * 1000 -> N1s = 9.5
            np.full(1000, 10.25),  # bin 10: the mode -> N1 = 10.5
            np.full(1000, 50.0),
            np.full(37, 120.0),
            [200.0],  # bin 199 (right edge included): the maximum
        ]
    )


def test_hand_computed_value(mod):
    x = constructed()
    rng = np.random.default_rng(0)
    x = rng.permutation(x).reshape(1, -1)
    # N = 2999; cN1s = F(9.5) = 961/2999; cN2 = 0.999 * cN1s / 0.45 = 0.71138...
    # N2 = 2134th smallest value = 50; N3 = ceil(0.999*2999) = 2997th smallest = 120
    value, detail = mod.mtci_bscan(x, 0.45)
    assert detail["N1"] == pytest.approx(10.5)
    assert detail["N1s"] == pytest.approx(9.5)
    assert detail["cN1s"] == pytest.approx(961 / 2999)
    assert detail["cN2"] == pytest.approx(0.999 * 961 / 2999 / 0.45)
    assert detail["N2"] == 50.0 and detail["N3"] == 120.0
    assert value == pytest.approx((120 - 10.5) / (50 - 10.5))  # 2.77215...


def test_device_constant_changes_n2(mod):
    x = constructed()
    # Cirrus cN1B = 0.40: cN2 = 0.999 * 961/2999 / 0.40 = 0.8003 -> rank ceil(2400.1) = 2401
    # -> still 50
    v_cirrus, d = mod.mtci_bscan(x, 0.40)
    assert d["N2"] == 50.0 and v_cirrus == pytest.approx(109.5 / 39.5)
    # cN1B = 0.33: cN2 = 0.97012 -> rank ceil(2909.4) = 2910 -> still 50 (ranks 1962..2961 hold 50)
    v, d = mod.mtci_bscan(x, 0.33)
    assert d["N2"] == 50.0
    # cN1B = 0.3215: cN2 = 0.99571 -> rank ceil(2986.1) = 2987 -> 120 (ranks 2962..2998 hold 120)
    v, d = mod.mtci_bscan(x, 0.3215)
    assert d["N2"] == 120.0 and v == pytest.approx((120 - 10.5) / (120 - 10.5))
    # cN1B = 0.3: cN2 = 1.067 > 1 -> undefined
    v, d = mod.mtci_bscan(x, 0.30)
    assert v is None and "cN2" in d["reason"]


def test_device_lookup(mod):
    assert mod.device_constant("Carl Zeiss Meditec Cirrus HD-OCT 5000")[0] == 0.40
    assert mod.device_constant("Heidelberg Engineering SPECTRALIS")[0] == 0.45
    assert mod.device_constant("Optovue RTVue-XR")[0] == 0.55
    assert mod.device_constant("Topcon 3D OCT-1000")[0] == 0.50
    assert mod.device_constant("Synthetic SD-OCT") == (None, None)


def test_algorithm_uses_device_from_meta(tmp_path, stage):
    algo = load_algorithm("mtci", [ALGORITHMS])
    x = np.tile(constructed()[: 2999 - 7], 1)[: 46 * 65].reshape(1, 46, 65)
    path, meta = stage(
        tmp_path, x, {"bscan": 0.1, "depth": 0.004, "ascan": 0.01}, device="Cirrus HD-OCT"
    )
    out = algo.run(path, meta, {}, tmp_path / "w")
    assert out["info"]["cN1B"] == 0.40 and out["info"]["cN1B_source"] == "cirrus"
    out = algo.run(path, {**meta, "device": "unknown box"}, {}, tmp_path / "w")
    assert out["info"]["cN1B"] == 0.45 and any("no published cN1B" in n for n in out["notes"])
    out = algo.run(path, meta, {"cN1B": 0.5}, tmp_path / "w")
    assert out["info"]["cN1B"] == 0.5


def test_more_noise_lowers_mtci(tmp_path, synth, stage):
    algo = load_algorithm("mtci", [ALGORITHMS])
    for seed in (1, 2, 3):
        values = []
        for defects in ((), ("high_noise",)):
            vol, truth = synth(
                n_bscans=4,
                depth=320,
                width=256,
                noise_sigma=0.02,
                looks=2,
                seed=seed,
                defects=defects,
            )
            path, meta = stage(
                tmp_path / f"{seed}{defects}", vol, truth.spacing_mm, device="Spectralis"
            )
            values.append(algo.run(path, meta, {}, tmp_path / "w")["kqis"]["mtci"]["value"])
        assert values[1] < values[0], (seed, values)


def test_blank_and_constant_bscans_are_undefined(tmp_path, stage):
    algo = load_algorithm("mtci", [ALGORITHMS])
    path, meta = stage(
        tmp_path, np.zeros((2, 32, 32), np.float32), {"bscan": 0.1, "depth": 0.004, "ascan": 0.01}
    )
    out = algo.run(path, meta, {}, tmp_path / "w")
    assert out["kqis"]["mtci"]["value"] is None and out["kqis"]["mtci"]["per_bscan"] == [None, None]
    assert any("constant B-scan" in n for n in out["notes"])
