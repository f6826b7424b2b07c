"""CPU accounting for the throughput benchmark (never installed; on PYTHONPATH only there).

Every Python process the benchmarked workflow starts (the Snakemake head, each ``script:``
job, the warm worker) imports this at start-up. At exit it appends one JSON line to the file
named by QMROCT_BENCH_CPU_LOG: what the process was (the rule of a ``script:`` job, which
Snakemake's script preamble leaves in ``__main__.snakemake``; the warm worker; else its
command line), its own user+sys CPU and that of the children it waited for (git, forked
algorithm children), the CPU a job's step used in the warm worker, and its wall time.
O_APPEND writes of one short line do not interleave between processes.
"""

import atexit
import json
import os
import resource
import sys
import time

_LOG = os.environ.get("QMROCT_BENCH_CPU_LOG")
_START = time.monotonic()
_PID = os.getpid()


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _kind() -> str:
    job = getattr(sys.modules.get("__main__"), "snakemake", None)
    if job is not None and hasattr(job, "rule"):
        return str(job.rule)
    rule = getattr(sys.modules.get("qmroct.warmworker.client"), "job_rule", "")
    if rule:  # a shell: job that handed its step to the warm worker
        return rule
    argv = " ".join(sys.orig_argv if hasattr(sys, "orig_argv") else sys.argv)
    if "qmroct.warmworker.server" in argv:
        return "warm worker"
    if "snakemake" in argv:
        return "snakemake head"
    return "other python: " + argv[:80]


def _record() -> None:
    if os.getpid() != _PID:  # a forked child that exits through atexit: its parent counts it
        return
    line = {
        "kind": _kind(),
        "self_cpu_s": round(_cpu(resource.RUSAGE_SELF), 4),
        "children_cpu_s": round(_cpu(resource.RUSAGE_CHILDREN), 4),
        "wall_s": round(time.monotonic() - _START, 4),
        # a job that handed its step to the warm worker: the CPU its step used there
        # (also in the worker's children_cpu_s, which is outside the Snakemake head's tree)
        "worker_cpu_s": getattr(sys.modules.get("qmroct.warmworker.client"), "worker_cpu_s", 0.0),
    }
    fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
    finally:
        os.close(fd)


def _dump_profile(profiler) -> None:
    if os.getpid() != _PID:
        return
    profiler.disable()
    kind = _kind().replace(" ", "_").replace("/", "_")[:40]
    folder = os.environ["QMROCT_BENCH_CPROFILE_DIR"]
    profiler.dump_stats(os.path.join(folder, f"{kind}.{_PID}.prof"))


if _LOG:
    atexit.register(_record)
if os.environ.get("QMROCT_BENCH_CPROFILE_DIR"):  # optional: a cProfile of every process
    import cProfile

    _profiler = cProfile.Profile(time.process_time)  # CPU, not wall: the machine is shared
    _profiler.enable()
    atexit.register(_dump_profile, _profiler)
