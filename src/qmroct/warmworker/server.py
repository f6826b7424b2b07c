"""The warm worker: imports once, then forks a supervised process for every job.

``python -m qmroct.warmworker.server FOLDER NAME READY_FD`` (started by :mod:`.client`).
"""

from __future__ import annotations

import gc
import importlib
import os
import pickle
import selectors
import signal
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path

from qmroct.algorithms.child import exit_status, kill_when_parent_dies
from qmroct.job_exit import end_process, flush_std
from qmroct.scratch import read_owner
from qmroct.warmworker import IDLE_EXIT_S, wire
from qmroct.warmworker.job import JobArgumentError, parse

# What the per-session steps and the built-in algorithms import, loaded once here.
PRELOAD = (
    "numpy",
    "scipy.ndimage",
    "scipy.signal",
    "jsonschema",
    "pydicom",
    "PIL.Image",
    "PIL.ImageDraw",
    "PIL.PngImagePlugin",
    "snakemake.script",  # unpickling the job's ``snakemake`` object needs it
    "qmroct.warmworker.job",  # each job's command line is read into a StepJob here
    "qmroct.workflow",
    "qmroct.compute",
    "qmroct.algorithms.runner",
    "qmroct.algorithms.pyrun",
    "qmroct.staging",
    "qmroct.scanio.volume",
    "qmroct.scanio.dicom",
    "qmroct.summary",
    "qmroct.thumbnail",
    "qmroct.writeback",
    "qmroct.archive",
    "qmroct.archive.directory",
    "qmroct.archive.xnat",
)
POLL_S = 0.5
# After a client vanished (SIGKILL), how long its job gets to end on SIGTERM.
TERM_GRACE_S = 10.0


def main(argv: list[str]) -> int:
    folder, name, ready_fd = Path(argv[0]), argv[1], int(argv[2])
    for module in PRELOAD:
        try:
            importlib.import_module(module)
        except ImportError:  # optional here; a step that needs it reports it in its job
            pass
    _warm_caches()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the client passes on what is for a job
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    run_dir = folder.parent
    owner = read_owner(run_dir)
    folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(wire.folder_path(folder_fd, f"{name}.sock"))
    listener.listen(64)
    socket_id = _identity(folder / f"{name}.sock")
    os.write(ready_fd, b"ready\n")
    os.close(ready_fd)

    supervisors: set[int] = set()
    last_busy = time.monotonic()
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    while True:
        if selector.select(POLL_S):
            conn, _ = listener.accept()
            if not wire.peer_is_us(conn):
                conn.close()
                continue
            flush_std()
            pid = os.fork()
            if pid == 0:
                selector.close()
                listener.close()
                os.close(folder_fd)
                _supervise(conn)  # never returns
            conn.close()
            supervisors.add(pid)
        supervisors -= _reaped(supervisors)
        if supervisors:
            last_busy = time.monotonic()
        if _identity(folder / f"{name}.sock") != socket_id:
            break  # the run folder was released (or another worker took the name over)
        if owner is None or owner.alive() is False:
            break  # the run that owns the folder is gone
        if not supervisors and time.monotonic() - last_busy > IDLE_EXIT_S:
            break
    # Jobs still running keep their supervisors; they end on their own.
    if _identity(folder / f"{name}.sock") == socket_id:
        try:
            os.unlink(wire.folder_path(folder_fd, f"{name}.sock"))
        except OSError:
            pass
    return 0


def _warm_caches() -> None:
    """What every job would otherwise work out for itself, done once before the forks.

    * Pillow's image format plugins, imported on the first save.
    * Per-process caches that do not depend on the job: the platform string in every result
      (``platform.platform()`` reads the interpreter's binary for its C library's version,
      2 ms) and qmroct's version (installed metadata, 2 ms).
    * ``gc.freeze()``: the imported modules' objects move out of the garbage collector's
      reach. A forked job that runs a full collection would otherwise walk, and so copy
      (copy-on-write), the worker's whole heap: 67 ms instead of 5 ms in a fork of this
      worker (Python's documentation recommends it for a parent that forks workers).
    """
    if "PIL.Image" in sys.modules:
        sys.modules["PIL.Image"].preinit()
    import platform

    import qmroct

    platform.platform()
    try:
        qmroct.__version__  # noqa: B018 (read to fill its cache)
    except Exception:  # an uninstalled checkout: the job says so itself
        pass
    gc.freeze()


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _reaped(pids: set[int]) -> set[int]:
    done = set()
    for pid in pids:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                done.add(pid)
        except ChildProcessError:
            done.add(pid)
    return done


