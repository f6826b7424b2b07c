"""The real qmroct workflow with --workflow-profile openstack on the Nova test cloud vs a local run.

The archive is the embedded directory archive (small synthetic volumes). Its path is absolute:
the fake VMs share this machine's filesystem, standing in for a network archive (XNAT) that
real workers reach over the network.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.executor.helpers import (
    OPENSTACK_RUN,
    kqi_results,
    local_kqi_results,
    run_summary,
)

from tests.support import REPO, copy_workflow

pytestmark = pytest.mark.cloud


@pytest.fixture(scope="module")
def small_archive(tmp_path_factory) -> Path:
    from qmroct.synth.demo import build_demo_archive

    out = tmp_path_factory.mktemp("qmroct-demo")
    build_demo_archive(out, sessions=3, seed=7, shape=(5, 128, 64))
    return out


def make_workflow(root: Path, archive_src: Path) -> Path:
    copy_workflow(root)
    shutil.copytree(REPO / "profiles", root / "profiles")  # --workflow-profile openstack
    shutil.copytree(archive_src, root / "demo")
    cfg = yaml.safe_load((root / "config.yaml").read_text())
    cfg["archive"]["path"] = str((root / "demo" / "archive").resolve())
    cfg["algorithms"] = {"noise": {}, "layers": {}}
    cfg["studies"] = {"demo_trial": {"criteria": ["noise.snr_db >= 15"]}}
    (root / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return root


def test_qmroct_workflow_on_openstack_matches_local(project, nova_cloud, small_archive, tmp_path):
    env_local = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    local = make_workflow(tmp_path / "local", small_archive)
    ref = local_kqi_results(local, env_local)
    assert len(ref) == 3 * 2

    remote = make_workflow(tmp_path / "remote", small_archive)
    args = [
        *OPENSTACK_RUN,
        *project.executor_args(max_servers=2),
    ]
    env = project.env(PATH=env_local["PATH"])
    r = subprocess.run(args, cwd=remote, env=env, capture_output=True, text=True, timeout=900)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-5000:]
    assert (
        "openstack executor: run" in log
        and "Using workflow specific profile profiles/openstack" in log
    )
    got = kqi_results(remote)
    assert got == ref
    summ = run_summary(remote)
    assert summ["jobs_done"] == 3 and summ["jobs_failed"] == 0  # one submission per session
    assert summ["servers_created"] <= 2 and summ["jobs_per_vm"] > 1, summ  # VMs were reused
    # the per-session remote logs show the algorithms ran on the fake VMs
    logs = list((remote / ".snakemake" / "openstack").glob("*/*.log"))
    assert len(logs) == 3 and all("compute_noise" in p.read_text() for p in logs)
    assert (remote / "results/report/index.html").exists()
    assert project.servers() == []
    # issue 16: the end-of-run lines appeared twice
    assert log.count("openstack summary:") == 1, log[-3000:]
    assert log.count(" server(s) of run ") <= 1, log[-3000:]
