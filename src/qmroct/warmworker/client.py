"""The job side: hand a step to the run's warm worker and become the job's exit status.

Imported by the ``script:`` jobs before anything heavy: only the standard library and
:mod:`qmroct.scratch` load here.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import os
import pickle
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, NoReturn

from qmroct.job_exit import end_process, exit_now, flush_std
from qmroct.scratch import claim
from qmroct.warmworker import FOLDER, SWITCH_ENV, wire

# Signals a job gets from a terminal or from Snakemake, passed on to the job process.
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
# For the throughput benchmark's accounting (benchmarks/throughput/profile_hook): the job's
# rule, and the CPU (s) its step used in the worker's processes, not in this process's rusage.
job_rule = ""
worker_cpu_s = 0.0


def main(argv: list[str]) -> None:
    """The ``shell:`` jobs' entry (``python -m qmroct.warmworker``, see :mod:`.job`)."""
    from qmroct.warmworker.job import JobArgumentError, parse

    global job_rule
    try:
        target, job = parse(argv)
    except JobArgumentError as err:
        print(f"qmroct: {err}", file=sys.stderr)
        sys.exit(2)
    job_rule = job.rule
    run_step(target, job)


def run_step(target: str, job: Any) -> None:
    """Run ``target`` ("module:function") on ``job`` (what the step reads: a
    :class:`~qmroct.warmworker.job.StepJob` or Snakemake's ``snakemake``); never returns."""
    if os.environ.get(SWITCH_ENV) == "0":
        _run_here(target, job)
    folder = claim(Path(job.config["scratch_dir"]).resolve()) / FOLDER
    request = {
        "target": target,
        "job": pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL),
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "path": list(sys.path),
        "argv": list(sys.argv),
        "umask": _umask(),
    }
    flush_std()
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        sock = _hand_over(folder, request)
    except (OSError, RuntimeError) as err:
        # No worker (a scratch file system without unix sockets, say): the job still runs,
        # as it did before there was a worker, and says why it is slower.
        print(
            f"qmroct: no warm worker ({err}); running the step in the job's process",
            file=sys.stderr,
        )
        _run_here(target, job)
    for signum in FORWARDED:
        signal.signal(signum, lambda signum, _frame: _forward(sock, signum))
    try:
        reply = wire.receive(sock)
    except (OSError, EOFError):
        reply = None
    if reply is None:
        _finish(
            1, f"qmroct: the warm worker ended without finishing the job (see its log in {folder})"
        )
    message, _ = reply
    global worker_cpu_s
    worker_cpu_s = float(message["cpu_s"])
    _finish(int(message["returncode"]))


def _hand_over(folder: Path, request: dict) -> socket.socket:
    """Connected to a worker that has started the job. A worker that ends just as a job
    connects (idle, or its run folder released) closes the connection before it starts
    anything: then the job tries again, with a new worker if need be."""
    name = _worker_name()
    for _attempt in range(3):
        sock = _connect_or_start(folder, name)
        try:
            wire.send(sock, request, fds=(0, 1, 2))
            started = wire.receive(sock)
        except (OSError, EOFError):
            started = None
        if started is not None:
            return sock
        sock.close()
    raise RuntimeError(f"no warm worker in {folder} took the job (see the log there)")


def _run_here(target: str, job: Any) -> None:
    module, function = target.split(":")
    getattr(importlib.import_module(module), function)(job)
    exit_now()
    sys.exit(0)


def _worker_name() -> str:
    """One worker per run folder and interpreter: jobs of a rule with another environment
    (``conda:``) get their own."""
    import qmroct

    key = f"{sys.executable}\0{Path(qmroct.__file__).parent}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _connect(folder_fd: int, name: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(wire.folder_path(folder_fd, f"{name}.sock"))
    except OSError:
        sock.close()
        raise
    return sock


def _connect_or_start(folder: Path, name: str) -> socket.socket:
    folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            return _connect(folder_fd, name)
        except (FileNotFoundError, ConnectionRefusedError):
            pass
        # One job starts the worker; the others wait for it on the lock.
        with open(folder / f"{name}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                return _connect(folder_fd, name)
            except (FileNotFoundError, ConnectionRefusedError):
                _start(folder, name)
            return _connect(folder_fd, name)
    finally:
        os.close(folder_fd)


def _start(folder: Path, name: str) -> None:
    (folder / f"{name}.sock").unlink(missing_ok=True)  # a dead worker's
    ready_read, ready_write = os.pipe()
    with open(folder / f"{name}.log", "ab") as log:
        # Its own session: a Ctrl-C for the job's terminal is for the job, not the worker
        # (the client passes it on); it is not waited for, and ends on its own (see server).
        subprocess.Popen(
            [sys.executable, "-m", "qmroct.warmworker.server", str(folder), name, str(ready_write)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd="/",
            pass_fds=(ready_write,),
            start_new_session=True,
        )
    os.close(ready_write)
    with os.fdopen(ready_read, "rb") as ready:
        if ready.read() != b"ready\n":  # the worker closes the pipe once it listens
            log_tail = (folder / f"{name}.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the warm worker did not start:\n{log_tail}")


def _forward(sock: socket.socket, signum: int) -> None:
    try:
        wire.send(sock, {"signal": signum})
    except OSError:
        pass


def _finish(returncode: int, message: str = "") -> NoReturn:
    """End like the job process did: its exit code, or killed by the same signal."""
    if message:
        print(message, file=sys.stderr)
    end_process(returncode)
