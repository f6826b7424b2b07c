"""Throughput: a session's KQIs through the workflow vs the same algorithms in one process.

    .venv/bin/python benchmarks/throughput/bench_throughput.py [--sessions 50] [--cores 2]

One run, side by side, on the same volumes (a demo archive, one 49 x 496 x 512 scan per
session, `qmroct demo-archive --scans 1`):

(a) **together**: the six built-in algorithms in one process (``isolate=False``, the ILM/BM
    segmentation shared, its cache cleared per volume), on volumes staged beforehand exactly
    as the workflow stages them (``qmroct.staging``); CPU = ``time.process_time``;
(b) **workflow**: the real workflow (Snakefile, rules, scripts, algorithms copied into a
    fresh folder) with ``snakemake --cores N`` from nothing to the report; CPU = user+sys of
    the Snakemake head and every process under it (``os.wait4``);
(c) **Snakemake alone**: ``benchmarks/workflow``'s bare workflow (the same jobs, rules,
    groups and wildcards, shell commands that only create their outputs) run the same way on
    (b)'s discovery: what Snakemake itself costs to run a session's jobs, the floor under (b)
    for this shape of workflow (eight jobs per session).

Where (b)'s CPU goes: every Python process of the run imports ``profile_hook/sitecustomize.py``
(on PYTHONPATH for this run only) and records its own CPU and that of its waited-for children
at exit, labelled with its rule; the head's own share is its self CPU.

The machine is shared: the load average before and after is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HOOK = Path(__file__).resolve().parent / "profile_hook"
SIX = ["noise", "layers", "mtci", "signal", "motion", "centering"]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO / "benchmarks" / "workflow"))
from bench_dag import BARE_SNAKEFILE  # noqa: E402  (the DAG benchmark's bare workflow)

# (c) runs with the head's rate-limit fix too (qmroct.scheduler_wakes), so that it shows
# Snakemake's best, not its default; imported in the hook so that parsing stays bare.
BARE_ONSTART = """

onstart:
    from qmroct.scheduler_wakes import lift_default_rate_limit

    lift_default_rate_limit(workflow)
