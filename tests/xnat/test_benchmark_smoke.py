"""The download benchmark still runs (tiny size; the figures are in benchmarks/xnat/README.md)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support import REPO


def test_download_benchmark_runs():
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks/xnat/bench_download.py"),
            "--mib",
            "8",
            "--files",
            "2",
            "--repeat",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    summary = lines[-1]
    assert (
        summary["summary"]
        and summary["xnat_MB_per_s_median"] > 0
        and summary["raw_MB_per_s_median"] > 0
    )
    assert {line["kind"] for line in lines[:-1]} == {
        "raw",
        "raw_parallel",
        "xnat",
        "xnat_no_md5",
        "raw_parallel_md5",
    }
    assert all(line["bytes"] == 8 << 20 for line in lines[:-1])
