"""qmroct freeze and rerun against the XNAT test server (real HTTP, real snakemake)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.provenance.conftest import make_checkout
from tests.support import copy_workflow
from tests.xnat.conftest import password, pyxnat_interface, xnat_server  # noqa: F401 (fixtures)
from tests.xnat.helpers import USER
from tests.xnat_server.load import upload_archive

pytestmark = pytest.mark.slow


def test_freeze_and_rerun_against_xnat(
    xnat_server, password, pyxnat_interface, tmp_path, small_demo  # noqa: F811 (fixtures)
):
    xnat_server.store.put_project("DEMO", {})
    assert upload_archive(pyxnat_interface, small_demo / "archive", only={"SUBJ001_V1"}) == [
        "SUBJ001_V1"
    ]
    root = copy_workflow(tmp_path / "wf")
    config = yaml.safe_load((root / "config.yaml").read_text())
    config.update(
        archive={"backend": "xnat", "server": xnat_server.url, "backoff": 0.1},
        projects=["DEMO"],
        algorithms={"noise": {}},
        studies={},
    )
    (root / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    make_checkout(root)
    env = dict(
        os.environ,
        XNAT_USER=USER,
        XNAT_PASS=password,
        PYTHONPATH=str(root / "src"),
        PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    )
    for var in ("XNAT_HOST", "NETRC"):
        env.pop(var, None)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=900)

    done = run(sys.executable, "-m", "snakemake", "--cores", "2", "--nocolor")
    assert done.returncode == 0, done.stderr[-4000:]
    assert run(sys.executable, "-m", "qmroct.cli", "freeze", "paper1").returncode == 0
    assert password not in (root / "frozen" / "paper1" / "ro-crate-metadata.json").read_text()
    assert password not in (root / "frozen" / "paper1" / "workflow" / "config.yaml").read_text()
    history_before = [tuple(r) for r in xnat_server.store.q("SELECT * FROM workflows")]
    assert history_before, "the first run recorded its History rows"

    ok = run(
        sys.executable,
        "-m",
        "qmroct.cli",
        "rerun",
        "frozen/paper1",
        "--workdir",
        str(tmp_path / "rerun"),
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "REPRODUCED" in ok.stdout
    doc = json.loads((tmp_path / "rerun" / "rerun.json").read_text())
    assert doc["compared"] == ["DEMO/SUBJ001_V1/noise"] and doc["kqis_compared"] > 0
    # the check wrote nothing into XNAT: no History rows, no assessors beyond the first run's
    assert [tuple(r) for r in xnat_server.store.q("SELECT * FROM workflows")] == history_before
