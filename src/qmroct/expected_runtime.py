"""How long one compute job (one algorithm over one session) is expected to take, in seconds.

A remote executor sizes its pool from this (the OpenStack executor reads the ``runtime_s``
resource; Snakemake's own ``runtime`` is in whole minutes, 30 to 100 times what a fast
algorithm needs). Measured beats declared: the median ``provenance.elapsed_s`` of this
algorithm's earlier results in the results folder (staging of the session included), else
the manifest's ``runtime_s`` (one call, i.e. one scan; a first run of sessions with several
scans is estimated low until results exist).

Called once per algorithm while Snakemake parses the workflow, so it reads a bounded sample
of result files, never all of a large archive's results.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path

SAMPLE = 64  # result files read per algorithm at most


def measured_seconds(results_root: Path, algorithm: str, sample: int = SAMPLE) -> list[float]:
    """``elapsed_s`` of up to ``sample`` earlier results of ``algorithm`` under
    ``results_root/<project>/<session>/<algorithm>.json`` (unreadable files are skipped)."""
    found: list[float] = []
    try:
        projects = sorted(os.scandir(results_root), key=lambda e: e.name)
    except OSError:
        return found
    for project in projects:
        if not project.is_dir():
            continue
        try:
            sessions = sorted(os.scandir(project.path), key=lambda e: e.name)
        except OSError:
            continue
        for session in sessions:
            path = os.path.join(session.path, f"{algorithm}.json")
            try:
                with open(path, encoding="utf-8") as f:
                    elapsed = json.load(f)["provenance"]["elapsed_s"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if isinstance(elapsed, (int, float)) and elapsed >= 0:
                found.append(float(elapsed))
                if len(found) >= sample:
                    return found
    return found


def expected_runtime_s(
    algorithm: str, manifest_runtime_s: float, results_root: str | Path = "results/kqi"
) -> int:
    """Whole seconds (Snakemake resources are integers), at least 1."""
    measured = measured_seconds(Path(results_root), algorithm)
    seconds = statistics.median(measured) if measured else float(manifest_runtime_s)
    return max(1, math.ceil(seconds))
