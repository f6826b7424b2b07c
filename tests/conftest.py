"""Shared fixtures: small synthetic archives and a private copy of the workflow.

Workflow tests run the real ``snakemake`` in a temporary copy of the workflow
(Snakefile, rules, scripts, algorithms, config), so they may edit algorithms
and config freely without touching the repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support import copy_workflow, job_stats

SMALL_SHAPE = (5, 128, 64)


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory) -> Path:
    """A 3-session archive of small volumes, built once; copy before modifying."""
    from qmroct.synth.demo import build_demo_archive

    out = tmp_path_factory.mktemp("demo")
    build_demo_archive(out, sessions=3, seed=7, shape=SMALL_SHAPE)
    return out


class Workflow:
    """A private copy of the workflow with its own archive and results."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    def config(self) -> dict:
        return yaml.safe_load(self.config_path.read_text())

    def write_config(self, config: dict) -> None:
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def run(
        self, *args: str, check: bool = True, timeout: int = 600
    ) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--nocolor", *args]
        env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
        proc = subprocess.run(
            cmd, cwd=self.root, capture_output=True, text=True, timeout=timeout, env=env
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"snakemake {' '.join(args)} failed ({proc.returncode}):\n"
                f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
            )
        return proc

    def planned_jobs(self, *args: str) -> dict[str, int]:
        """Rule -> job count from a dry run ('Job stats' table); empty when nothing to do."""
        proc = self.run("-n", *args)
        return job_stats(proc.stdout + proc.stderr)

    @property
    def archive(self) -> Path:
        return self.root / "demo" / "archive"


@pytest.fixture
def workflow(tmp_path, small_demo) -> Workflow:
    root = copy_workflow(tmp_path / "wf")
    shutil.copytree(small_demo, root / "demo")
    wf = Workflow(root)
    config = wf.config()
    # Two algorithms keep the runs short; the other four have their own tests.
    config["algorithms"] = {"noise": {}, "layers": {}}
    config["studies"] = {
        "demo_trial": {"criteria": ["noise.snr_db >= 15", "layers.detection_fraction >= 0.95"]}
    }
    wf.write_config(config)
    return wf
