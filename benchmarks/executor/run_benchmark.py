"""Pool vs one-VM-per-job on the Nova test cloud, with the old system's timings scaled 20x down.

Boot 12 s, delete 12 s, 80 jobs of 1.5 s, at most 4 VMs of 2 slots (m1.medium: 2 vCPU, jobs of
1 thread / 500 MB).  Everything in one run: one cloud process, then
  (pool)     the executor's pool, jobs bundled by --group-components,
  (one-vm)   one VM per job (--openstack-max-jobs-per-server 1, no bundling), the old behaviour,
and the lower bound (one boot + total work / slots).  Writes results.json beside this file.

The fake VMs are isolated (the test cloud's --isolate, tests/cloud/README.md): their sshd runs in
a mount namespace of its own where this checkout, its venvs, the home and /tmp are empty, so a
job's sources and outputs travel over SSH as on a real cloud. Their Python is the workers' venv
the executor tests build with the worker image's setup script (tests/executor/helpers.py,
build_worker_env, under /opt/qmroct-bench-worker or $QMROCT_BENCH_WORKER_ROOT; reused while the
sources are unchanged). --shared-workers: the old setup
(VMs see the head's files and run its .venv).

    .venv/bin/python benchmarks/executor/run_benchmark.py [--jobs 80] [--skip-one-vm]
        [--pool-repeats 3]
"""

from __future__ import annotations

import argparse
import functools
import json
import getpass
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))  # tests.executor.helpers: the isolated workers' Python
NOVA_PY = REPO / ".venv-nova" / "bin" / "python"
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
IMAGE = "155d900f-4e14-4e4c-a73d-069cbf4541e6"


