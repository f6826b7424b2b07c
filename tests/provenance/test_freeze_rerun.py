"""qmroct freeze and qmroct rerun end to end, with real snakemake on the directory archive."""

from __future__ import annotations

import json

import pytest

from tests.provenance.conftest import git, qmroct_cli
from tests.provenance.crate_validation import seed_cache, validate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def validator_cache(tmp_path_factory):
    return seed_cache(tmp_path_factory.mktemp("validator") / "http-cache")


def _kqi_file(crate, session="SUBJ001_V1", algorithm="noise"):
    return crate / "results" / "kqi" / "DEMO" / session / f"{algorithm}.json"


def test_freeze_validate_rerun_and_a_tampered_kqi(checkout, tmp_path, validator_cache):
    root = checkout.root
    checkout.run()
    frozen = qmroct_cli(root, "freeze", "paper1")
    assert frozen.returncode == 0, frozen.stderr
    crate = root / "frozen" / "paper1"

    # The crate: Provenance Run Crate 0.5 at REQUIRED severity, offline.
    report = validate(crate, validator_cache)
    assert report["passed"], json.dumps(report.get("issues"), indent=1)[:4000]
    metadata = json.loads((crate / "ro-crate-metadata.json").read_text())
    graph = {e["@id"]: e for e in metadata["@graph"]}
    assert graph["./"]["mainEntity"] == {"@id": "workflow/Snakefile"}
    kqi_rel = "results/kqi/DEMO/SUBJ001_V1/noise.json"
    assert (
        graph[kqi_rel]["sha256"]
        == __import__("hashlib").sha256((crate / kqi_rel).read_bytes()).hexdigest()
    )
    assert (
        sum(e.get("@type") == "ControlAction" for e in graph.values()) == 3 + 2
    )  # 3 jobs + discover, aggregate
    index = json.loads((crate / "frozen.json").read_text())
    assert index["git"] == {"commit": checkout.commit, "dirty": False}
    assert (crate / "workflow" / "src" / "qmroct" / "scanio" / "dicom.py").is_file()
    assert index["run_manifests"], "the run manifest that computed the results travels with them"
    # the Python locks of the environment, as files with sha256 (qmroct.envlock)
    from qmroct import envlock

    for kind, lock in (("runtime", envlock.RUNTIME_LOCK), ("dev", envlock.DEV_LOCK)):
        rel = f"environment/lock-{kind}.txt"
        digest = __import__("hashlib").sha256(lock.read_bytes()).hexdigest()
        assert (
            graph[rel]["sha256"] == digest and index["environment_lock"][kind]["sha256"] == digest
        )
        assert {"@id": rel} in graph["#workflow-run"]["subjectOf"]
    assert isinstance(index["environment_lock"]["installed_differs_from_runtime_lock"], list)

    # Bump the algorithm's version, commit, run: a new assessor beside the cited one.
    manifest = root / "algorithms" / "noise" / "algorithm.yaml"
    manifest.write_text(manifest.read_text().replace('version: "1.0.0"', 'version: "1.0.1"'))
    git(root, "commit", "-qam", "noise 1.0.1")
    checkout.run()
    for session in sorted(checkout.archive.glob("DEMO/subjects/*/experiments/*")):
        old, new = (f"{session.name}_qmroct_noise_v1-0-0", f"{session.name}_qmroct_noise_v1-0-1")
        records = {
            p.parent.name: json.loads(p.read_text())
            for p in (session / "assessors").glob("*/assessor.json")
        }
        assert set(records) == {old, new}
        assert records[old]["superseded_by"] == new and "superseded_by" not in records[new]

    # Rerun from the recorded commit (the code has moved on since): every KQI reproduced.
    ok = qmroct_cli(root, "rerun", "frozen/paper1", "--workdir", str(tmp_path / "rerun1"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"code: git {checkout.commit}" in ok.stdout
    assert "REPRODUCED" in ok.stdout and "0 differ" in ok.stdout

    # A frozen KQI altered by hand, and one session changed in the archive since the freeze.
    path = _kqi_file(crate)
    doc = json.loads(path.read_text())
    doc["scans"][0]["kqis"]["snr_db"]["value"] += 0.5
    path.write_text(json.dumps(doc))
    scan_file = next(
        checkout.archive.glob(
            "DEMO/subjects/SUBJ002/experiments/SUBJ002_V1/scans/1/resources/*/files/*"
        )
    )
    scan_file.write_bytes(scan_file.read_bytes() + b"\0")
    bad = qmroct_cli(
        root, "rerun", "frozen/paper1", "--from", "crate", "--workdir", str(tmp_path / "rerun2")
    )
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "code: crate" in bad.stdout
    assert "changed in the archive" in bad.stdout and "DEMO/SUBJ002_V1" in bad.stdout
    line = next(ln for ln in bad.stdout.splitlines() if ln.startswith("DEMO/SUBJ001_V1"))
    assert "noise" in line.split() and "snr_db" in line.split(), line
    assert "NOT REPRODUCED" in bad.stdout
    rerun_doc = json.loads((tmp_path / "rerun2" / "rerun.json").read_text())
    assert [d["kqi"] for d in rerun_doc["differences"]] == ["snr_db"]
    assert "DEMO/SUBJ002_V1/noise" not in rerun_doc["compared"]  # never silently recomputed


def test_freeze_refuses_mixed_identities_and_a_dirty_tree(checkout, tmp_path):
    root = checkout.root
    checkout.run()
    # Uncommitted change to an algorithm's params: the results no longer match the workflow.
    config = checkout.config()
    config["algorithms"]["noise"] = {"params": {"k": 5.0}}
    checkout.write_config(config)
    mixed = qmroct_cli(root, "freeze", "paper2")
    assert mixed.returncode == 2 and "noise" in mixed.stderr and "identities" in mixed.stderr, (
        mixed.stderr
    )
    assert not (root / "frozen" / "paper2").exists()
    dirty = qmroct_cli(root, "freeze", "paper2", "--allow-mixed")
    assert dirty.returncode == 2 and "uncommitted changes" in dirty.stderr, dirty.stderr
    forced = qmroct_cli(root, "freeze", "paper2", "--allow-mixed", "--allow-dirty")
    assert forced.returncode == 0, forced.stderr
    crate = root / "frozen" / "paper2"
    index = json.loads((crate / "frozen.json").read_text())
    assert index["git"]["dirty"] and any(n.startswith("mixed: noise") for n in index["notes"])
    assert "k: 5.0" in (crate / "workflow" / "uncommitted.diff").read_text()
    again = qmroct_cli(root, "freeze", "paper2", "--allow-mixed", "--allow-dirty")
    assert again.returncode == 2 and "never overwritten" in again.stderr


def test_rerun_a_random_sample(checkout, tmp_path):
    root = checkout.root
    checkout.run()
    assert qmroct_cli(root, "freeze", "sample").returncode == 0
    out = qmroct_cli(
        root,
        "rerun",
        "frozen/sample",
        "--sessions",
        "1",
        "--seed",
        "3",
        "--workdir",
        str(tmp_path / "w"),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    doc = json.loads((tmp_path / "w" / "rerun.json").read_text())
    assert len(doc["compared"]) == 1 and doc["seed"] == 3
