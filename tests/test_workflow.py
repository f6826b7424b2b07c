"""The workflow end to end with real snakemake on a small synthetic archive."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from qmroct.scanio.dicom import write_opt_dicom

pytestmark = pytest.mark.slow


def _session_dirs(archive: Path) -> list[Path]:
    return sorted(archive.glob("DEMO/subjects/*/experiments/*"))


def _scan_bytes_left(root: Path) -> list[Path]:
    """Files that carry scan data: volumes or DICOMs outside the archive."""
    found = []
    for pattern in ("*.npy", "*.dcm", "*.mat"):
        for path in root.rglob(pattern):
            if "demo" not in path.relative_to(root).parts[:1]:
                found.append(path)
    return found


def test_full_run_then_nothing_to_do(workflow):
    workflow.run()
    root = workflow.root
    sessions = _session_dirs(workflow.archive)
    assert len(sessions) == 3
    # One result per session x algorithm, with provenance.
    results = sorted(root.glob("results/kqi/DEMO/*/*.json"))
    assert len(results) == 3 * 2
    doc = json.loads(results[0].read_text())
    prov = doc["provenance"]
    for key in ("host", "start_time", "end_time", "qmroct_version", "snakemake_version"):
        assert prov[key]
    assert doc["algorithm"]["code_checksum"].startswith("sha256:")
    assert all(f["checksum"].startswith("sha256:") for s in doc["scans"] for f in s["files"])

    tidy = pd.read_csv(root / "results/tables/kqi.tsv", sep="\t", dtype={"scan": str})
    assert list(tidy.columns)[:9] == [
        "project",
        "subject",
        "session",
        "scan",
        "algorithm",
        "version",
        "kqi",
        "value",
        "unit",
    ]
    assert set(tidy["algorithm"]) == {"noise", "layers"}
    assert set(tidy["session"]) == {p.name for p in sessions}
    assert pd.read_parquet(root / "results/tables/kqi.parquet").shape == tidy.shape
    study = pd.read_csv(
        root / "results/tables/studies/demo_trial.tsv", sep="\t", dtype={"scan": str}
    )
    assert len(study) == 6 and set(study["overall"]) <= {"pass", "fail", "missing"}
    assert "noise.snr_db >= 15" in study.columns

    html = (root / "results/report/index.html").read_text()
    assert "Worst scans" in html and "data:image/png;base64" in html

    # Assessments written into the archive, one per session and algorithm.
    for session in sessions:
        assessors = sorted(
            p.name for p in (session / "assessors").iterdir() if not p.name.startswith(".")
        )
        # labels carry the algorithm version (a bump writes a new assessor, qmroct.assessment)
        assert assessors == [
            f"{session.name}_qmroct_layers_v1-0-0",
            f"{session.name}_qmroct_noise_v1-0-0",
        ]
        assert (
            (session / "assessors" / assessors[0] / "assessor.xml")
            .read_bytes()
            .startswith(b"<?xml")
        )

    # Each session's scans were staged (read from the archive and decoded) once, for all algorithms.
    for session in sessions:
        logs = list((root / "logs").rglob(f"*{session.name}*")) + list(
            (root / "logs/compute/DEMO" / session.name).glob("*.log")
        )
        text = "".join(p.read_text() for p in logs if p.is_file())
        assert text.count(f"staged session DEMO/{session.name}:") == 1, text

    # No scan data left behind, no scratch.
    assert not (root / "scratch").exists()
    assert _scan_bytes_left(root) == []

    # A second run has nothing to do, and a forced write-back changes nothing.
    assert workflow.planned_jobs() == {}
    workflow.run("--forcerun", "writeback")
    for receipt in root.glob("results/writeback/DEMO/*.json"):
        assert {a["action"] for a in json.loads(receipt.read_text())["assessments"]} == {
            "unchanged"
        }
    for session in sessions:
        assert (
            len([p for p in (session / "assessors").iterdir() if not p.name.startswith(".")]) == 2
        )


def test_selective_recompute(workflow):
    config = workflow.config()
    config["algorithms"] = {"noise": {}}
    config["studies"] = {}
    workflow.write_config(config)
    workflow.run()

    # Declaring a new algorithm computes it for all sessions and nothing else.
    config["algorithms"]["layers"] = {}
    workflow.write_config(config)
    assert workflow.planned_jobs() == {
        "compute_layers": 3,
        "session_summary": 3,
        "writeback": 3,
        "aggregate": 1,
        "report": 1,
        "all": 1,
    }
    workflow.run()
    layers_results = {
        p: p.stat().st_mtime_ns for p in workflow.root.glob("results/kqi/DEMO/*/layers.json")
    }
    noise_results = {
        p: p.stat().st_mtime_ns for p in workflow.root.glob("results/kqi/DEMO/*/noise.json")
    }
    assert len(layers_results) == 3

    # Bumping one algorithm's version recomputes only that algorithm.
    manifest = workflow.root / "algorithms/noise/algorithm.yaml"
    data = yaml.safe_load(manifest.read_text())
    data["version"] = str(data["version"]) + ".1"
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    assert (
        "compute_layers" not in workflow.planned_jobs()
        and workflow.planned_jobs()["compute_noise"] == 3
    )
    workflow.run()
    assert all(p.stat().st_mtime_ns == t for p, t in layers_results.items()), (
        "layers must not rerun on a noise bump"
    )
    assert all(p.stat().st_mtime_ns != t for p, t in noise_results.items())

    # Editing one algorithm's code recomputes only that algorithm.
    code = next(p for p in (workflow.root / "algorithms/layers").glob("*.py"))
    code.write_text(code.read_text() + "\n# a comment is a code change too\n")
    plan = workflow.planned_jobs()
    assert plan["compute_layers"] == 3 and "compute_noise" not in plan
    workflow.run()
    noise_after = {
        p: p.stat().st_mtime_ns for p in workflow.root.glob("results/kqi/DEMO/*/noise.json")
    }
    assert workflow.planned_jobs() == {}

    # A session whose files changed is recomputed (all its algorithms); the others are not.
    session = _session_dirs(workflow.archive)[0]
    dicom = next(session.glob("scans/1/resources/*/files/*.dcm"))
    from qmroct.scanio import read_scan

    volume = read_scan(dicom)
    write_opt_dicom(
        dicom,
        volume.data * 0.5,
        spacing_mm=volume.spacing_mm,
        patient_id="X",
        study_id=session.name,
        series_number=1,
    )
    workflow.run("results/discovery/sessions.tsv")  # rediscover; then the plan is complete
    plan = workflow.planned_jobs()
    assert plan["compute_noise"] == 1 and plan["compute_layers"] == 1, plan
    workflow.run()
    for p, t in noise_after.items():
        changed = p.stat().st_mtime_ns != t
        assert changed == (p.parent.name == session.name)


def test_new_session_is_picked_up(workflow, tmp_path):
    workflow.run()
    from qmroct.synth.demo import build_demo_archive

    extra = tmp_path / "extra"
    build_demo_archive(extra, sessions=1, seed=7, shape=(5, 128, 64), start=10)
    new_session = next(extra.glob("archive/DEMO/subjects/*/experiments/*"))
    target = workflow.archive / new_session.relative_to(extra / "archive")
    shutil.copytree(new_session, target)
    for name in ("subject.json",):
        shutil.copy(new_session.parent.parent / name, target.parent.parent / name)
    workflow.run()
    assert len(list(workflow.root.glob("results/kqi/DEMO/*/noise.json"))) == 4
    assert workflow.planned_jobs() == {}


def test_bad_inputs_are_rows_not_crashes(workflow):
    sessions = _session_dirs(workflow.archive)
    # 1: a truncated DICOM.
    corrupt = next(sessions[0].glob("scans/1/resources/*/files/*.dcm"))
    corrupt.write_bytes(corrupt.read_bytes()[:5000])
    # 2: a DICOM that is not OCT.
    import pydicom

    other = next(sessions[1].glob("scans/1/resources/*/files/*.dcm"))
    ds = pydicom.dcmread(other)
    ds.Modality = "CT"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.save_as(other)
    # 3: an empty session.
    for scan in (sessions[2] / "scans").iterdir():
        shutil.rmtree(scan)

    workflow.run("--keep-going")
    tidy = pd.read_csv(workflow.root / "results/tables/kqi.tsv", sep="\t", dtype={"scan": str})
    failed = tidy[tidy["status"] == "failed"]
    reasons = " ".join(failed["error"].astype(str))
    assert "corrupt" in reasons and "not an OCT scan" in reasons and "no scans" in reasons
    assert set(failed["session"]) == {s.name for s in sessions}
    # The good scans of the damaged sessions still have their KQIs.
    ok = tidy[tidy["status"] == "ok"]
    assert {(s.name, "2") for s in sessions[:2]} <= set(zip(ok["session"], ok["scan"], strict=True))
    html = (workflow.root / "results/report/index.html").read_text()
    assert "not an OCT scan" in html
    assert not (workflow.root / "scratch").exists()


def test_bad_config_fails_before_any_job(workflow):
    config = workflow.config()
    config["algoritms"] = config.pop("algorithms")
    workflow.write_config(config)
    proc = workflow.run("-n", check=False)
    assert proc.returncode != 0
    assert "algoritms" in proc.stdout + proc.stderr

    config["algorithms"] = {"noise": {}, "nosuch": {}}
    config.pop("algoritms")
    workflow.write_config(config)
    proc = workflow.run("-n", check=False)
    assert proc.returncode != 0 and "unknown algorithm 'nosuch'" in proc.stdout + proc.stderr

    config["algorithms"] = {"noise": {}}
    config["studies"] = {"s": {"criteria": ["noise.snr_db >= fifteen"]}}
    workflow.write_config(config)
    proc = workflow.run("-n", check=False)
    assert proc.returncode != 0 and "studies/s/criteria" in proc.stdout + proc.stderr
    assert not (workflow.root / "results").exists()


def test_partial_targets(workflow):
    workflow.run("results/discovery/sessions.tsv")
    session = _session_dirs(workflow.archive)[0].name
    plan = workflow.planned_jobs(f"results/sessions/DEMO/{session}.json")
    assert plan == {"compute_layers": 1, "compute_noise": 1, "session_summary": 1}
    plan = workflow.planned_jobs("results/by_algorithm/noise.tsv")
    assert plan == {"compute_noise": 3, "kqi_by_algorithm": 1}
    workflow.run("results/by_project/DEMO.tsv")
    table = pd.read_csv(workflow.root / "results/by_project/DEMO.tsv", sep="\t")
    assert set(table["algorithm"]) == {"noise", "layers"}


def test_changed_study_rebuilds_tables_only(workflow):
    workflow.run()
    config = workflow.config()
    config["studies"]["strict"] = {"criteria": ["noise.snr_db >= 60"]}
    workflow.write_config(config)
    plan = workflow.planned_jobs()
    assert plan == {"aggregate": 1, "report": 1, "all": 1}, plan
    workflow.run()
    strict = pd.read_csv(workflow.root / "results/tables/studies/strict.tsv", sep="\t")
    assert set(strict["overall"]) == {"fail"}