"""


def build_archive(base: Path, sessions: int, scans: int) -> Path:
    subprocess.run(
        [
            str(BIN / "qmroct"),
            "demo-archive",
            "--out",
            str(base / "demo"),
            "--sessions",
            str(sessions),
            "--scans",
            str(scans),
            "--seed",
            "0",
        ],
        check=True,
        capture_output=True,
    )
    return base / "demo" / "archive"


def copy_workflow(base: Path, archive: Path, repo: Path) -> Path:
    work = base / "workflow"
    work.mkdir()
    for part in ("Snakefile", "rules", "scripts", "algorithms", "envs"):
        src = repo / part
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / part)
    algorithms = "".join(f"  {name}: {{}}\n" for name in SIX)
    (work / "config.yaml").write_text(
        f"archive: {{backend: directory, path: {archive}}}\nprojects: [DEMO]\n"
        f"algorithms:\n{algorithms}"
        "studies:\n  trial:\n    criteria: ['noise.snr_db >= 15', "
        "'layers.detection_fraction >= 0.95']\n"
        "scratch_dir: scratch\ncache_dir: .qmroct\n"
    )
    return work


def together(base: Path, archive: Path) -> dict:
    """(a): stage every session as the workflow does, then time the six in one process."""
    import numpy as np

    from qmroct.algorithms import load_algorithm
    from qmroct.discovery import archive_for, discover
    from qmroct.staging import stage_session

    config = {"archive": {"backend": "directory", "path": str(archive)}, "projects": ["DEMO"]}
    sessions = discover(config, base / "disc", base / "disc" / "sessions.tsv")
    scratch = base / "scratch-a"  # made by stage_session (a claimed run folder)
    volumes = []
    with archive_for(config) as arch:
        for session in sessions:
            staged = stage_session(scratch, session, arch)
            volumes += [(s.volume_path, s.meta) for s in staged.values() if not s.error]
    algos = {name: load_algorithm(name, [REPO / "algorithms"]) for name in SIX}

    def seg_caches():
        return [m for k, m in sys.modules.items() if k.startswith("_qmroct_shared_octseg_")]

    for name, algo in algos.items():  # warm-up: imports, page cache (not counted)
        algo.run(volumes[0][0], volumes[0][1], {}, scratch / "w" / name, isolate=False)
    cpu, wall = [], []
    for path, meta in volumes:
        for mod in seg_caches():
            mod._cache.clear()
        c0, t0 = time.process_time(), time.perf_counter()
        for name, algo in algos.items():
            algo.run(path, meta, {}, scratch / "w" / name, isolate=False)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - t0)
    shutil.rmtree(scratch, ignore_errors=True)
    del np
    per_scan = len(volumes) / len({p.parent.parent for p, _ in volumes})
    return {
        "volumes": len(volumes),
        "cpu_per_session": statistics.mean(cpu) * per_scan,
        "wall_per_session": statistics.mean(wall) * per_scan,
    }


def workflow(
    work: Path, cores: int, sessions: int, repo: Path, extra: tuple[str, ...] = ()
) -> dict:
    """(b): the real workflow from nothing to the report; CPU of the whole process tree."""
    cpu_log = work / "cpu.jsonl"
    # another checkout's qmroct (--repo, a before/after comparison) ahead of the installed one
    pythonpath = [str(HOOK)] + ([str(repo / "src")] if repo != REPO else [])
    env = dict(
        os.environ,
        PATH=f"{BIN}:{os.environ.get('PATH', '')}",
        PYTHONPATH=os.pathsep.join(filter(None, [*pythonpath, os.environ.get("PYTHONPATH")])),
        QMROCT_BENCH_CPU_LOG=str(cpu_log),
    )
    wall, usage = run_snakemake(
        [sys.executable, "-m", "snakemake", "--cores", str(cores), "--nocolor", *extra],
        work,
        env,
        "workflow",
    )
    kqi_files = list((work / "results" / "kqi").rglob("*.json"))
    assert len(kqi_files) == sessions * len(SIX), f"{len(kqi_files)} KQI files"
    _wait_for_warm_workers(work)
    records = [json.loads(line) for line in cpu_log.read_text().splitlines()]
    by_kind = profile_by_kind(records)
    # The warm worker (qmroct.warmworker) is not under the head (its own session): its CPU,
    # its own and its children's (the jobs' steps), is added to the head's tree
    outside = sum(
        r["self_cpu_s"] + r["children_cpu_s"] for r in records if r["kind"] == "warm worker"
    )
    total = usage.ru_utime + usage.ru_stime + outside
    return {
        "cpu_total": total,
        "wall_total": wall,
        "cpu_per_session": total / sessions,
        "wall_per_session": wall / sessions,
        "profile": {k: (len(v), sum(v)) for k, v in sorted(by_kind.items())},
    }


def bare_floor(base: Path, work: Path, cores: int, sessions: int) -> dict:
    """(c): the bare workflow with (b)'s discovery, every job run; CPU of its process tree."""
    bare = base / "bare"
    bare.mkdir()
    (bare / "Snakefile").write_text(
        BARE_SNAKEFILE.replace("__ALGORITHMS__", repr(sorted(SIX))) + BARE_ONSTART
    )
    shutil.copytree(work / "results" / "discovery", bare / "results" / "discovery")
    env = dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    wall, usage = run_snakemake(
        [sys.executable, "-m", "snakemake", "--cores", str(cores), "--nocolor"],
        bare,
        env,
        "the bare workflow",
    )
    done = list((bare / "results" / "kqi").rglob("*.json"))
    assert len(done) == sessions * len(SIX), f"bare: {len(done)} KQI files"
    cpu = usage.ru_utime + usage.ru_stime
    return {"cpu_per_session": cpu / sessions, "wall_per_session": wall / sessions}


def profile_by_kind(records: list[dict], snakemake: str = "snakemake head") -> dict:
    """Job kind -> [CPU of each process] from the hook's records, each CPU counted once: a
    Snakemake process by its own CPU (its children are the jobs, which report themselves);
    the warm worker by its own (imports once, forks: its children's CPU is the jobs' steps,
    which each job reports as worker_cpu_s and is attributed to the job's rule); a job by its
    own, its waited-for children's (the forked algorithm children, git) and its step's in
    the warm worker. ``snakemake`` labels the Snakemake processes."""
    by_kind: dict[str, list[float]] = defaultdict(list)
    for rec in records:
        if rec["kind"] == "snakemake head":
            by_kind[f"{snakemake} (own)"].append(rec["self_cpu_s"])
        elif rec["kind"] == "warm worker":
            by_kind["warm worker (own: imports once, forks)"].append(rec["self_cpu_s"])
        else:
            by_kind[rec["kind"]].append(
                rec["self_cpu_s"] + rec["children_cpu_s"] + rec.get("worker_cpu_s", 0.0)
            )
    return by_kind


