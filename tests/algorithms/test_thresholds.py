"""The manifests' default thresholds: a clean scan passes all; each defect fails exactly its
own KQI."""

from __future__ import annotations

import operator

import pytest

from qmroct.algorithms import load_algorithm, parse_threshold

from tests.support import ALGORITHMS_DIR as ALGORITHMS, PYTHON_ALGORITHMS as SIX

OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}
EXPECTED_FAIL = {
    (): set(),
    ("tilt",): set(),
    ("high_noise",): {"noise.snr_db"},
    ("shadow",): {"signal.shadow_fraction"},
    ("motion",): {"motion.max_shift_um"},
    ("decentered",): {"centering.fovea_offset_mm"},
}


@pytest.fixture(scope="module")
def algos():
    return {n: load_algorithm(n, [ALGORITHMS]) for n in SIX}


@pytest.mark.parametrize("looks", [1, 2])
@pytest.mark.parametrize("defects", list(EXPECTED_FAIL))
def test_default_thresholds_flag_the_defect(tmp_path, algos, synth, stage, defects, looks):
    vol, truth = synth(
        n_bscans=16,
        depth=320,
        width=256,
        spacing_mm=(0.2, 0.0039, 0.0234),
        noise_sigma=0.02,
        looks=looks,
        seed=17,
        defects=defects,
    )
    path, meta = stage(tmp_path, vol, truth.spacing_mm, device="Spectralis")
    failed = set()
    for name, algo in algos.items():
        out = algo.run(path, meta, {}, tmp_path / name)["kqis"]
        for kqi, rule in algo.thresholds.items():
            op, limit = parse_threshold(rule)
            value = out[kqi]["value"]
            if value is None or not OPS[op](value, limit):
                failed.add(f"{name}.{kqi}")
    assert failed == EXPECTED_FAIL[defects]