def start_cloud(
    tmp: Path,
    boot: float,
    delete: float,
    isolate: bool,
    script: Path = REPO / "tests/cloud/novacloud.py",
    env: dict | None = None,
):
    """The test cloud (``script``: novacloud.py, or a launcher that takes its arguments) in
    the background; (process, API endpoint). Its log and state are under ``tmp``."""
    ready = tmp / "ready.json"
    proc = subprocess.Popen(
        [
            str(NOVA_PY),
            str(script),
            "--port",
            "0",
            "--ssh-port",
            "2222",
            "--state-dir",
            str(tmp / "state"),
            "--ready-file",
            str(ready),
            "--boot-delay",
            str(boot),
            "--delete-delay",
            str(delete),
            "--boot-from-request",
            *(["--isolate"] if isolate else []),
        ],
        stdout=open(tmp / "cloud.log", "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=env,
    )
    t = time.time()
    while not ready.exists():
        if proc.poll() is not None or time.time() - t > 90:
            raise SystemExit("cloud did not start: " + (tmp / "cloud.log").read_text()[-2000:])
        time.sleep(0.2)
    return proc, json.loads(ready.read_text())["endpoint"]


def cloud_access(
    folder: Path, endpoint: str, token: str, worker_bin: Path
) -> tuple[Path, list[str]]:
    """An SSH key and a clouds.yaml (cloud ``bench``) in ``folder``, and the executor's
    arguments that reach the test cloud's servers with them (m1.medium, no network, the
    fake VMs' sshd port, the workers' Python in ``worker_bin``)."""
    key = folder / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    clouds = folder / "clouds.yaml"
    clouds.write_text(
        "clouds:\n  bench:\n    auth_type: admin_token\n    auth:\n"
        f'      endpoint: {endpoint}\n      token: "{token}"\n'
    )
    args = [
        "--openstack-cloud",
        "bench",
        "--openstack-image",
        IMAGE,
        "--openstack-flavor",
        "m1.medium",
        "--openstack-network",
        "none",
        "--openstack-keypair",
        "bench",
        "--openstack-private-key",
        str(key),
        "--openstack-ssh-user",
        getpass.getuser(),
        "--openstack-ssh-port",
        "2222",
        "--openstack-remote-path-prefix",
        str(worker_bin),
    ]
    return clouds, args


def run_case(
    tmp: Path,
    endpoint: str,
    name: str,
    n: int,
    work: float,
    extra: list[str],
    worker_bin: Path = SNAKEMAKE.parent,
) -> dict:
    wd = tmp / name
    shutil.copytree(HERE / "workflow", wd)
    clouds, access = cloud_access(wd, endpoint, f"{name}:{name}", worker_bin)
    env = dict(os.environ, OS_CLIENT_CONFIG_FILE=str(clouds))
    args = [
        str(SNAKEMAKE),
        "-j",
        "500",
        "--latency-wait",
        "1",
        "--config",
        f"njobs={n}",
        f"work={work}",
        "--executor",
        "openstack",
        *access,
        "--openstack-max-servers",
        "4",
        "--openstack-expected-boot-seconds",
        "13",
        "--openstack-status-log-interval",
        "10",
        *extra,
    ]
    load_start = os.getloadavg()[0]
    t0 = time.time()
    with open(wd / "run.log", "wb") as log:
        rc = subprocess.run(
            args, cwd=wd, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=3600
        ).returncode
    wall = time.time() - t0
    if rc != 0:
        raise SystemExit(f"{name} failed, see {wd / 'run.log'}")
    summ = json.loads(next((wd / ".snakemake/openstack").glob("*/summary.json")).read_text())
    outs = len(list((wd / "out").glob("*.txt")))
    assert outs == n, f"{name}: {outs} of {n} outputs"
    return {
        "wall_seconds": round(wall, 1),
        "makespan_seconds": round(summ["last_done"] - t0, 1),
        "submissions": summ["jobs_done"],
        "servers_created": summ["servers_created"],
        "vm_minutes": summ["vm_minutes"],
        "jobs_per_vm": summ["jobs_per_vm"],
        "mean_boot_seconds": summ["mean_boot_seconds"],
        "mean_per_submission": summ["mean_timings"],
        "boot_failures": summ["boot_failures"],
        "load_1min_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "load_1_5_15min_end": [round(x, 2) for x in os.getloadavg()],
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=80)
    ap.add_argument("--work", type=float, default=1.5)
    ap.add_argument("--boot", type=float, default=12.0)
    ap.add_argument("--delete", type=float, default=12.0)
    ap.add_argument("--group-size", type=int, default=20)
    ap.add_argument("--skip-one-vm", action="store_true")
    ap.add_argument(
        "--pool-repeats",
        type=int,
        default=3,
        help="pool runs (about 50 s each); the median makespan is reported, every run is kept",
    )
    ap.add_argument(
        "--compare-scheduler",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the pool once with the other scheduler (ilp vs greedy)",
    )
    ap.add_argument(
        "--scheduler",
        default="greedy",
        help="Snakemake's job scheduler in the head and, through the job command, on the VMs "
        "(profiles/openstack sets greedy; 'ilp' solves an ILP per scheduling round)",
    )
    ap.add_argument(
        "--shared-workers",
        action="store_true",
        help="fake VMs that share this machine's files and run the head's .venv "
        "(the setup before the VMs were isolated)",
    )
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="smos-bench-"))
    worker_bin = SNAKEMAKE.parent
    if not a.shared_workers:
        from tests.executor.helpers import build_worker_env

        (tmp / "worker-src").mkdir()
        # a root of its own: a test session that rebuilds the tests' workers for changed
        # sources must not remove the one this benchmark runs
        root = os.environ.get("QMROCT_BENCH_WORKER_ROOT", "/opt/qmroct-bench-worker")
        worker_bin = build_worker_env(tmp / "worker-src", root=Path(root))
    proc, endpoint = start_cloud(tmp, a.boot, a.delete, isolate=not a.shared_workers)
    res = {
        "params": vars(a),
        "slots": 8,
        "worker_python": str(worker_bin),
        "load_1_5_15min_start": [round(x, 2) for x in os.getloadavg()],
    }
    case = functools.partial(run_case, worker_bin=worker_bin)
    try:
        # the pool first and last (around the long one-VM case) so that load changes show
        pool_runs = [
            case(
                tmp,
                endpoint,
                f"pool{i}",
                a.jobs,
                a.work,
                ["--group-components", f"batch={a.group_size}", "--scheduler", a.scheduler],
            )
            for i in range(1, a.pool_repeats)
        ]
        if not a.skip_one_vm:
            res["one_vm_per_job"] = case(
                tmp, endpoint, "onevm", a.jobs, a.work, ["--openstack-max-jobs-per-server", "1"]
            )
        pool_runs.append(
            case(
                tmp,
                endpoint,
                f"pool{a.pool_repeats}",
                a.jobs,
                a.work,
                ["--group-components", f"batch={a.group_size}", "--scheduler", a.scheduler],
            )
        )
        if a.compare_scheduler:
            # the same pool with Snakemake's default ILP scheduler, for the profile's choice
            # of greedy
            other = "ilp" if a.scheduler == "greedy" else "greedy"
            res[f"pool_{other}"] = case(
                tmp,
                endpoint,
                f"pool_{other}",
                a.jobs,
                a.work,
                ["--group-components", f"batch={a.group_size}", "--scheduler", other],
            )
        pool_runs.sort(key=lambda r: r["makespan_seconds"])
        res["pool"] = dict(pool_runs[len(pool_runs) // 2])  # the median run
        res["pool"]["all_makespans_seconds"] = [r["makespan_seconds"] for r in pool_runs]
        per_group_work = a.group_size * a.work / 2  # a group runs on the 2 cores of its VM
        res["pool"]["snakemake_startup_per_submission"] = round(
            res["pool"]["mean_per_submission"]["run"] - per_group_work, 2
        )
        res["pool"]["dispatch_overhead_per_submission"] = round(
            sum(
                res["pool"]["mean_per_submission"].get(k, 0) for k in ("stage", "fetch", "cleanup")
            ),
            2,
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    lb = a.boot + a.jobs * a.work / 8
    res["lower_bound_seconds"] = lb
    res["pool_vs_lower_bound"] = round(res["pool"]["makespan_seconds"] / lb, 3)
    if "one_vm_per_job" in res:
        res["speedup_vs_one_vm_per_job"] = round(
            res["one_vm_per_job"]["makespan_seconds"] / res["pool"]["makespan_seconds"], 2
        )
    res["machine"] = {
        "nproc": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    # the 2 cores may be shared with other work (tests of other sessions): say how busy they were
    res["load_1_5_15min_end"] = [round(x, 2) for x in os.getloadavg()]
    (HERE / "results.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    print(f"logs in {tmp}")


if __name__ == "__main__":
    main()
