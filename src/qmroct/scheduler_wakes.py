"""Snakemake's default job rate limit, and why the workflow's head lifts it.

Snakemake's command line always sets a job rate limit (``--max-jobs-per-timespan``,
default ``100/1s``; the Python API's default is none). With a limit set, every pass of the
scheduler loop that leaves jobs waiting for a core arms a timer that wakes the loop again a
timespan later, and the pass that timer causes arms the next one
(``JobScheduler.schedule`` and ``_schedule_reevalutation`` in
``snakemake/scheduling/job_scheduler.py``, 9.27.1). So every job that ends while others wait
starts one more endless 1 Hz chain of passes, and each pass stats the inputs of every ready
job (``update_input_sizes``) and resets their params and resources. The head's cost grows
with jobs x run time: a profiled local run of 24 sessions (195 jobs) made 2,012 passes
where about 200 select anything, and they were two thirds of the head's CPU.

Without a limit the loop wakes when a job ends or fails, as Snakemake did before the limit
existed (8.17). A rate limit protects a cluster's scheduler from bursts of submissions;
qmroct's local runs start processes and the OpenStack pool queues jobs in its own process,
so neither needs one. A limit the operator chose (any value but the default) is kept,
wakes and all.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

# Snakemake's command-line default for --max-jobs-per-timespan: 100 jobs per 1 second
SNAKEMAKE_DEFAULT_LIMIT = (100, 1)


def lift_default_rate_limit(workflow: Any) -> bool:
    """Drop the scheduler's job rate limit if it is Snakemake's default. Called by the
    Snakefile's ``onstart`` (:mod:`qmroct.run_hooks`), which runs after the scheduler is made
    and before its first pass.
    True if it was dropped; a Snakemake without ``scheduler.job_rate_limiter`` is left alone."""
    scheduler = getattr(workflow, "scheduler", None)
    limiter = getattr(scheduler, "job_rate_limiter", None)
    if limiter is None:
        return False
    if (limiter.max_jobs, limiter.timespan) != SNAKEMAKE_DEFAULT_LIMIT:
        log.info(
            "keeping the job rate limit of %s jobs per %s s: with one, Snakemake's scheduler "
            "wakes once a second per finished job while jobs wait",
            limiter.max_jobs,
            limiter.timespan,
        )
        return False
    scheduler.job_rate_limiter = None
    return True
