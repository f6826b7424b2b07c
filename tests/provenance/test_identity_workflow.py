"""With real snakemake: a change on the reading path recomputes what it affects, nothing else."""

from __future__ import annotations

import os
import shutil

import pytest

from qmroct.provenance import identity

pytestmark = pytest.mark.slow


def test_reading_path_change_reruns_the_computations_it_affects(workflow, tmp_path, monkeypatch):
    # The workflow imports qmroct from a private copy of its source (PYTHONPATH comes
    # before the editable install), so the test can edit qmroct's code freely.
    src = tmp_path / "src"
    shutil.copytree(
        identity.PACKAGE_ROOT, src / "qmroct", ignore=shutil.ignore_patterns("__pycache__")
    )
    monkeypatch.setenv("PYTHONPATH", f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    config = workflow.config()
    config["algorithms"] = {"noise": {}}
    config["studies"] = {"demo_trial": {"criteria": ["noise.snr_db >= 15"]}}
    workflow.write_config(config)
    workflow.run()
    assert workflow.planned_jobs() == {}

    # Not on the path to a KQI: nothing to do.
    report = src / "qmroct" / "report.py"
    report.write_text(report.read_text() + "\n# wording of the report\n")
    octave_adapter = src / "qmroct" / "algorithms" / "octave" / "qmroct_run.m"
    octave_adapter.write_text(octave_adapter.read_text() + "\n% only Octave algorithms use this\n")
    assert "compute_noise" not in workflow.planned_jobs()

    # A fix in the DICOM reader changes what every Python algorithm sees: all sessions rerun.
    reader = src / "qmroct" / "scanio" / "dicom.py"
    reader.write_text(reader.read_text() + "\n# a fix in the DICOM reader\n")
    plan = workflow.planned_jobs()
    assert plan.get("compute_noise") == 3, plan
    workflow.run()
    assert workflow.planned_jobs() == {}

    # Staging is on the path too.
    staging = src / "qmroct" / "staging.py"
    staging.write_text(staging.read_text() + "\n# staging fix\n")
    assert workflow.planned_jobs().get("compute_noise") == 3
