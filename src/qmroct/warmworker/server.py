"""The warm worker: imports once, then forks a process for every job and reports its end.

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
from qmroct.warmworker.job import read_command

# What the per-session steps and the built-in algorithms import, loaded once here. Only
# that: every module here is paid for by every worker start (once per submission on a VM)
# and makes every fork of the worker dearer (page tables). scipy.signal, which no built-in
# algorithm uses, was 0.44 s of a worker's 0.9 s start; an algorithm that needs more imports
# it in its own child, as any algorithm does with its own packages.
PRELOAD = (
    "numpy",
    "scipy.ndimage",
    "jsonschema",
    "pydicom",
    "PIL.Image",
    "PIL.ImageDraw",
    "PIL.PngImagePlugin",
    "snakemake",  # its version goes into every result's provenance
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
# How long a client that connected gets to send its request (it sends it at once).
REQUEST_TIMEOUT_S = 10.0
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

    jobs = _Jobs()
    jobs.selector.register(listener, selectors.EVENT_READ, "listener")
    last_busy = time.monotonic()
    accepting = True
    while accepting or jobs.running:
        for key, _ in jobs.selector.select(jobs.timeout(POLL_S)):
            if key.data == "listener":
                conn, _ = listener.accept()
                try:
                    jobs.start(conn, closing_in_job=(listener, folder_fd))  # ours, not the job's
                except Exception:  # no fork, no pidfd (limits): that job fails, not the others
                    traceback.print_exc()
                    conn.close()
            else:
                jobs.event(*key.data)
        jobs.kill_overdue()
        if jobs.running:
            last_busy = time.monotonic()
        if not accepting:
            continue
        if (
            _identity(folder / f"{name}.sock") != socket_id  # the run folder was released
            or owner is None
            or owner.alive() is False  # the run that owns the folder is gone
            or (not jobs.running and time.monotonic() - last_busy > IDLE_EXIT_S)
        ):
            # No new jobs; those running are seen to their end (the worker reports them).
            accepting = False
            jobs.selector.unregister(listener)
            listener.close()
            if _identity(folder / f"{name}.sock") == socket_id:
                try:
                    os.unlink(wire.folder_path(folder_fd, f"{name}.sock"))
                except OSError:
                    pass
    return 0


class _Jobs:
    """The worker's running jobs: for each, its job process (forked from the worker), the
    client's connection and a pidfd, watched in one selector. The worker is the job
    process's parent and reports its end; a signal from the client goes to the job's
    process group, and a client that is gone (SIGKILL) has its job ended."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.running: dict[int, tuple[socket.socket, int]] = {}  # pid -> (conn, pidfd)
        self.kill_at: dict[int, float] = {}  # pid -> when SIGTERM turns into SIGKILL

    def start(self, conn: socket.socket, closing_in_job: tuple) -> None:
        """Read the client's request and fork its job process."""
        if not wire.peer_is_us(conn):
            conn.close()
            return
        try:
            conn.settimeout(REQUEST_TIMEOUT_S)  # the client sends it as soon as it connects
            received = wire.receive(conn)
            conn.settimeout(None)
        except (OSError, EOFError):
            received = None
        if received is None:  # a client that gave up (or a probe)
            conn.close()
            return
        request, fds = received
        flush_std()
        worker = os.getpid()
        pid = os.fork()
        if pid == 0:
            # none of the worker's sockets, pidfds or selector in the job
            self.selector.close()
            for other_conn, pidfd in self.running.values():
                other_conn.close()
                os.close(pidfd)
            listener, folder_fd = closing_in_job
            listener.close()
            os.close(folder_fd)
            conn.close()
            _run_job(request, fds, worker)  # never returns
        for fd in fds:
            os.close(fd)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:  # a job the worker cannot watch must not run unwatched
            _signal_group(pid, signal.SIGKILL)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise
        self.running[pid] = (conn, pidfd)
        self.selector.register(conn, selectors.EVENT_READ, ("client", pid))
        self.selector.register(pidfd, selectors.EVENT_READ, ("job", pid))
        try:
            wire.send(conn, {"started": pid})  # from here on the job is this worker's to finish
        except OSError:
            self._client_gone(pid)

    def event(self, what: str, pid: int) -> None:
        if pid not in self.running:
            return
        conn, pidfd = self.running[pid]
        if what == "job":
            _, status, usage = os.wait4(pid, 0)
            self._forget(pid)
            try:
                wire.send(
                    conn,
                    {
                        "returncode": os.waitstatus_to_exitcode(status),
                        "cpu_s": usage.ru_utime + usage.ru_stime,
                    },
                )
            except OSError:
                pass
            conn.close()
            return
        try:
            message = wire.receive(conn)
        except (OSError, EOFError):
            message = None
        if message is None:
            self._client_gone(pid)
        else:
            _signal_group(pid, int(message[0]["signal"]))

    def _client_gone(self, pid: int) -> None:
        """The client was killed: end its job too (SIGTERM, then SIGKILL after a grace)."""
        conn, _ = self.running[pid]
        if pid not in self.kill_at:
            self.selector.unregister(conn)
            _signal_group(pid, signal.SIGTERM)
            self.kill_at[pid] = time.monotonic() + TERM_GRACE_S

    def kill_overdue(self) -> None:
        now = time.monotonic()
        for pid, when in list(self.kill_at.items()):
            if when <= now:
                _signal_group(pid, signal.SIGKILL)
                del self.kill_at[pid]

    def timeout(self, poll_s: float) -> float:
        if not self.kill_at:
            return poll_s
        return max(0.0, min(poll_s, min(self.kill_at.values()) - time.monotonic()))

    def _forget(self, pid: int) -> None:
        conn, pidfd = self.running.pop(pid)
        if pid not in self.kill_at:
            self.selector.unregister(conn)
        self.kill_at.pop(pid, None)
        self.selector.unregister(pidfd)
        os.close(pidfd)


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


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass


def _run_job(request: dict, fds: list[int], worker: int) -> None:
    """The job process: become the job (its folder, environment, streams), run the step."""
    returncode = 1
    try:
        os.setsid()  # its own group, which the worker signals
        kill_when_parent_dies(worker)
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
        if "job" in request:  # client.run_step: the step and the job object itself
            target, job = request["target"], pickle.loads(request["job"])
        else:  # a job's command line, read here rather than in the lean entry process
            target, job = read_command(request["job_argv"])
        module, function = target.split(":")
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
        # returns into the worker's code this process was forked from
        try:
            end_process(returncode)
        finally:
            os._exit(1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
