"""qmroct freeze and rerun against the XNAT test server (real HTTP, real snakemake)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from lxml import etree

from qmroct.assessment import SUPERSEDED_FIELD
from tests.provenance.conftest import git, make_checkout
from tests.provenance.crate_validation import seed_cache, validate
from tests.support import copy_workflow
from tests.xnat.conftest import password, pyxnat_interface, xnat_server  # noqa: F401 (fixtures)
from tests.xnat.helpers import workflow_env, xnat_workflow_config
from tests.xnat_server.load import upload_archive

pytestmark = pytest.mark.slow


NS = {"xnat": "http://nrg.wustl.edu/xnat"}


def _assessors(intf, session="SUBJ001_V1"):
    """{label: (XNAT ID, fields)} of the session's assessors, as pyxnat reads them."""
    out = {}
    base = f"/project/DEMO/subject/SUBJ001/experiment/{session}/assessors"
    for assessor in intf.select(base):
        doc = etree.fromstring(assessor.get())
        fields = {f.get("name"): f.text for f in doc.findall("xnat:fields/xnat:field", NS)}
        out[assessor.label()] = (doc.get("ID"), fields)
    return out


def test_freeze_and_rerun_against_xnat(
    xnat_server,  # noqa: F811 (fixtures imported from tests/xnat/conftest.py)
    password,  # noqa: F811
    pyxnat_interface,  # noqa: F811
    tmp_path,
    small_demo,
):
    xnat_server.store.put_project("DEMO", {})
    assert upload_archive(pyxnat_interface, small_demo / "archive", only={"SUBJ001_V1"}) == [
        "SUBJ001_V1"
    ]
    root = copy_workflow(tmp_path / "wf")
    config = xnat_workflow_config(root, xnat_server.url, {"noise": {}})
    (root / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    make_checkout(root)
    env = workflow_env(password, PYTHONPATH=str(root / "src"))

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=900)

    def rerun(workdir):
        return run(
            sys.executable, "-m", "qmroct.cli", "rerun", "frozen/paper1", "--workdir", str(workdir)
        )

    done = run(sys.executable, "-m", "snakemake", "--cores", "2", "--nocolor")
    assert done.returncode == 0, done.stderr[-4000:]
    assert run(sys.executable, "-m", "qmroct.cli", "freeze", "paper1").returncode == 0
    report = validate(root / "frozen" / "paper1", seed_cache(tmp_path / "http-cache"))
    assert report["passed"], json.dumps(report.get("issues"), indent=1)[:4000]
    assert password not in (root / "frozen" / "paper1" / "ro-crate-metadata.json").read_text()
    assert password not in (root / "frozen" / "paper1" / "workflow" / "config.yaml").read_text()
    history_before = [tuple(r) for r in xnat_server.store.q("SELECT * FROM workflows")]
    assert history_before, "the first run recorded its History rows"

    ok = rerun(tmp_path / "rerun")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "REPRODUCED" in ok.stdout
    doc = json.loads((tmp_path / "rerun" / "rerun.json").read_text())
    assert doc["compared"] == ["DEMO/SUBJ001_V1/noise"] and doc["kqis_compared"] > 0
    # the check wrote nothing into XNAT: no History rows, no assessors beyond the first run's
    assert [tuple(r) for r in xnat_server.store.q("SELECT * FROM workflows")] == history_before

    # Bump the algorithm's version, commit, run: a new assessor beside the cited one, which
    # stays under its ID with its KQIs, marked superseded.
    before = _assessors(pyxnat_interface)
    old, new = "SUBJ001_V1_qmroct_noise_v1-0-0", "SUBJ001_V1_qmroct_noise_v1-0-1"
    assert set(before) == {old} and SUPERSEDED_FIELD not in before[old][1]
    manifest = root / "algorithms" / "noise" / "algorithm.yaml"
    text = manifest.read_text()
    assert 'version: "1.0.0"' in text
    manifest.write_text(text.replace('version: "1.0.0"', 'version: "1.0.1"'))
    git(root, "commit", "-qam", "noise 1.0.1")
    bumped = run(sys.executable, "-m", "snakemake", "--cores", "2", "--nocolor")
    assert bumped.returncode == 0, bumped.stderr[-4000:]
    after = _assessors(pyxnat_interface)
    assert set(after) == {old, new}
    assert after[old][0] == before[old][0]  # the cited assessor: same XNAT ID
    assert after[old][1][SUPERSEDED_FIELD] == new
    assert {k: v for k, v in after[old][1].items() if k != SUPERSEDED_FIELD} == before[old][1]
    assert SUPERSEDED_FIELD not in after[new][1] and after[new][1]["qmroct_version"] == "1.0.1"
    files = (
        pyxnat_interface.select(
            f"/project/DEMO/subject/SUBJ001/experiment/SUBJ001_V1/assessor/{old}/resource/QMROCT"
        )
        .files()
        .get()
    )
    assert "noise.json" in files

    # A frozen KQI altered by hand: the rerun (from the recorded commit, the code has moved
    # on) exits non-zero naming the session, algorithm and KQI.
    kqi = root / "frozen" / "paper1" / "results" / "kqi" / "DEMO" / "SUBJ001_V1" / "noise.json"
    doc = json.loads(kqi.read_text())
    doc["scans"][0]["kqis"]["snr_db"]["value"] += 0.5
    kqi.write_text(json.dumps(doc))
    bad = rerun(tmp_path / "rerun2")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    line = next(ln for ln in bad.stdout.splitlines() if ln.startswith("DEMO/SUBJ001_V1"))
    assert "noise" in line.split() and "snr_db" in line.split(), line
    assert "NOT REPRODUCED" in bad.stdout
