"""How qmroct rerun decides that a KQI reproduced (the manifest's ``tolerance``)."""

from __future__ import annotations

import copy

import pytest

from qmroct.algorithms import ManifestError, load_algorithm
from qmroct.provenance.rerun import compare_results, tolerance_for, within


@pytest.mark.parametrize(
    "a, b, tol, same",
    [
        (3, 3, {}, True),
        (3, 4, {}, False),  # integers: exact by default
        (1.0, 1.0 + 1e-12, {}, True),  # floats: 1e-9 relative by default
        (1.0, 1.0 + 1e-6, {}, False),
        (0.0, 1e-12, {}, False),  # relative to zero is exact
        (0.0, 1e-12, {"abs": 1e-9}, True),
        (100.0, 100.5, {"rel": 0.01}, True),
        (100.0, 102.0, {"rel": 0.01}, False),
        (100.0, 100.5, {"abs": 0.1}, False),  # declared abs only: no default rel
        (3, 4, {"abs": 1}, True),  # a declared tolerance applies to integers too
        (None, None, {}, True),
        (None, 0.0, {"abs": 1.0}, False),  # undefined is never "close"
    ],
)
def test_within(a, b, tol, same):
    assert within(a, b, tol) is same


def _result(value, per_bscan=(1.0, 2.0), status="ok"):
    return {
        "algorithm": {"name": "noise"},
        "status": status,
        "scans": [
            {
                "scan": "1",
                "status": status,
                "kqis": {
                    "snr_db": {"value": value, "unit": "dB", "per_bscan": list(per_bscan)},
                    "count": {"value": 7, "unit": "px"},
                },
            }
        ],
    }


def test_compare_names_session_algorithm_scan_and_kqi():
    tolerances = {"noise": {"default": {}, "kqis": {"snr_db": {"abs": 0.01}}}}
    diffs, count = compare_results(_result(20.0), _result(20.005), tolerances, "DEMO/S1")
    assert (diffs, count) == ([], 2)
    diffs, _ = compare_results(_result(20.0), _result(20.5), tolerances, "DEMO/S1")
    assert [(d.session, d.algorithm, d.scan, d.kqi, d.frozen, d.rerun) for d in diffs] == [
        ("DEMO/S1", "noise", "1", "snr_db", 20.0, 20.5)
    ]
    diffs, _ = compare_results(
        _result(20.0), _result(20.0, per_bscan=(1.0, 2.5)), tolerances, "DEMO/S1"
    )
    assert [d.kqi for d in diffs] == ["snr_db[bscan 1]"]
    other = _result(20.0)
    other["scans"][0]["kqis"]["count"]["value"] = 8
    assert [d.kqi for d in compare_results(_result(20.0), other, tolerances, "DEMO/S1")[0]] == [
        "count"
    ]
    missing = copy.deepcopy(_result(20.0))
    missing["scans"] = []
    assert [d.kqi for d in compare_results(_result(20.0), missing, tolerances, "x")[0]] == [
        "(scan)"
    ]
    failed = _result(None, status="failed")
    assert "(status)" in [d.kqi for d in compare_results(_result(20.0), failed, tolerances, "x")[0]]


def test_manifest_tolerance_per_algorithm_and_per_kqi(tmp_path):
    folder = tmp_path / "probe"
    folder.mkdir()
    (folder / "algo.py").write_text("def compute(*a): pass\n")
    manifest = (
        "name: probe\nversion: '1'\nruntime: python\nentry: algo.py\n"
        "tolerance: {rel: 1.0e-6}\n"
        "kqis: [{name: a, unit: px, higher_is_better: true, tolerance: {abs: 0.5}},\n"
        "       {name: b, unit: px, higher_is_better: true}]\n"
    )
    (folder / "algorithm.yaml").write_text(manifest)
    algo = load_algorithm("probe", [tmp_path])
    from qmroct.provenance.freeze import _tolerances

    class Settings:
        algorithms = {"probe": algo}

    tolerances = _tolerances(Settings, ["probe"])
    assert tolerance_for(tolerances, "probe", "a") == {"abs": 0.5}
    assert tolerance_for(tolerances, "probe", "b") == {"rel": 1e-6}
    (folder / "algorithm.yaml").write_text(manifest.replace("{rel: 1.0e-6}", "{rel: -1}"))
    with pytest.raises(ManifestError, match="tolerance"):
        load_algorithm("probe", [tmp_path])
