"""Ending a workflow job's Python process without tearing the interpreter down.

A ``script:`` job is a fresh interpreter with numpy, scipy, jsonschema and Snakemake loaded.
Its normal exit frees all of that module by module, which costs 0.05-0.1 s of CPU (measured
by benchmarks/throughput: CPU the process used after its last exit hook) for nothing: the
process is gone a moment later anyway. Eight jobs per session pay it, so it is ~0.5 s of CPU
per session.

:func:`exit_now` does what a normal exit does that matters (exit hooks, among them
logging's flush and close, then stdio flushed) and ends the process with ``os._exit``.
Only when the job's own thread is the only one left: a normal exit waits for non-daemon
threads, and ``os._exit`` would cut them off, so then it returns and the job ends normally.
Called after the step succeeded; a step that raises never gets here (the normal traceback
and exit status 1).
"""

from __future__ import annotations

import _signal
import atexit
import os
import sys

# The warm worker's entry process ends here too (every job, eight per session), so this
# imports only what is built into the interpreter: ``_signal`` is the C module under
# ``signal`` (whose enums cost 3 ms to import), typing's names are for checkers only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn


def exit_now() -> None:
    import threading

    if threading.active_count() != 1:
        return
    end_process(0)


def end_process(returncode: int) -> NoReturn:
    """Exit hooks (logging's flush and close among them), stdio flushed, then the end:
    ``returncode`` as in :mod:`subprocess`, -N meaning killed by signal N (the signal is
    raised again, so a parent sees the same death)."""
    atexit._run_exitfuncs()
    flush_std()
    if returncode < 0:
        _signal.signal(-returncode, _signal.SIG_DFL)
        _signal.pthread_sigmask(_signal.SIG_UNBLOCK, [-returncode])
        os.kill(os.getpid(), -returncode)
    os._exit(returncode if returncode >= 0 else 128 - returncode)


def flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken: nothing left to keep
            pass
