"""Benchmark: the six built-in algorithms on one 49 x 496 x 512 volume, on one core.

    python benchmarks/algorithms/bench.py [--repeats 5] [--markdown]

Pins the process to one CPU (sched_setaffinity) and single-threaded BLAS/OpenMP,
stages the volume once like the workflow does (volume.npy + meta), then runs
each algorithm through the public API (``load_algorithm(...).run``, in-process
python runtime, output validated against the schema) ``repeats`` times and
reports the median and the minimum wall time per algorithm. ``isolate=False``: in this
process (``Algorithm.run`` forks a child per call by default, whose segmentation cache
would die with it). The first run of
each algorithm (imports, page cache) is a separate warm-up and not counted.

Two figures:
* separate: each algorithm alone, its own segmentation (QMROCT_SEGMENT_CACHE=0),
  as when every algorithm is its own workflow job;
* together: the six in sequence in one process with the shared segmentation
  computed once (cache cleared before every repeat), as ``qmroct kqi`` runs them.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import sys  # noqa: E402

import numpy as np  # noqa: E402

from qmroct.algorithms import load_algorithm  # noqa: E402
from qmroct.synth import SynthParams, generate_volume  # noqa: E402

SIX = ["noise", "layers", "mtci", "signal", "motion", "centering"]
ALGORITHMS = Path(__file__).resolve().parents[2] / "algorithms"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--defects", default="shadow,motion,tilt", help="comma-separated synthetic defects"
    )
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        cpu = sorted(os.sched_getaffinity(0))[0]
        os.sched_setaffinity(0, {cpu})
    defects = tuple(d for d in args.defects.split(",") if d)
    vol, truth = generate_volume(
        SynthParams(n_bscans=49, depth=496, width=512, seed=1, looks=2, defects=defects)
    )
    tmp = Path(tempfile.mkdtemp(prefix="qmroct-bench-"))
    try:
        np.save(tmp / "volume.npy", vol)
        meta = {
            "scan_id": "bench",
            "spacing_mm": truth.spacing_mm,
            "device": "Spectralis",
            "laterality": "OD",
            "intensity": "linear",
            "shape": list(vol.shape),
        }
        algos = {name: load_algorithm(name, [ALGORITHMS]) for name in SIX}
        rows = []
        os.environ["QMROCT_SEGMENT_CACHE"] = "0"
        for name, algo in algos.items():
            algo.run(tmp / "volume.npy", meta, {}, tmp / name, isolate=False)  # warm-up
            times, cpu = [], []
            for _ in range(args.repeats):
                t0, c0 = time.perf_counter(), time.process_time()
                algo.run(tmp / "volume.npy", meta, {}, tmp / name, isolate=False)
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
            rows.append((name, statistics.median(times), min(times), statistics.median(cpu)))
        os.environ["QMROCT_SEGMENT_CACHE"] = "1"
        together, together_cpu = [], []
        for _ in range(args.repeats):
            for mod in [
                m for k, m in sys.modules.items() if k.startswith("_qmroct_shared_octseg_")
            ]:
                mod._cache.clear()
            t0, c0 = time.perf_counter(), time.process_time()
            for name, algo in algos.items():
                algo.run(tmp / "volume.npy", meta, {}, tmp / name, isolate=False)
            together.append(time.perf_counter() - t0)
            together_cpu.append(time.process_time() - c0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    total_med = sum(r[1] for r in rows)
    total_min = sum(r[2] for r in rows)
    total_cpu = sum(r[3] for r in rows)
    tog_med, tog_min, tog_cpu = (
        statistics.median(together),
        min(together),
        statistics.median(together_cpu),
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    cpu_name = platform.processor() or platform.machine()
    if args.markdown:
        print(
            f"Volume 49 x 496 x 512 float32 (defects: {', '.join(defects) or 'none'}), one core, "
            f"{args.repeats} repeats, numpy {np.__version__}, "
            f"Python {platform.python_version()}, {cpu_name}, "
            f"load average at the end {load:.1f} on {os.cpu_count()} CPUs\n"
        )
        print("| algorithm | wall median s | wall min s | CPU median s |\n|---|---:|---:|---:|")
        for name, med, mn, c in rows:
            print(f"| {name} (alone) | {med:.3f} | {mn:.3f} | {c:.3f} |")
        print(f"| sum of the six alone | {total_med:.3f} | {total_min:.3f} | {total_cpu:.3f} |")
        print(
            "| **all six together, one process (segmentation shared)** "
            f"| **{tog_med:.3f}** | **{tog_min:.3f}** | **{tog_cpu:.3f}** |"
        )
    else:
        for name, med, mn, c in rows:
            print(f"{name:10s} alone    wall median {med:.3f} s  min {mn:.3f} s  cpu {c:.3f} s")
        print(
            f"{'sum alone':10s}          wall median {total_med:.3f} s  "
            f"min {total_min:.3f} s  cpu {total_cpu:.3f} s"
        )
        print(
            f"{'together':10s}          wall median {tog_med:.3f} s  min {tog_min:.3f} s  "
            f"cpu {tog_cpu:.3f} s (target <= 2 s)"
        )
        print(f"load average {load:.1f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
