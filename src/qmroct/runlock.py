"""One run at a time per workflow folder: a lock that outlives a crashed holder.

``qmroct watch`` must never start a workflow run while another watcher (or its run)
is busy in the same folder. The lock is a small JSON file naming the holder by PID
*and* process start time (``/proc/<pid>/stat`` field 22, plus the kernel's boot id):
a PID alone is not enough, because after a crash the PID may be reused by an
unrelated process and the lock would then never be released. The lock also names
the holder's current Snakemake run, so a watcher that was killed while its run went
on (an orphaned ``snakemake``) still keeps a second watcher out until that run ends.

A lock is *stale* when no process it names is alive with the recorded start time;
the next watcher takes it over. Checking and taking over happen under a short
``flock`` on a guard file, so two watchers that find the same stale lock cannot
both take it (flock is released by the kernel when a process dies, so the guard
itself can never be left held).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator


@dataclass(frozen=True)
class ProcessId:
    """A process as it can be recognised later: PID, start time and boot."""

    pid: int
    start_ticks: int | None  # clock ticks after boot (/proc/<pid>/stat field 22); None if unknown
    boot_id: str | None

    @classmethod
    def of(cls, pid: int) -> "ProcessId":
        return cls(pid, process_start_ticks(pid), boot_id())

    def alive(self) -> bool:
        """Is this very process still running (not merely some process with its PID)?"""
        if self.boot_id and boot_id() and self.boot_id != boot_id():
            return False  # the machine rebooted since: every recorded process is gone
        if not pid_exists(self.pid):
            return False
        if self.start_ticks is None:  # recorded where /proc was missing: the PID is all we have
            return True
        return process_start_ticks(self.pid) == self.start_ticks


def pid_exists(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    # A zombie (dead, not yet reaped by its parent) is not running anything.
    state = _proc_stat_fields(pid)
    return not (state and state[0] == "Z")


def _proc_stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (field 3 onwards), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may itself contain spaces or ')'.
    return text[text.rindex(")") + 2 :].split()


def process_start_ticks(pid: int) -> int | None:
    fields = _proc_stat_fields(pid)
    if not fields:
        return None
    return int(fields[19])  # field 22 of the full line: starttime


def boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


class LockBusy(RuntimeError):
    """Another live watcher (or the run it started) holds the lock."""

    def __init__(self, path: Path, holder: dict[str, Any]):
        self.path = path
        self.holder = holder
        who = f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"
        run = holder.get("run")
        if run:
            who += f", its run pid {run.get('pid')}"
        super().__init__(f"{path} is held by {who}")


@dataclass
class LockInfo:
    pid: int
    start_ticks: int | None
    boot_id: str | None
    host: str
    since: str
    purpose: str = "watch"
    run: dict[str, Any] | None = field(
        default=None
    )  # {"pid", "start_ticks", "run_id"} while a run is on

    def processes(self) -> list[ProcessId]:
        procs = [ProcessId(self.pid, self.start_ticks, self.boot_id)]
        if self.run:
            procs.append(ProcessId(int(self.run["pid"]), self.run.get("start_ticks"), self.boot_id))
        return procs


def read_lock(path: Path) -> LockInfo | None:
    """The lock's content, or None if there is no (readable) lock."""
    try:
        data = json.loads(Path(path).read_text())
        return LockInfo(**data)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        # A torn or foreign file: treat as a lock of nobody (so stale), never crash on it.
        # (Ours are replaced atomically, so they are never torn.)
        return LockInfo(
            pid=-1, start_ticks=None, boot_id=None, host=socket.gethostname(), since="?"
        )


def lock_alive(info: LockInfo | None) -> bool:
    if info is None:
        return False
    if info.host != socket.gethostname():
        return True  # a holder on another machine (shared disk) cannot be checked: assume alive
    return any(p.alive() for p in info.processes())


class RunLock:
    """The folder's run lock. ``acquire()`` raises LockBusy or takes a free/stale lock."""

    def __init__(self, path: Path | str, purpose: str = "watch"):
        self.path = Path(path)
        self.guard = self.path.with_name(self.path.name + ".guard")
        self.purpose = purpose
        self.info: LockInfo | None = None
        self.took_over: LockInfo | None = None  # the stale lock this one replaced, if any

    @contextlib.contextmanager
    def _guarded(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.guard, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def acquire(self) -> "RunLock":
        me = ProcessId.of(os.getpid())
        with self._guarded():
            current = read_lock(self.path)
            if current is not None and current.pid != me.pid:
                if lock_alive(current):
                    raise LockBusy(self.path, asdict(current))
                self.took_over = current
            self.info = LockInfo(
                pid=me.pid,
                start_ticks=me.start_ticks,
                boot_id=me.boot_id,
                host=socket.gethostname(),
                since=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                purpose=self.purpose,
            )
            self._write()
        return self

    def set_run(self, pid: int | None, run_id: str | None = None) -> None:
        """Record (or clear) the Snakemake run this holder started, so that it keeps the
        lock alive even if this process dies first."""
        if self.info is None:
            raise RuntimeError("set_run on a lock that is not held")
        with self._guarded():
            if pid is None:
                self.info.run = None
            else:
                self.info.run = {
                    "pid": pid,
                    "start_ticks": process_start_ticks(pid),
                    "run_id": run_id,
                }
            self._write()

    def release(self) -> None:
        if self.info is None:
            return
        with self._guarded():
            current = read_lock(self.path)
            if current is not None and current.pid == self.info.pid:
                self.path.unlink(missing_ok=True)
        self.info = None

    def _write(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(self.info), indent=1))
        os.replace(tmp, self.path)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
