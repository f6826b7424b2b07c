"""The warm worker: a job's step run in a process that has its imports already.

Why: a ``script:`` job is a fresh interpreter. Before it computes anything it imports
numpy, scipy, pydicom, jsonschema, Pillow and qmroct (~0.3 s of CPU), which is more than
most algorithms cost on a scan; eight such jobs per session made the workflow use about six
times the CPU of its algorithms (``benchmarks/throughput/``).

How: the per-session jobs (compute, summary, write-back) are ``shell:`` jobs that run a small
entry process, ``python -m qmroct.warmworker`` (:mod:`.job` says why ``shell:`` and what
the command holds); Snakemake's semantics are untouched (inputs, outputs, logs, params,
reruns, groups, remote execution). The entry process (:mod:`.client`, only modules built
into the interpreter) hands the job's command line to the run's warm worker
(:mod:`.server`): started by the first job that needs it, one per run folder and
interpreter, with the steps' modules imported. For each job it forks a *job process*, which
takes on the job's working directory, environment, ``sys.path`` and standard streams (passed
over the socket), reads the command line, runs the step, and ends; the worker waits for it
(a pidfd in its event loop, beside the client's connection) and reports its end. So:

* **Crash isolation stays.** Every job is its own process (and every algorithm call its own
  child of that, :mod:`qmroct.algorithms.child`); a job that crashes or leaks state takes
  nothing with it. The worker itself runs no job code.
* **Exit status, output and signals are the job's.** The job process writes straight to the
  job's stdout and stderr (its file descriptors); the client exits with the job process's
  status (re-raising the same signal if it was killed by one). A signal to the client
  (Ctrl-C, Snakemake cancelling the job) is passed on to the job process's group; a client
  that disappears (SIGKILL) makes the worker end the job (SIGTERM, SIGKILL after a grace). A
  job process dies with the worker (PR_SET_PDEATHSIG), and a worker that stops taking jobs
  (its run is over) still sees its running jobs to their end.
* **Nothing outlives the run.** The worker listens on a socket inside the run folder (mode
  0700, :mod:`qmroct.scratch`), accepts only its own user (SO_PEERCRED), and stops taking
  jobs when the run folder or its owner process is gone, or after :data:`IDLE_EXIT_S` without
  jobs.

Why no process between the worker and a job (there was a *supervisor* per job until
2026-12-01): each fork of the worker (~130 MB mapped) costs ~3 ms in the parent and ~4 ms in
the child, and the supervisor's exit tore its copy down again; it was ~10 ms of each job's
~50 ms of fixed cost (``benchmarks/throughput/bench_job_floor.py``).

``QMROCT_WARM_WORKER=0`` runs the step in the job's own process instead (as before; for a
debugger, say). The benchmark's CPU accounting counts the worker's CPU (see
``benchmarks/throughput/README.md``).
"""

from __future__ import annotations

# How long a worker with no jobs waits for the next before it exits (a run's jobs come
# seconds apart; a worker that exited is started again by the next job).
IDLE_EXIT_S = 60.0
# The folder under the run folder that holds the worker's socket, lock and log.
FOLDER = ".warm-worker"
# Set to "0" to run steps in the job's own process.
SWITCH_ENV = "QMROCT_WARM_WORKER"
# The run folder (config scratch_dir) of the process that read the Snakefile, for its jobs'
# entry processes, which find the worker without reading the config (.job.export_context).
RUN_FOLDER_ENV = "QMROCT_JOB_RUN_FOLDER"
