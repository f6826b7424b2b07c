"""How much does qmroct add to Snakemake's own DAG cost?

For N sessions x the declared algorithms, measure in one run, side by side:

* ``snakemake -n`` with everything to do (after discovery), and
* a no-op rerun (every output present: "Nothing to be done"),

for the qmroct workflow and for a bare Snakemake workflow with the same jobs
(same checkpoint, rules, groups and wildcards, trivial shell commands). The
ratio qmroct / bare is the figure of merit (target <= 1.15, issue 13).

Usage: python benchmarks/workflow/bench_dag.py [--sessions 1000 10000] [--repeats 3]
           [--algorithms two|six]
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ALGORITHMS = ["layers", "noise"]  # --algorithms: these or all six built-in ones
SIX = ["centering", "layers", "motion", "mtci", "noise", "signal"]

BARE_SNAKEFILE = r"""
import csv

ALGORITHMS = __ALGORITHMS__


def sessions():
    index = checkpoints.discover.get().output.index
    with open(index) as fh:
        return sorted({(r["project"], r["session"]) for r in csv.DictReader(fh, delimiter="\t")})


rule all:
    input:
        "results/report/index.html",
        "results/tables/kqi.tsv",
        lambda wc: [f"results/writeback/{p}/{s}.json" for p, s in sessions()],
    default_target: True


checkpoint discover:
    output:
        directory=directory("results/discovery"),
        index="results/discovery/sessions.tsv",
    shell:
        "exit 1  # prepared by the benchmark"


rule compute:
    input:
        session="results/discovery/sessions/{project}/{session}.json",
    output:
        kqi="results/kqi/{project}/{session}/{algorithm}.json",
        extras=directory("results/kqi/{project}/{session}/{algorithm}.files"),
    group:
        "session"
    shell:
        "mkdir -p {output.extras} && touch {output.kqi}"


rule session_summary:
    input:
        session="results/discovery/sessions/{project}/{session}.json",
        results=lambda wc: expand(
            "results/kqi/{p}/{s}/{a}.json", p=wc.project, s=wc.session, a=ALGORITHMS
        ),
    output:
        summary="results/sessions/{project}/{session}.json",
        thumbnails=directory("results/thumbnails/{project}/{session}"),
    group:
        "session"
    shell:
        "mkdir -p {output.thumbnails} && touch {output.summary}"


rule writeback:
    input:
        session="results/discovery/sessions/{project}/{session}.json",
        summary="results/sessions/{project}/{session}.json",
        results=lambda wc: expand(
            "results/kqi/{p}/{s}/{a}.json", p=wc.project, s=wc.session, a=ALGORITHMS
        ),
    output:
        receipt="results/writeback/{project}/{session}.json",
    shell:
        "touch {output}"


rule aggregate:
    input:
        lambda wc: [f"results/kqi/{p}/{s}/{a}.json" for p, s in sessions() for a in ALGORITHMS],
    output:
        tsv="results/tables/kqi.tsv",
        parquet="results/tables/kqi.parquet",
        studies=directory("results/tables/studies"),
    shell:
        "touch {output.tsv} {output.parquet} && mkdir -p {output.studies}"


rule report:
    input:
        parquet="results/tables/kqi.parquet",
        studies="results/tables/studies",
        summaries=lambda wc: [f"results/sessions/{p}/{s}.json" for p, s in sessions()],
    output:
        html="results/report/index.html",
    shell:
        "touch {output}"
"""


def make_archive(root: Path, n: int) -> None:
    """N sessions with one small scan file each (the DAG never reads scan content)."""
    for k in range(n):
        subject = f"S{k // 2:05d}"
        label = f"{subject}_V{k % 2 + 1}"
        session = root / "DEMO" / "subjects" / subject / "experiments" / label
        files = session / "scans" / "1" / "resources" / "DICOM" / "files"
        files.mkdir(parents=True, exist_ok=True)
        (session / "session.json").write_text(
            json.dumps({"label": label, "ID": label, "subject": subject})
        )
        (session / "scans" / "1" / "scan.json").write_text(json.dumps({"ID": "1", "type": "OCT"}))
        (files / f"{label}.dcm").write_bytes(label.encode() * 8)


def make_outputs(workdir: Path, pairs: list[tuple[str, str]]) -> None:
    """Every output of the workflow, created in dependency order (older inputs first)."""

    def touch(path: Path, directory: bool = False) -> None:
        if directory:
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{}")

    for p, s in pairs:
        for a in ALGORITHMS:
            touch(workdir / f"results/kqi/{p}/{s}/{a}.json")
            touch(workdir / f"results/kqi/{p}/{s}/{a}.files", directory=True)
    time.sleep(0.05)
    for p, s in pairs:
        touch(workdir / f"results/sessions/{p}/{s}.json")
        touch(workdir / f"results/thumbnails/{p}/{s}", directory=True)
    time.sleep(0.05)
    for p, s in pairs:
        touch(workdir / f"results/writeback/{p}/{s}.json")
    for name in ("kqi.tsv", "kqi.parquet"):
        touch(workdir / "results/tables" / name)
    touch(workdir / "results/tables/studies", directory=True)
    time.sleep(0.05)
    touch(workdir / "results/report/index.html")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def snakemake(workdir: Path, *args: str) -> tuple[float, str, float]:
    """Wall seconds, output, and CPU seconds (user+sys of snakemake and its children): on a
    shared machine wall time includes waiting for a core, CPU time much less so."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    start, cpu = time.perf_counter(), _children_cpu()
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "1", "--nocolor", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        env=env,
    )
    elapsed, cpu = time.perf_counter() - start, _children_cpu() - cpu
    if proc.returncode != 0:
        raise RuntimeError(f"snakemake {args} in {workdir} failed:\n{proc.stderr[-3000:]}")
    return elapsed, proc.stdout + proc.stderr, cpu


