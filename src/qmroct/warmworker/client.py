"""The job side: hand a step to the run's warm worker and become the job's exit status.

This is the entry process of every per-session job (eight per session), so it imports only
what is built into the interpreter (``os``, ``sys``, ``_socket``, ``_signal``, ``marshal``,
``zlib``): ~15 ms of CPU in all, most of it the interpreter's own start. The job's
arguments go to the worker as they came and are read there (:func:`.job.parse`). Only when
there is no worker yet does it load more: :mod:`qmroct.scratch` to claim the run folder,
``subprocess`` to start the worker.
"""

from __future__ import annotations

import _signal
import _socket
import os
import sys

from qmroct.job_exit import end_process, exit_now, flush_std
from qmroct.warmworker import FOLDER, RUN_FOLDER_ENV, SWITCH_ENV, wire

TYPE_CHECKING = False  # typing itself costs the entry 3 ms
if TYPE_CHECKING:
    from typing import Any, NoReturn

# Signals a job gets from a terminal or from Snakemake, passed on to the job process.
FORWARDED = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT)
# For the throughput benchmark's accounting (benchmarks/throughput/profile_hook): the job's
# rule, and the CPU (s) its step used in the worker's processes, not in this process's rusage.
job_rule = ""
worker_cpu_s = 0.0


def main(argv: list[str]) -> None:
    """The ``shell:`` jobs' entry (``python -m qmroct.warmworker``, see :mod:`.job`)."""
    global job_rule
    run_folder = os.environ.get(RUN_FOLDER_ENV)
    if len(argv) >= 2 and run_folder and os.environ.get(SWITCH_ENV) != "0":
        job_rule = argv[1]
        _delegate(run_folder, {"job_argv": argv}, lambda: _run_parsed(argv, here=True))
    _run_parsed(argv)


def _run_parsed(argv: list[str], here: bool = False) -> NoReturn:
    """The job read here: for a clear error about its arguments, without the run folder in
    the environment (it is then taken from the job's config), or ``here``, in this process
    (no worker could be had)."""
    from qmroct.warmworker.job import read_command

    global job_rule
    target, job = read_command(argv)
    job_rule = job.rule
    if here:
        _run_here(target, job)
    run_step(target, job)


def run_step(target: str, job: Any) -> NoReturn:
    """Run ``target`` ("module:function") on ``job`` (what the step reads: a
    :class:`~qmroct.warmworker.job.StepJob` or any picklable object with ``config``)."""
    if os.environ.get(SWITCH_ENV) == "0":
        _run_here(target, job)
    import pickle

    request = {"target": target, "job": pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)}
    _delegate(job.config["scratch_dir"], request, lambda: _run_here(target, job))


def _delegate(run_folder: str, request: dict, fallback) -> NoReturn:
    """Hand the job over to the worker of ``run_folder`` (starting it if need be), wait for
    its end and end the same way; ``fallback()`` if no worker can be had."""
    request.update(
        cwd=os.getcwd(),
        env=dict(os.environ),
        path=list(sys.path),
        argv=list(sys.argv),
        umask=_umask(),
    )
    flush_std()
    run_folder = os.path.realpath(run_folder)
    folder = os.path.join(run_folder, FOLDER)
    try:
        sock = _hand_over(run_folder, folder, request)
    except (OSError, RuntimeError) as err:
        # No worker (a scratch file system without unix sockets, say): the job still runs,
        # as it did before there was a worker, and says why it is slower.
        print(
            f"qmroct: no warm worker ({err}); running the step in the job's process",
            file=sys.stderr,
        )
        fallback()
    for signum in FORWARDED:
        _signal.signal(signum, lambda signum, _frame: _forward(sock, signum))
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


def _hand_over(run_folder: str, folder: str, request: dict) -> _socket.socket:
    """Connected to a worker that has started the job. A worker that ends just as a job
    connects (idle, or its run folder released) closes the connection before it starts
    anything: then the job tries again, with a new worker if need be."""
    name = _worker_name()
    for _attempt in range(3):
        sock = _connect_or_start(run_folder, folder, name)
        try:
            wire.send(sock, request, fds=(0, 1, 2))
            started = wire.receive(sock)
        except (OSError, EOFError):
            started = None
        if started is not None:
            return sock
        sock.close()
    raise RuntimeError(f"no warm worker in {folder} took the job (see the log there)")


def _run_here(target: str, job: Any) -> NoReturn:
    import importlib

    module, function = target.split(":")
    getattr(importlib.import_module(module), function)(job)
    exit_now()
    sys.exit(0)


def _worker_name() -> str:
    """One worker per run folder and interpreter: jobs of a rule with another environment
    (``conda:``) get their own. A checksum, not a cryptographic hash: it only tells apart the
    few interpreters of one run (and ``hashlib`` would cost the entry 3 ms)."""
    import zlib

    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    key = sys.executable + "\0" + package
    return format(zlib.crc32(key.encode()), "08x")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _connect(folder: str, name: str) -> _socket.socket:
    folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(wire.folder_path(folder_fd, f"{name}.sock"))
        # The job's environment (archive tokens among it) goes only to a worker of this
        # user. The run folder is checked when it is claimed; a connection that finds a
        # worker skips that, so the worker itself is checked.
        if not wire.peer_is_us(sock):
            raise PermissionError(f"the worker socket in {folder} belongs to another user")
    except OSError:
        sock.close()
        raise
    finally:
        os.close(folder_fd)
    return sock


def _connect_or_start(run_folder: str, folder: str, name: str) -> _socket.socket:
    try:
        return _connect(folder, name)  # the common case: a job of this run started it
    except (FileNotFoundError, ConnectionRefusedError):
        pass
    import fcntl

    from qmroct.scratch import claim

    # The run folder, if no job of this process's run has made it yet (a job on a VM).
    claim(run_folder)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    # One job starts the worker; the others wait for it on the lock.
    with open(os.path.join(folder, f"{name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _connect(folder, name)
        except (FileNotFoundError, ConnectionRefusedError):
            _start(folder, name)
        return _connect(folder, name)


def _start(folder: str, name: str) -> None:
    import subprocess

    log_path = os.path.join(folder, f"{name}.log")
    try:
        os.unlink(os.path.join(folder, f"{name}.sock"))  # a dead worker's
    except FileNotFoundError:
        pass
    ready_read, ready_write = os.pipe()
    with open(log_path, "ab") as log:
        # Its own session: a Ctrl-C for the job's terminal is for the job, not the worker
        # (the client passes it on); it is not waited for, and ends on its own (see server).
        subprocess.Popen(
            [sys.executable, "-m", "qmroct.warmworker.server", folder, name, str(ready_write)],
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
            with open(log_path, errors="replace") as log:
                log_tail = log.read()[-2000:]
            raise RuntimeError(f"the warm worker did not start:\n{log_tail}")


def _forward(sock: _socket.socket, signum: int) -> None:
    try:
        wire.send(sock, {"signal": signum})
    except OSError:
        pass


def _finish(returncode: int, message: str = "") -> NoReturn:
    """End like the job process did: its exit code, or killed by the same signal."""
    if message:
        print(message, file=sys.stderr)
    end_process(returncode)
