"""The algorithm contract: manifests, checksums, the runner and its failure modes."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest

from qmroct.algorithms import (
    AlgorithmFailure,
    AlgorithmNotFound,
    KQISpec,
    ManifestError,
    available_algorithms,
    load_algorithm,
    validate_output,
)

from tests.support import ALGORITHMS_DIR as ALGORITHMS

BUILTIN = ["centering", "layers", "motion", "mtci", "noise", "signal"]


def make_algo(root: Path, name: str, body: str, kqis: str | None = None, extra: str = "") -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "algo.py").write_text(textwrap.dedent(body))
    kqis = (
        kqis
        or """
      - name: value_a
        unit: px
        higher_is_better: true
        valid_range: [0, 100]
    """
    )
    (folder / "algorithm.yaml").write_text(
        f"name: {name}\nversion: '0.1'\nruntime: python\nentry: algo.py\n"
        f"{extra}kqis:{textwrap.dedent(kqis)}"
    )
    return folder


@pytest.fixture
def small_scan(tmp_path, stage):
    rng = np.random.default_rng(0)
    vol = rng.normal(100, 5, size=(2, 32, 24)).astype(np.float32)
    return stage(tmp_path / "in", vol, {"bscan": 0.1, "depth": 0.004, "ascan": 0.01})


def test_builtin_algorithms_listed():
    names = available_algorithms([ALGORITHMS])
    for name in BUILTIN:
        assert name in names
    assert not any(n.startswith("_") for n in names)


def test_manifest_fields():
    algo = load_algorithm("noise", search_paths=[ALGORITHMS])
    assert algo.name == "noise" and algo.runtime == "python" and isinstance(algo.version, str)
    assert algo.code_checksum.startswith("sha256:") and len(algo.code_checksum) == 7 + 64
    assert all(isinstance(k, KQISpec) for k in algo.kqis)
    assert "snr_db" in [k.name for k in algo.kqis]
    spec = {k.name: k for k in algo.kqis}["noise_sigma"]
    assert spec.higher_is_better is False and spec.valid_range == (0, None)
    assert algo.thresholds["snr_db"].startswith(">=")
    assert set(algo.resources) == {"threads", "mem_mb", "runtime_s"}
    assert isinstance(algo.resources["threads"], int)


def test_unknown_algorithm_lists_available():
    with pytest.raises(AlgorithmNotFound) as err:
        load_algorithm("nosie", search_paths=[ALGORITHMS])
    msg = str(err.value)
    assert "nosie" in msg and "noise" in msg and "layers" in msg


def test_checksum_covers_files_and_shared_code(tmp_path):
    root = tmp_path / "algorithms"
    shutil.copytree(ALGORITHMS, root, ignore=shutil.ignore_patterns("__pycache__"))
    before = {n: load_algorithm(n, [root]).code_checksum for n in ("noise", "layers")}
    (root / "noise" / "__pycache__").mkdir(exist_ok=True)
    (root / "noise" / "__pycache__" / "x.pyc").write_bytes(b"junk")
    assert load_algorithm("noise", [root]).code_checksum == before["noise"]  # __pycache__ ignored
    (root / "noise" / "table.csv").write_text("a new data file changes the code")  # docs do not
    assert load_algorithm("noise", [root]).code_checksum != before["noise"]
    assert load_algorithm("layers", [root]).code_checksum == before["layers"]
    with open(root / "_shared" / "octseg.py", "a") as fh:
        fh.write("\n# edited\n")
    assert load_algorithm("layers", [root]).code_checksum != before["layers"]


def test_earlier_search_path_wins(tmp_path):
    make_algo(
        tmp_path / "a",
        "noise",
        "def compute(v, m, p, w):\n    return {'kqis': {'value_a': {'value': 1, 'unit': 'px'}}}\n",
    )
    algo = load_algorithm("noise", [tmp_path / "a", ALGORITHMS])
    assert algo.version == "0.1"
    assert available_algorithms([tmp_path / "a", ALGORITHMS]).count("noise") == 1


@pytest.mark.parametrize(
    "manifest, fragment",
    [
        (
            "name: bad\nversion: '1'\nruntime: java\nentry: x\n"
            "kqis: [{name: a, unit: px, higher_is_better: true}]\n",
            "runtime",
        ),
        ("name: bad\nversion: '1'\nruntime: python\nentry: algo.py\nkqis: []\n", "kqis"),
        (
            "name: bad\nversion: '1'\nruntime: python\nentry: algo.py\n"
            "kqis: [{name: a, unit: px, higher_is_better: true}]\n"
            "thresholds: {a: 'at least 3'}\n",
            "thresholds",
        ),
        (
            "name: bad\nversion: '1'\nruntime: python\nentry: algo.py\n"
            "kqis: [{name: a, unit: px, higher_is_better: true}]\n"
            "thresholds: {b: '>= 3'}\n",
            "undeclared",
        ),
        (
            "name: other\nversion: '1'\nruntime: python\nentry: algo.py\n"
            "kqis: [{name: a, unit: px, higher_is_better: true}]\n",
            "folder",
        ),
        (
            "name: bad\nversion: '1'\nruntime: python\nentry: missing.py\n"
            "kqis: [{name: a, unit: px, higher_is_better: true}]\n",
            "missing.py",
        ),
        (
            "name: bad\nversion: '1'\nruntime: python\nentry: algo.py\n"
            "kqis: [{name: a, unit: px, higher_is_better: true}]\nspeed: 3\n",
            "speed",
        ),
    ],
)
def test_invalid_manifest(tmp_path, manifest, fragment):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "algo.py").write_text("")
    (folder / "algorithm.yaml").write_text(manifest)
    with pytest.raises(ManifestError) as err:
        load_algorithm("bad", [tmp_path])
    assert fragment in str(err.value)


GOOD = """
import numpy as np
def compute(volume, meta, params, workdir):
    (workdir / "extra.txt").write_text("x")
    return {"kqis": {"value_a": {"value": np.float32(params.get("v", 3.0)), "unit": "px",
                                 "per_bscan": np.full(volume.shape[0], np.nan)}},
            "files": ["extra.txt"]}