def _supervise(conn: socket.socket) -> None:
    """One job: fork the job process, pass on the client's signals, report how it ended."""
    status = 1
    try:
        received = wire.receive(conn)
        if received is None:
            os._exit(0)
        request, fds = received
        supervisor = os.getpid()
        pid = os.fork()
        if pid == 0:
            conn.close()
            _run_job(request, fds, supervisor)  # never returns
        for fd in fds:
            os.close(fd)
        wire.send(conn, {"started": pid})  # from here on the job is this worker's to finish
        returncode, cpu_s = _watch(conn, pid)
        own = os.times()
        wire.send(conn, {"returncode": returncode, "cpu_s": cpu_s + own.user + own.system})
        status = 0
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(status)


def _watch(conn: socket.socket, pid: int) -> tuple[int, float]:
    """Wait for the job process; a signal from the client goes to the job's group."""
    pidfd = os.pidfd_open(pid)
    selector = selectors.DefaultSelector()
    selector.register(conn, selectors.EVENT_READ, "client")
    selector.register(pidfd, selectors.EVENT_READ, "job")
    kill_at = None
    while True:
        timeout = None if kill_at is None else max(0.0, kill_at - time.monotonic())
        events = selector.select(timeout)
        if not events and kill_at is not None:
            _signal_group(pid, signal.SIGKILL)
            kill_at = None
        for key, _ in events:
            if key.data == "job":
                _, status, usage = os.wait4(pid, 0)
                os.close(pidfd)
                return os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime
            try:
                message = wire.receive(conn)
            except (OSError, EOFError):
                message = None
            if message is None:  # the client is gone (killed): end its job too
                selector.unregister(conn)
                _signal_group(pid, signal.SIGTERM)
                kill_at = time.monotonic() + TERM_GRACE_S
            else:
                _signal_group(pid, int(message[0]["signal"]))


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass


def _run_job(request: dict, fds: list[int], supervisor: int) -> None:
    """The job process: become the job (its folder, environment, streams), run the step."""
    returncode = 1
    try:
        os.setsid()  # its own group, which the supervisor signals
        kill_when_parent_dies(supervisor)
        for target, fd in zip((0, 1, 2), fds, strict=True):  # the client sends all three
            os.dup2(fd, target)
            os.close(fd)
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.chdir(request["cwd"])
        os.umask(request["umask"])
        os.environ.clear()
        os.environ.update(request["env"])
        tempfile.tempdir = None  # TMPDIR may differ from the worker's
        sys.path[:] = request["path"]
        sys.argv[:] = request["argv"]
        if "job" in request:  # client.run_step: the job object itself
            job = pickle.loads(request["job"])
        else:  # a job's command line, read here rather than in the lean entry process
            try:
                _target, job = parse(request["job_argv"])
            except JobArgumentError as err:
                print(f"qmroct: {err}", file=sys.stderr)
                returncode = 2
                return
        module, function = request["target"].split(":")
        getattr(importlib.import_module(module), function)(job)
        returncode = 0
    except SystemExit as exc:
        returncode = exit_status(exc)
    except KeyboardInterrupt:
        traceback.print_exc()
        returncode = -signal.SIGINT  # as Python ends on an uncaught Ctrl-C: by the signal
    except BaseException:
        traceback.print_exc()
    finally:
        # what a normal exit does that matters, not the interpreter's teardown; never
        # returns into the supervisor's code this process was forked from
        try:
            end_process(returncode)
        finally:
            os._exit(1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