def setup(base: Path, n: int) -> tuple[Path, Path, list[tuple[str, str]]]:
    qm = base / "qmroct"
    qm.mkdir()
    for part in ("Snakefile", "rules", "scripts", "algorithms", "envs"):
        src = REPO / part
        (shutil.copytree if src.is_dir() else shutil.copy)(src, qm / part)
    make_archive(qm / "archive", n)
    config = (
        "archive: {backend: directory, path: archive}\nprojects: [DEMO]\n"
        f"algorithms: {{{', '.join(a + ': {}' for a in ALGORITHMS)}}}\n"
        "studies: {trial: {criteria: ['noise.snr_db >= 15', 'layers.detection_fraction >= 0.9']}}\n"
    )
    (qm / "config.yaml").write_text(config)
    snakemake(qm, "results/discovery/sessions.tsv")  # the real discovery checkpoint
    with open(qm / "results/discovery/sessions.tsv") as fh:
        next(fh)
        pairs = sorted({tuple(line.split("\t")[0:3:2]) for line in fh})

    bare = base / "bare"
    bare.mkdir()
    (bare / "Snakefile").write_text(BARE_SNAKEFILE.replace("__ALGORITHMS__", repr(ALGORITHMS)))
    shutil.copytree(qm / "results/discovery", bare / "results/discovery")
    return qm, bare, pairs


def measure(n: int, repeats: int) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"bench-dag-{n}-") as tmp:
        qm, bare, pairs = setup(Path(tmp), n)
        jobs = len(pairs) * (len(ALGORITHMS) + 2) + 3
        keys = ("qm_plan", "bare_plan", "qm_noop", "bare_noop")
        timings: dict[str, list[float]] = {k: [] for k in keys}
        cpu: dict[str, list[float]] = {k: [] for k in keys}

        def run(key: str, workdir: Path, *args: str) -> str:
            wall, out, used = snakemake(workdir, *args)
            timings[key].append(wall)
            cpu[key].append(used)
            return out

        for _ in range(repeats):  # interleaved, so machine noise hits both alike
            run("qm_plan", qm, "-n", "--quiet", "rules")
            run("bare_plan", bare, "-n", "--quiet", "rules")
        for workdir in (qm, bare):
            make_outputs(workdir, pairs)
        for _ in range(repeats):
            out = run("qm_noop", qm)
            assert "Nothing to be done" in out, out[-2000:]
            out = run("bare_noop", bare)
            assert "Nothing to be done" in out, out[-2000:]
        med = {k: statistics.median(v) for k, v in timings.items()}
        med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
        return {
            "sessions": n,
            "jobs": jobs,
            **{k: round(v, 2) for k, v in med.items()},
            **{f"{k}_cpu": round(v, 2) for k, v in med_cpu.items()},
            "plan_ratio": round(med["qm_plan"] / med["bare_plan"], 3),
            "noop_ratio": round(med["qm_noop"] / med["bare_noop"], 3),
            "plan_cpu_ratio": round(med_cpu["qm_plan"] / med_cpu["bare_plan"], 3),
            "noop_cpu_ratio": round(med_cpu["qm_noop"] / med_cpu["bare_noop"], 3),
            "load": os.getloadavg()[0],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--algorithms", choices=("two", "six"), default="two", help="layers and noise, or all six"
    )
    args = parser.parse_args()
    if args.algorithms == "six":
        ALGORITHMS[:] = SIX
    print(
        f"load average at the start {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; "
        "medians of "
        f"{args.repeats}; wall s (CPU s = user+sys of snakemake and its children)\n"
    )
    print(
        "| sessions | jobs | qmroct -n | bare -n | ratio wall (CPU) "
        "| qmroct no-op | bare no-op | ratio wall (CPU) | load at end |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for n in args.sessions:
        r = measure(n, args.repeats)
        print(
            f"| {r['sessions']} | {r['jobs']} | {r['qm_plan']} ({r['qm_plan_cpu']}) "
            f"| {r['bare_plan']} ({r['bare_plan_cpu']}) "
            f"| {r['plan_ratio']} ({r['plan_cpu_ratio']}) "
            f"| {r['qm_noop']} ({r['qm_noop_cpu']}) | {r['bare_noop']} ({r['bare_noop_cpu']}) "
            f"| {r['noop_ratio']} ({r['noop_cpu_ratio']}) | {r['load']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