"""


@pytest.mark.parametrize("isolate", [False, True])
def test_python_runtime_inprocess_and_isolated(tmp_path, small_scan, isolate):
    make_algo(tmp_path / "algs", "good", GOOD, extra="params: {v: 7.0}\n")
    algo = load_algorithm("good", [tmp_path / "algs"])
    out = algo.run(small_scan[0], small_scan[1], {}, tmp_path / "w", isolate=isolate)
    assert out["kqis"]["value_a"] == {"value": 7.0, "unit": "px", "per_bscan": [None, None]}
    assert out["files"] == [(tmp_path / "w" / "extra.txt").resolve()]
    out = algo.run(small_scan[0], small_scan[1], {"v": 2.5}, tmp_path / "w", isolate=isolate)
    assert out["kqis"]["value_a"]["value"] == 2.5
    assert not list((tmp_path / "w").glob("_*"))  # staged meta/params and logs cleaned up


BAD_BODIES = {
    "raises": (
        "def compute(v, m, p, w):\n    raise ValueError('boom: no retina')\n",
        "boom: no retina",
    ),
    "wrong_schema": (
        "def compute(v, m, p, w):\n"
        "    return {'kqis': {'value_a': {'value': 'high', 'unit': 'px'}}}\n",
        "schema",
    ),
    "missing_kqi": (
        "def compute(v, m, p, w):\n    return {'kqis': {'other': {'value': 1.0, 'unit': 'px'}}}\n",
        "missing",
    ),
    "wrong_unit": (
        "def compute(v, m, p, w):\n"
        "    return {'kqis': {'value_a': {'value': 1.0, 'unit': 'mm'}}}\n",
        "unit",
    ),
    "out_of_range": (
        "def compute(v, m, p, w):\n"
        "    return {'kqis': {'value_a': {'value': 1000.0, 'unit': 'px'}}}\n",
        "valid range",
    ),
    "undeclared_file": (
        "def compute(v, m, p, w):\n"
        "    return {'kqis': {'value_a': {'value': 1.0, 'unit': 'px'}}, 'files': ['nope.npz']}\n",
        "not written",
    ),
    "escaping_file": (
        "def compute(v, m, p, w):\n"
        "    return {'kqis': {'value_a': {'value': 1.0, 'unit': 'px'}}, 'files': ['../x']}\n",
        "outside",
    ),
    "not_json": (
        "def compute(v, m, p, w):\n"
        "    return {'kqis': {'value_a': {'value': object(), 'unit': 'px'}}}\n",
        "JSON",
    ),
    "exit_code": (
        "import sys\ndef compute(v, m, p, w):\n"
        "    print('fatal: cannot go on', file=sys.stderr)\n    sys.exit(3)\n",
        "status 3",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_failures_are_algorithm_failures(tmp_path, small_scan, case):
    body, fragment = BAD_BODIES[case]
    make_algo(tmp_path / "algs", "bad", body)
    algo = load_algorithm("bad", [tmp_path / "algs"])
    isolate = case == "exit_code"
    with pytest.raises(AlgorithmFailure) as err:
        algo.run(small_scan[0], small_scan[1], {}, tmp_path / "w", isolate=isolate)
    assert fragment in str(err.value)
    if case == "raises":
        assert "ValueError" in err.value.stderr_tail  # the traceback tail
    if case == "exit_code":
        assert "fatal: cannot go on" in err.value.stderr_tail


def test_timeout_is_a_failure(tmp_path, small_scan):
    make_algo(
        tmp_path / "algs", "slow", "import time\ndef compute(v, m, p, w):\n    time.sleep(30)\n"
    )
    algo = load_algorithm("slow", [tmp_path / "algs"])
    with pytest.raises(AlgorithmFailure) as err:
        algo.run(small_scan[0], small_scan[1], {}, tmp_path / "w", timeout=3)
    assert "timed out" in str(err.value)


def test_missing_volume_is_a_failure(tmp_path):
    algo = load_algorithm("noise", [ALGORITHMS])
    with pytest.raises(AlgorithmFailure):
        algo.run(tmp_path / "nope.npy", {}, {}, tmp_path / "w")


def test_schema_rejects_bad_documents():
    assert (
        validate_output({"kqis": {"a": {"value": 1.0, "unit": "px", "per_bscan": [1.0, None]}}})
        == []
    )
    assert validate_output({"kqis": {}})
    assert validate_output({"kqis": {"Bad Name": {"value": 1.0, "unit": "px"}}})
    assert validate_output({"kqis": {"a": {"value": 1.0}}})
    assert validate_output({"kqis": {"a": {"value": 1.0, "unit": "px"}}, "surprise": 1})


@pytest.mark.parametrize("name", BUILTIN)
def test_every_builtin_runs_through_the_contract(tmp_path, synth, stage, name):
    if name not in available_algorithms([ALGORITHMS]):
        pytest.fail(f"built-in algorithm {name} is missing")
    vol, truth = synth(n_bscans=5, depth=300, width=128, seed=4)
    path, meta = stage(tmp_path / "in", vol, truth.spacing_mm)
    algo = load_algorithm(name, [ALGORITHMS])
    out = algo.run(path, meta, {}, tmp_path / "w")
    assert set(out["kqis"]) == {k.name for k in algo.kqis}
    for kqi, res in out["kqis"].items():
        assert res["value"] is not None, (name, kqi)


BAD_VOLUMES = {
    "all_zero": lambda: np.zeros((3, 96, 64), np.float32),
    "constant": lambda: np.full((3, 96, 64), 7.0, np.float32),
    "all_nan": lambda: np.full((2, 96, 64), np.nan, np.float32),
    "pure_noise": lambda: np.random.default_rng(1).normal(1000, 80, (3, 96, 64)).astype(np.float32),
    "inf_and_nan": lambda: np.where(
        np.random.default_rng(2).random((3, 96, 64)) < 0.01,
        np.inf,
        np.random.default_rng(3).normal(1000, 80, (3, 96, 64)),
    ).astype(np.float32),
    "one_bscan_tiny": lambda: (
        np.random.default_rng(4).normal(1000, 80, (1, 8, 8)).astype(np.float32)
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_VOLUMES))
@pytest.mark.parametrize("name", BUILTIN)
def test_bad_volumes_give_defined_result_or_clear_failure(tmp_path, stage, name, case):
    """Never a crash: either schema-valid KQIs (possibly null, with notes) or an
    AlgorithmFailure with a reason."""
    algo = load_algorithm(name, [ALGORITHMS])
    path, meta = stage(
        tmp_path, BAD_VOLUMES[case](), {"bscan": 0.1, "depth": 0.0039, "ascan": 0.0117}
    )
    try:
        out = algo.run(path, meta, {}, tmp_path / "w")
    except AlgorithmFailure as exc:
        assert case == "all_nan", f"{name} failed on {case}: {exc}"
        assert "no finite voxel" in str(exc)
        return
    assert case != "all_nan", f"{name} returned a result for an all-NaN volume"
    assert set(out["kqis"]) == {k.name for k in algo.kqis}
    if case in ("all_zero", "constant"):
        assert out["notes"], f"{name}: a blank volume should come with a note"


@pytest.mark.parametrize("name", ["layers", "motion"])
def test_isolated_run_equals_inprocess(tmp_path, synth, stage, name):
    """With a timeout the python runtime runs in a subprocess: same KQIs and files."""
    vol, truth = synth(n_bscans=4, depth=320, width=128, seed=12, defects=("motion",))
    path, meta = stage(tmp_path / "in", vol, truth.spacing_mm)
    algo = load_algorithm(name, [ALGORITHMS])
    a = algo.run(path, meta, {}, tmp_path / "a")
    b = algo.run(path, meta, {}, tmp_path / "b", timeout=120)
    assert a["kqis"] == b["kqis"]
    assert [p.name for p in a["files"]] == [p.name for p in b["files"]]
