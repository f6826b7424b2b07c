"""What one job costs qmroct's machinery, apart from its step: a no-op step run N times as
Snakemake runs a per-session job (``bash -c`` around ``python -P -m qmroct.warmworker``),
beside the same ``bash -c`` around ``true`` and around a bare ``python -P -c pass``.

    .venv/bin/python benchmarks/throughput/bench_job_floor.py [--jobs 200]

CPU = user+sys of the commands (``RUSAGE_CHILDREN``) plus, for the warm worker, what its
processes used meanwhile (its own and its reaped children's, from ``/proc/<pid>/stat``: the
job process forked for each job). The worker is started (and its imports paid) before the
timed jobs. The kinds are interleaved, so machine noise hits them alike.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_throughput import warm_worker_processes  # (this folder is on sys.path)
from qmroct.scratch import claim, run_folder
from qmroct.warmworker import RUN_FOLDER_ENV
from qmroct.warmworker.job import CONTEXT_ENV

TICK = os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _worker_cpu(folder: Path) -> float:
    """CPU (s) of the run's warm worker, its own and its reaped children's (the job
    processes), once no fork of it is left."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        processes = warm_worker_processes(folder)
        if len(processes) == 1:
            (fields,) = processes.values()
            return sum(int(f) for f in fields[11:15]) / TICK  # utime stime cutime cstime
        time.sleep(0.05)
    raise RuntimeError(f"no single warm worker for {folder}: {sorted(processes)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=200)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="qmroct-job-floor-"))
    try:
        (base / "steps").mkdir()
        (base / "steps" / "floorsteps.py").write_text("def noop(job):\n    pass\n")
        folder = claim(run_folder(base / "scratch"))
        env = dict(
            os.environ,
            PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
            PYTHONPATH=os.pathsep.join(
                filter(None, [str(base / "steps"), os.environ.get("PYTHONPATH")])
            ),
            **{
                RUN_FOLDER_ENV: str(folder),
                CONTEXT_ENV: json.dumps(
                    {"config": {"scratch_dir": str(folder)}, "workflow_dir": str(base)}
                ),
            },
        )
        python = sys.executable
        commands = {
            "bash -c true": "set -euo pipefail; true",
            "bash -c python -c pass": f"set -euo pipefail; {python} -P -c pass",
            "job through the warm worker (no-op step)": (
                f"set -euo pipefail; {python} -P -m qmroct.warmworker floorsteps:noop floor"
                " --log log.txt"
            ),
        }

        def run(command: str) -> None:
            subprocess.run(["bash", "-c", command], cwd=base, env=env, check=True)

        run(commands["job through the warm worker (no-op step)"])  # starts the worker
        cpu = dict.fromkeys(commands, 0.0)
        wall = dict.fromkeys(commands, 0.0)
        load_before = os.getloadavg()
        worker = _worker_cpu(folder)
        for _ in range(args.jobs):
            for kind, command in commands.items():
                before, t0 = _children_cpu(), time.perf_counter()
                run(command)
                wall[kind] += time.perf_counter() - t0
                cpu[kind] += _children_cpu() - before
        # the worker's side of the warm-worker jobs (it idles otherwise: a poll every 0.5 s)
        cpu["job through the warm worker (no-op step)"] += _worker_cpu(folder) - worker
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(
        f"{args.jobs} jobs of each kind, interleaved; load average before {load_before[0]:.1f}, "
        f"after {load_after[0]:.1f} (1 min) on {os.cpu_count()} CPUs\n"
    )
    print("| one job | CPU ms | wall ms |\n|---|---:|---:|")
    for kind in commands:
        print(
            f"| {kind} | {cpu[kind] / args.jobs * 1000:.1f} | {wall[kind] / args.jobs * 1000:.1f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
