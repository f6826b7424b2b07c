"""One compute job in isolation: staging once, failures recorded, strict JSON."""

from __future__ import annotations


import dataclasses
import json
import shutil

import pytest

from qmroct.algorithms import load_algorithm
from qmroct.archive.directory import DirectoryArchive
from qmroct.compute import compute_session, write_json_atomic
from qmroct.staging import release_session, stage_dir

from tests.support import REPO


class CountingArchive(DirectoryArchive):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fetches = 0

    def fetch(self, session, dest):
        self.fetches += 1
        return super().fetch(session, dest)


@pytest.fixture
def archive(tmp_path, small_demo):
    shutil.copytree(small_demo / "archive", tmp_path / "archive")
    return CountingArchive(tmp_path / "archive")


def test_scans_are_staged_once_for_all_algorithms(tmp_path, archive):
    session = archive.discover(["DEMO"])[0]
    scratch = tmp_path / "scratch"
    results = {}
    for name in ("noise", "layers"):
        algo = load_algorithm(name, search_paths=[REPO / "algorithms"])
        results[name] = compute_session(
            session, algo, {}, archive, scratch, tmp_path / f"{name}.files"
        )
    assert archive.fetches == 1
    assert all(r["status"] == "ok" for r in results.values())
    assert {s["scan"] for s in results["noise"]["scans"]} == {"1", "2"}
    assert (stage_dir(scratch, session) / "staged.json").is_file()
    assert not list((stage_dir(scratch, session)).rglob("*.dcm")), (
        "raw downloads are dropped once decoded"
    )
    release_session(scratch, session)
    assert not any(scratch.rglob("*.npy"))


def test_algorithm_failure_is_recorded_per_scan(tmp_path, archive):
    algorithms = tmp_path / "algorithms"
    shutil.copytree(REPO / "algorithms", algorithms)
    code = algorithms / "noise" / "noise.py"
    code.write_text(
        code.read_text()
        + "\n\ndef compute(*args, **kwargs):\n    raise RuntimeError('deliberate test failure')\n"
    )
    algo = load_algorithm("noise", search_paths=[algorithms])
    session = archive.discover(["DEMO"])[0]
    result = compute_session(session, algo, {}, archive, tmp_path / "scratch", tmp_path / "extras")
    assert result["status"] == "failed"
    assert all(
        s["status"] == "failed" and "deliberate test failure" in s["error"] for s in result["scans"]
    )
    assert result["error"] == "2 of 2 scans failed"


def test_result_json_is_strict(tmp_path):
    write_json_atomic(
        tmp_path / "r.json", {"value": float("nan"), "per_bscan": [1.0, float("inf")]}
    )
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"value": None, "per_bscan": [1.0, None]}


def test_problem_session_without_scans_reports_its_problem(tmp_path, archive):
    algo = load_algorithm("noise", search_paths=[REPO / "algorithms"])
    session = archive.discover(["DEMO"])[0]
    reason = "session label 'a b' is not a valid XNAT label"
    problem = dataclasses.replace(session, scans=(), problem=reason)
    result = compute_session(problem, algo, {}, archive, tmp_path / "scratch", tmp_path / "extras")
    assert result["status"] == "failed"
    assert result["error"] == reason
    empty = dataclasses.replace(session, scans=())
    result = compute_session(empty, algo, {}, archive, tmp_path / "scratch", tmp_path / "extras")
    assert result["error"] == "session has no scans"


def test_segmentation_is_computed_once_per_scan_for_the_sessions_jobs(
    tmp_path, archive, monkeypatch
):
    """Issue 13: the four algorithms that need the ILM/BM segmentation share it through a file
    beside the staged volume (each still runs in its own forked child). Proof that the second
    algorithm reads it rather than recomputing: a doctored file changes its KQIs; and with the
    file as computed the KQIs equal those of an unshared run."""
    import numpy as np

    session = archive.discover(["DEMO"])[0]
    layers = load_algorithm("layers", search_paths=[REPO / "algorithms"])
    signal = load_algorithm("signal", search_paths=[REPO / "algorithms"])

    def run(algo, scratch, name):
        return compute_session(session, algo, {}, archive, scratch, tmp_path / name)

    shared = tmp_path / "shared"
    first = run(signal, shared, "s1")
    scan_dir = stage_dir(shared, session) / first["scans"][0]["scan"]
    files = sorted(scan_dir.glob("octseg-*.npz"))
    assert len(files) == 1, "one segmentation file per scan"
    with_shared = run(layers, shared, "l1")

    monkeypatch.setenv("QMROCT_SEGMENT_CACHE", "0")  # every algorithm its own segmentation
    alone = run(layers, tmp_path / "alone", "l2")
    assert not list((tmp_path / "alone").rglob("octseg-*.npz"))
    assert [s["kqis"] for s in with_shared["scans"]] == [s["kqis"] for s in alone["scans"]]
    monkeypatch.delenv("QMROCT_SEGMENT_CACHE")

    with np.load(files[0]) as saved:
        doctored = {name: saved[name] for name in saved.files}
    doctored["bm"] = doctored["ilm"] + 10.0  # a 10-row retina everywhere
    np.savez(files[0], **doctored)
    read_back = run(layers, shared, "l3")
    thickness = read_back["scans"][0]["kqis"]["thickness_mean_um"]["value"]
    assert thickness != with_shared["scans"][0]["kqis"]["thickness_mean_um"]["value"]
    release_session(shared, session)
    assert not list(shared.rglob("octseg-*"))


def test_compute_job_loads_only_its_own_algorithm(tmp_path, small_demo, monkeypatch):
    """Issue 13: the head checks the whole config; a compute job (one per session x
    algorithm) loads and validates only its own algorithm's manifest, and still writes
    the result the workflow expects."""
    from types import SimpleNamespace

    from qmroct import workflow
    from qmroct.algorithms import runner
    from qmroct.archive import manifest_path
    from qmroct.config import validate_schema
    from qmroct.discovery import discover

    shutil.copytree(small_demo / "archive", tmp_path / "archive")
    config = {
        "archive": {"backend": "directory", "path": str(tmp_path / "archive")},
        "projects": ["DEMO"],
        "algorithms": {"noise": {}, "layers": {}, "mtci": {"params": {}}},
        "studies": {"t": {"criteria": ["noise.snr_db >= 15", "layers.detection_fraction >= 0.9"]}},
        "scratch_dir": str(tmp_path / "scratch" / "run-test"),
    }
    validate_schema(config)
    session = discover(config, tmp_path / "disc", tmp_path / "disc" / "sessions.tsv")[0]
    read = []
    real_read = runner.read_manifest
    monkeypatch.setattr(
        runner, "read_manifest", lambda folder: read.append(folder.name) or real_read(folder)
    )
    job = SimpleNamespace(
        input=SimpleNamespace(session=str(manifest_path(tmp_path / "disc", "DEMO", session.label))),
        output=SimpleNamespace(
            kqi=str(tmp_path / "kqi" / "noise.json"), extras=str(tmp_path / "kqi" / "noise.files")
        ),
        params=SimpleNamespace(algorithm_name="noise"),
        log=[str(tmp_path / "noise.log")],
        config=config,
        scriptdir=str(REPO / "scripts"),
    )
    monkeypatch.chdir(tmp_path)
    workflow.compute_step(job)
    assert read == ["noise"]
    result = json.loads((tmp_path / "kqi" / "noise.json").read_text())
    assert result["algorithm"]["name"] == "noise" and result["status"] == "ok"
