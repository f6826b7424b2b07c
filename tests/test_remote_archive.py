"""A directory archive with a remote executor: refused before any job (and before any
VM boots) when the workers cannot reach it, through real snakemake and the OpenStack
profile; an absolute path (storage every worker mounts) is let through."""

from __future__ import annotations

import shutil

from tests.support import REPO


def _with_profile(workflow) -> None:
    shutil.copytree(REPO / "profiles", workflow.root / "profiles")


def test_relative_directory_archive_is_refused_with_the_reason(workflow, tmp_path):
    _with_profile(workflow)
    for dry in (["-n"], []):
        proc = workflow.run(
            "--workflow-profile", "profiles/openstack", *dry, check=False, timeout=300
        )
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0
        assert "archive.path 'demo/archive' is on this machine only" in out, out[-3000:]
        assert "absolute path that every worker mounts" in out
        assert "Traceback" not in out and "Cloud" not in out  # no cloud was asked anything
    assert not (workflow.root / ".snakemake" / "openstack").exists(), "no pool started"
    assert not (workflow.root / "results").exists()


def test_absolute_directory_archive_passes_the_check(workflow):
    _with_profile(workflow)
    config = workflow.config()
    config["archive"]["path"] = str(workflow.archive)
    workflow.write_config(config)
    proc = workflow.run("--workflow-profile", "profiles/openstack", "-n", timeout=300)
    assert "on this machine only" not in proc.stdout + proc.stderr
