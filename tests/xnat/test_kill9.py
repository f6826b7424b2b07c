"""Issue 9 case 8 with real snakemake: a run killed with kill -9 (no handler
runs) leaves an alias token valid and a History row Running; the next run
invalidates the token and closes the row as ``Failed: interrupted``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from qmroct.archive.xnat_history import INTERRUPTED
from tests.support import copy_workflow, wait_for
from tests.xnat.helpers import workflow_env, xnat_workflow_config
from tests.xnat.test_end_to_end import PROBE_MANIFEST, SHAPE, XnatWorkflow
from tests.xnat_server.load import upload_archive

pytestmark = pytest.mark.slow

HOLD_CODE = """\
import os
import time
from pathlib import Path


def compute(volume, meta, params, workdir):
    hold = Path(os.environ["QMROCT_TEST_HOLD"])
    hold.with_suffix(".started").write_text("started")
    while hold.exists():  # the test kills the run here
        time.sleep(0.05)
    return {"kqis": {"mean_intensity": {"value": float(volume.mean()), "unit": "intensity"}}}
"""


def test_next_run_cleans_up_after_kill_9(xnat_server, password, pyxnat_interface, tmp_path):
    from qmroct.synth.demo import build_demo_archive

    xnat_server.store.put_project("DEMO", {})
    build_demo_archive(tmp_path / "demo", sessions=1, seed=3, shape=SHAPE)
    assert upload_archive(pyxnat_interface, tmp_path / "demo" / "archive") == ["SUBJ001_V1"]
    root = copy_workflow(tmp_path / "wf")
    probe = root / "algorithms" / "envprobe"
    probe.mkdir()
    (probe / "algorithm.yaml").write_text(PROBE_MANIFEST.replace("runtime_s: 0.5", "runtime_s: 60"))
    (probe / "envprobe.py").write_text(HOLD_CODE)
    hold = tmp_path / "hold.flag"
    hold.write_text("hold")
    config = xnat_workflow_config(root, xnat_server.url, {"envprobe": {}})
    env = workflow_env(password, QMROCT_TEST_HOLD=str(hold))
    wf = XnatWorkflow(root, env)
    wf.write_config(config)

    # 1. a run killed with kill -9 while its job computes: head and job die at once
    run = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "--cores", "1", "--nocolor"],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(
            lambda: hold.with_suffix(".started").exists(),
            120,
            "the held job to start",
            interval=0.05,
        )
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait(30)
    left = [r["alias"] for r in xnat_server.store.q("SELECT alias FROM tokens WHERE enabled=1")]
    assert len(left) == 1  # still valid: nobody invalidated it
    ledger = json.loads((root / ".qmroct/xnat/tokens.json").read_text())
    assert [e["alias"] for e in ledger["tokens"]] == left
    eid = xnat_server.store.q("SELECT id FROM experiments WHERE label='SUBJ001_V1'")[0]["id"]
    running = [
        r["launch_time"]
        for r in xnat_server.store.workflows(data_id=eid)
        if r["status"] == "Running"
    ]
    assert len(running) == 1

    # 2. the operator unlocks and reruns: the job completes, the rest is cleaned up
    hold.unlink()
    wf.run("--unlock")
    wf.run("--rerun-incomplete")
    assert xnat_server.store.token(left[0]) is None  # invalidated by the next run
    assert xnat_server.store.q("SELECT alias FROM tokens WHERE enabled=1") == []
    assert json.loads((root / ".qmroct/xnat/tokens.json").read_text())["tokens"] == []
    rows = {
        r["launch_time"]: (r["status"], r["details"] or "")
        for r in xnat_server.store.workflows(data_id=eid)
    }
    assert rows[running[0]] == ("Failed", INTERRUPTED)
    assert sorted(status for status, _ in rows.values()) == ["Complete", "Failed"]
