"""Helpers shared by the test suites that run the real workflow in a private copy."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ALGORITHMS_DIR = REPO / "algorithms"
# The six Python algorithms the workflow ships (the Octave twins are tested on their own)
PYTHON_ALGORITHMS = ("noise", "layers", "mtci", "signal", "motion", "centering")
WORKFLOW_PARTS = ("Snakefile", "rules", "scripts", "algorithms", "envs", "config.yaml")


def copy_workflow(root: Path) -> Path:
    """Copy the workflow (not results, not the venv) into ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for part in WORKFLOW_PARTS:
        source = REPO / part
        if source.is_dir():
            shutil.copytree(source, root / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, root / part)
    return root


def job_stats(text: str) -> dict[str, int]:
    """Rule -> job count from snakemake's 'Job stats' table; empty when nothing is to be done."""
    counts: dict[str, int] = {}
    if "Job stats:" not in text:
        return counts
    for line in text.split("Job stats:", 1)[1].splitlines()[3:]:
        match = re.match(r"^(\w+)\s+(\d+)\s*$", line.strip())
        if not match:
            break
        if match.group(1) != "total":
            counts[match.group(1)] = int(match.group(2))
    return counts


def session_fields(session) -> dict[str, str]:
    """The ``session`` block of a result document."""
    return {
        "project": session.project,
        "subject": session.subject,
        "label": session.label,
        "id": session.id,
    }


def kqi_result(
    session,
    value: float = 20.0,
    *,
    version: str = "1.0.0",
    end_time: str = "2026-11-26T10:00:00+00:00",
) -> dict:
    """A one-scan result document of the noise algorithm (scan 1, snr_db = ``value``), as
    compute writes it; enough for write-back."""
    return {
        "session": session_fields(session),
        "algorithm": {"name": "noise", "version": version, "code_checksum": "sha256:abc"},
        "status": "ok",
        "scans": [
            {
                "scan": "1",
                "status": "ok",
                "error": None,
                "kqis": {"snr_db": {"value": value, "unit": "dB"}},
            }
        ],
        "provenance": {"end_time": end_time},
    }


def wait_for(condition, timeout: float, what: str, interval: float = 0.1):
    """Poll ``condition`` until it returns something true (returned) or ``timeout`` seconds
    pass (an AssertionError naming ``what``): tests wait on conditions, never fixed sleeps."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
