"""One algorithm call in a child process: crashes, time and output bounded.

Why a child for every runtime, Python included: an algorithm is code the
workflow does not control. Run inside the job's own process, a segfault,
``sys.exit(0)``, ``os._exit()`` or an endless loop takes the job down with it
(no result row, so no tables and no report for anyone). In a child each of
these is just an exit status or a timeout, which the runner turns into a
``failed`` row naming the cause.

* **Own process group.** The child starts a new session, so on a timeout the
  whole group (the child and anything it started) is killed with SIGKILL, and
  whatever the algorithm left running after it returned is ended too.
* **Output through a pipe, capped.** stdout and stderr share one pipe (in the
  order the algorithm wrote them, as a console would show them). The parent
  keeps the first and the last ``keep`` bytes and counts the rest: 80 MB of
  prints cost 128 KiB of memory and never reach the console.
* **Python is forked, not started.** :func:`run_forked` forks the job process,
  which has numpy and qmroct imported already: a few milliseconds per call
  instead of ~250 ms for ``python -m``. Forking a process in which other
  threads run is unsafe (a lock one of them holds stays locked forever in the
  child), so the runner falls back to :func:`run_command` then.
"""

from __future__ import annotations

import faulthandler
import io
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

CHUNK = 64 * 1024
# After the child has exited, how long its leftovers may keep the pipe open.
DRAIN_AFTER_EXIT_S = 5.0


@dataclass
class Outcome:
    """How a child ended: ``returncode`` as in :mod:`subprocess` (-N: killed by signal N)."""

    returncode: int
    timed_out: bool
    output: str
    output_bytes: int


class CappedOutput:
    """The first and the last ``keep`` bytes of a stream, and how many were dropped between."""

    def __init__(self, keep: int) -> None:
        self.keep = max(1, int(keep))
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        room = self.keep - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            if len(self.tail) > self.keep:
                del self.tail[: len(self.tail) - self.keep]

    @property
    def dropped(self) -> int:
        return self.total - len(self.head) - len(self.tail)

    def text(self) -> str:
        if not self.dropped:
            return bytes(self.head + self.tail).decode(errors="replace")
        note = (
            f"\n[... {self.dropped} bytes of output dropped; "
            f"the first and the last {self.keep} bytes are kept ...]\n"
        )
        return self.head.decode(errors="replace") + note + self.tail.decode(errors="replace")


def describe_exit(returncode: int) -> str:
    """``killed by SIGSEGV`` / ``exited with status 3``."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        if -returncode == signal.SIGKILL:
            return f"killed by {name} (out of memory, or killed from outside)"
        return f"killed by {name}"
    return f"exited with status {returncode}"


def run_forked(target: Callable[[], int], timeout: float, keep: int) -> Outcome:
    """Run ``target()`` in a forked child; its return value is the exit status.

    ``SystemExit`` raised in the child (``sys.exit(0)`` in an algorithm) ends
    the child with that status, as it would end a script.
    """
    read_fd, write_fd = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read_fd)
        _child(target, write_fd, parent)
    os.close(write_fd)

    def poll() -> int | None:
        got, status = os.waitpid(pid, os.WNOHANG)
        return os.waitstatus_to_exitcode(status) if got else None

    def wait() -> int:
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

    return _supervise(pid, poll, wait, read_fd, timeout, keep)


def run_command(
    cmd: list[str], cwd: Path, env: dict[str, str], timeout: float, keep: int
) -> Outcome:
    """Run a program (Octave, a compiled algorithm, a fresh Python) the same way.

    Raises OSError when the program cannot be started.
    """
    read_fd, write_fd = os.pipe()
    parent = os.getpid()
    # preexec_fn runs Python between fork and exec: safe only while no other thread runs.
    die_with_parent = (
        (lambda: kill_when_parent_dies(parent)) if threading.active_count() == 1 else None
    )
    try:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=write_fd,
            stderr=write_fd,
            env=env,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    except OSError:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    return _supervise(proc.pid, proc.poll, proc.wait, read_fd, timeout, keep)


def _child(target: Callable[[], int], write_fd: int, parent: int) -> None:
    code = 70  # EX_SOFTWARE: the wrapper itself failed
    try:
        os.setsid()
        kill_when_parent_dies(parent)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
            signal.signal(signum, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(write_fd, 1)
        os.dup2(write_fd, 2)
        os.close(null)
        os.close(write_fd)
        # Fresh text streams on the new fds: the inherited sys.stdout may be a
        # test runner's capture object, or hold the parent's unflushed text.
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True)
        sys.stderr = io.TextIOWrapper(
            io.FileIO(2, "w", closefd=False), line_buffering=True, errors="backslashreplace"
        )
        # A segfault then leaves the Python stack in the output (and still kills the child).
        faulthandler.enable(file=sys.stderr)
        code = target()
    except SystemExit as exc:
        code = exit_status(exc)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def exit_status(exc: SystemExit) -> int:
    """What the interpreter would exit with for this SystemExit."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    print(exc.code, file=sys.stderr)
    return 1