def run_snakemake(
    cmd: list[str], work: Path, env: dict, what: str
) -> tuple[float, resource.struct_rusage]:
    """Run a workflow's command in ``work`` (output in ``snakemake.out`` there): its wall
    seconds and the resource usage of its process tree; RuntimeError, with the end of the
    output, when it failed."""
    t0 = time.perf_counter()
    with open(work / "snakemake.out", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(
            f"{what} failed, see {work / 'snakemake.out'}:\n"
            + (work / "snakemake.out").read_text(errors="replace")[-4000:]
        )
    return wall, usage


def warm_worker_processes(under: Path) -> dict[int, list[str]]:
    """pid -> ``/proc/<pid>/stat`` fields after the command name, of the warm workers whose
    folder is under ``under``, and of their forks (job processes show the same command line)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            if b"qmroct.warmworker.server" in cmdline and str(under).encode() in cmdline:
                found[int(entry.name)] = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
    return found


def _wait_for_warm_workers(work: Path, timeout: float = 60.0) -> None:
    """Until the run's warm workers have exited (and written their CPU record): they end
    within a second of the run folder's release."""
    deadline = time.monotonic() + timeout
    while warm_worker_processes(work):
        if time.monotonic() > deadline:
            raise RuntimeError(f"a warm worker of {work} did not exit within {timeout:.0f} s")
        time.sleep(0.1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=50)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--scans", type=int, default=1, help="scans per session (make demo: 6 x 2)")
    ap.add_argument(
        "--repo",
        type=Path,
        default=REPO,
        help="checkout whose workflow and qmroct to run in (b), e.g. an export of the "
        "previous commit (git archive) for a before/after figure",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (printed)")
    ap.add_argument(
        "--snakemake",
        nargs=argparse.REMAINDER,
        default=[],
        help="more arguments for (b)'s snakemake command (last), e.g. --scheduler greedy",
    )
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="qmroct-throughput-"))
    try:
        archive = build_archive(base, args.sessions, args.scans)
        load_before = os.getloadavg()
        work = copy_workflow(base, archive, args.repo.resolve())
        wf = workflow(work, args.cores, args.sessions, args.repo.resolve(), tuple(args.snakemake))
        bare = bare_floor(base, work, args.cores, args.sessions)
        tog = together(base, archive)
        load_after = os.getloadavg()
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"kept {base}")
    n = args.sessions
    ratio = wf["cpu_per_session"] / tog["cpu_per_session"]
    print(
        f"{n} sessions, {args.scans} 49x496x512 scan(s) each; snakemake --cores {args.cores}; "
        f"load average before {load_before[0]:.1f}/{load_before[1]:.1f}, "
        f"after {load_after[0]:.1f}/{load_after[1]:.1f} (1/5 min) on {os.cpu_count()} CPUs\n"
    )
    print("| what | CPU per session (s) | wall per session (s) |\n|---|---:|---:|")
    print(
        f"| (a) six algorithms together, one process | {tog['cpu_per_session']:.2f} "
        f"| {tog['wall_per_session']:.2f} |"
    )
    print(
        f"| (b) workflow, snakemake --cores {args.cores} (total / sessions) "
        f"| {wf['cpu_per_session']:.2f} | {wf['wall_per_session']:.2f} |"
    )
    print(
        f"| (c) Snakemake alone: the same jobs doing nothing | {bare['cpu_per_session']:.2f} "
        f"| {bare['wall_per_session']:.2f} |"
    )
    print(f"| **ratio (b) / (a)** | **{ratio:.2f}** (target <= 1.5) | |")
    print(
        f"| (c) / (a): Snakemake's own floor for this workflow's jobs "
        f"| {bare['cpu_per_session'] / tog['cpu_per_session']:.2f} | |"
    )
    print(
        f"| (b) - (c) - (a): qmroct's own cost beyond Snakemake and the algorithms "
        f"| {wf['cpu_per_session'] - bare['cpu_per_session'] - tog['cpu_per_session']:.2f} | |\n"
    )
    print(
        f"Where (b)'s {wf['cpu_total']:.1f} s of CPU went (processes, CPU incl. their children):\n"
    )
    # measured apart: a Python process with numpy/scipy loaded uses 0.05-0.1 s after its last
    # exit hook (module teardown), unless it ends through qmroct.job_exit
    print_profile(
        wf["profile"],
        wf["cpu_total"],
        n,
        "not attributed: interpreters' teardown after the exit hook, bash wrappers",
    )
    return 0


def print_profile(profile: dict, total: float, sessions: int, rest_label: str) -> None:
    """The per-kind table: ``profile`` kind -> (processes, CPU s), of ``total`` CPU s; what
    the kinds do not account for is shown as ``rest_label``."""
    print("| job kind | processes | CPU s | CPU per session s | share |\n|---|---:|---:|---:|---:|")
    counted = 0.0
    for kind, (count, cpu) in sorted(profile.items(), key=lambda kv: -kv[1][1]):
        counted += cpu
        print(f"| {kind} | {count} | {cpu:.1f} | {cpu / sessions:.3f} | {cpu / total:.0%} |")
    rest = total - counted
    print(f"| {rest_label} | | {rest:.1f} | {rest / sessions:.3f} | {rest / total:.0%} |")


if __name__ == "__main__":
    raise SystemExit(main())