def kill_when_parent_dies(parent: int) -> None:
    """Linux: SIGKILL this process when its parent dies (a job killed by Snakemake must not
    leave its algorithm running; nor a warm worker's job process its supervisor). Kept
    across exec (not for set-user-ID programs)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(70)


def _kill_group(pid: int, reaped: bool = False) -> None:
    """SIGKILL the child's process group (its id is the child's pid, after setsid)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        # No such group: the child has not reached setsid yet, or all are gone. Only
        # an unreaped child may be signalled by pid (a reaped pid can be reused).
        if not reaped:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    except PermissionError:  # a member changed its credentials (setuid helper)
        pass


def _open_pidfd(pid: int) -> int | None:
    """A descriptor that becomes readable when ``pid`` exits (Linux >= 5.3), else None."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _supervise(
    pid: int,
    poll: Callable[[], int | None],
    wait: Callable[[], int],
    read_fd: int,
    timeout: float,
    keep: int,
) -> Outcome:
    """Read the child's output until it exits or the deadline passes; kill its group then."""
    output = CappedOutput(keep)
    selector = selectors.DefaultSelector()
    selector.register(read_fd, selectors.EVENT_READ, "output")
    pidfd = _open_pidfd(pid)
    if pidfd is not None:
        selector.register(pidfd, selectors.EVENT_READ, "exit")
    deadline = time.monotonic() + timeout
    returncode: int | None = None
    timed_out = False
    reading = True
    watching_exit = pidfd is not None
    try:
        while reading or returncode is None:
            if returncode is None:
                returncode = poll()
                if returncode is not None:
                    # The call is over; whatever it started is ended with it (and
                    # releases the pipe). Draining what is left gets a short deadline.
                    _kill_group(pid, reaped=True)
                    deadline = time.monotonic() + DRAIN_AFTER_EXIT_S
                    continue
            now = time.monotonic()
            if now >= deadline:
                if returncode is None:
                    timed_out = True
                    _kill_group(pid)
                    returncode = wait()
                    deadline = time.monotonic() + DRAIN_AFTER_EXIT_S
                    continue
                break  # exited, but something outside its group still holds the pipe
            wait_s = deadline - now
            if not watching_exit and returncode is None:
                wait_s = min(wait_s, 0.05)  # no exit notification (left): poll
            for key, _ in selector.select(wait_s):
                if key.data == "exit":
                    selector.unregister(key.fd)  # stays readable; poll() reaps next round
                    watching_exit = False
                    continue
                data = os.read(read_fd, CHUNK)
                if data:
                    output.feed(data)
                else:
                    selector.unregister(read_fd)
                    reading = False
    finally:
        if returncode is None:  # interrupted (KeyboardInterrupt, ...): leave nothing behind
            _kill_group(pid)
            wait()
        selector.close()
        os.close(read_fd)
        if pidfd is not None:
            os.close(pidfd)
    return Outcome(returncode, timed_out, output.text(), output.total)
