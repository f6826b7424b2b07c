"""Scratch space: one folder per run, owned, and the only thing cleanup ever deletes.

``scratch_dir`` (config) is a parent folder; every process that parses the
Snakefile (the head, or a remote job's snakemake) works in its own
``<scratch_dir>/run-<pid>-<random>/`` holding a marker file naming its owner
(host, pid and the pid's start time, so a reused pid is not mistaken for the
owner). At the end of a run the head deletes its own run folder, then the run
folders of this host whose owner process is gone (a run killed with -9), and
nothing else: no folder without a marker, no folder of a live run (two
``snakemake`` runs on different targets may share a working directory), never
the parent itself unless a run created it and it is empty.

``check_scratch_dir`` is the configuration rule (enforced by check-config
and the Snakefile): scratch must not be the working directory or one of its
ancestors, ``/``, the user's home or one of its ancestors, or inside or above
the archive.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

MARKER = ".qmroct-scratch.json"
ROOT_MARKER = ".qmroct-scratch-root"  # in scratch_dir when a run created it (and may remove it)
RUN_PREFIX = "run-"


class ScratchError(ValueError):
    """A scratch folder that must not be used (or a run folder that is not ours)."""


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    started: str  # the process's start time (from /proc), "" where unknown

    @classmethod
    def current(cls, pid: int | None = None) -> "Owner":
        pid = os.getpid() if pid is None else pid
        return cls(socket.gethostname(), pid, _process_start(pid))

    def alive(self) -> bool | None:
        """True/False on this host; None for another host's process (cannot tell)."""
        if self.host != socket.gethostname():
            return None
        started = _process_start(self.pid)
        return bool(started) and started == self.started


def _process_start(pid: int) -> str:
    """The start time of ``pid`` in clock ticks since boot (field 22 of /proc/<pid>/stat)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # the command name (field 2) may hold spaces and parentheses: split after the last ")"
    fields = text.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else ""


def run_folder(scratch_root: Path | str) -> Path:
    """This process's run folder under the configured scratch folder (not yet created)."""
    return Path(scratch_root) / f"{RUN_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"


def claim(run_dir: Path | str, owner: Owner | None = None) -> Path:
    """Create ``run_dir`` (mode 0700) with its owner's marker, or accept it if it carries one.

    A run folder that exists without a marker (someone else's, or a link) is refused.
    """
    run_dir = Path(run_dir)
    if _is_run_folder(run_dir):
        return run_dir
    if not run_dir.parent.exists():
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        (run_dir.parent / ROOT_MARKER).touch()
    if run_dir.exists() or run_dir.is_symlink():
        # another claimer may have renamed its folder into place since the first look
        if _is_run_folder(run_dir):
            return run_dir
        raise ScratchError(f"{run_dir} exists and is not a qmroct run folder; not using it")
    # The jobs of one group claim the same folder at the same moment: the folder appears
    # with its marker already inside (a renamed temporary folder), never without it, so a
    # concurrent claimer never mistakes a half-made run folder for a foreign one.
    owner = owner or _owner_for(run_dir)
    tmp = run_dir.parent / f".{run_dir.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    tmp.mkdir(mode=0o700)
    (tmp / MARKER).write_text(json.dumps(asdict(owner)))
    try:
        os.rename(tmp, run_dir)
    except OSError:  # another claimer was first
        shutil.rmtree(tmp, ignore_errors=True)
        if not _is_run_folder(run_dir):
            raise ScratchError(
                f"{run_dir} exists and is not a qmroct run folder; not using it"
            ) from None
    return run_dir


def _is_run_folder(run_dir: Path) -> bool:
    """A real folder (not a link) carrying a run marker."""
    return not run_dir.is_symlink() and (run_dir / MARKER).is_file()


def _owner_for(run_dir: Path) -> Owner:
    """The process a run folder belongs to: the pid in its name when that process is
    alive here (the snakemake process that chose the name), else this process."""
    name = run_dir.name
    if name.startswith(RUN_PREFIX):
        pid_text = name[len(RUN_PREFIX) :].split("-", 1)[0]
        if pid_text.isdigit() and _process_start(int(pid_text)):
            return Owner.current(int(pid_text))
    return Owner.current()


def read_owner(run_dir: Path) -> Owner | None:
    """The owner recorded in a run folder's marker; None when it has no valid marker."""
    marker = run_dir / MARKER
    if run_dir.is_symlink() or not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text())
        return Owner(str(data["host"]), int(data["pid"]), str(data["started"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def release(scratch_root: Path | str, run_dir: Path | str) -> list[Path]:
    """End of run: delete our run folder and this host's run folders whose owner is gone.

    Returns the folders deleted. Folders without a valid marker, run folders of
    live processes and of other hosts are left alone; the parent is removed only
    when a run created it and it is empty.
    """
    scratch_root, run_dir = Path(scratch_root), Path(run_dir)
    removed = []
    me = Owner.current()
    owner = read_owner(run_dir)
    if owner is not None and owner.host == me.host and owner.pid == me.pid:
        shutil.rmtree(run_dir)
        removed.append(run_dir)
    removed += sweep_stale(scratch_root)
    # The parent goes only when a run created it and nothing else is left in it: a
    # scratch_dir that existed before (/tmp, a user's folder) stays, even when empty.
    root_marker = scratch_root / ROOT_MARKER
    try:
        if root_marker.is_file() and [p.name for p in scratch_root.iterdir()] == [ROOT_MARKER]:
            root_marker.unlink()
            scratch_root.rmdir()  # fails if another run just put its folder here: fine
    except OSError:
        pass
    return removed


def sweep_stale(scratch_root: Path | str) -> list[Path]:
    """Delete run folders of this host whose owner process no longer exists."""
    scratch_root = Path(scratch_root)
    removed = []
    if not scratch_root.is_dir() or scratch_root.is_symlink():
        return removed
    for child in sorted(scratch_root.iterdir()):
        if not child.name.startswith(RUN_PREFIX) or child.is_symlink() or not child.is_dir():
            continue
        owner = read_owner(child)
        if owner is not None and owner.alive() is False:
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    return removed


def check_scratch_dir(
    scratch_dir: str,
    workdir: Path | str,
    archive_path: Path | str | None = None,
    also_not: tuple[Path | str, ...] = (),
) -> Path:
    """The resolved scratch folder, or ScratchError saying why it must not be used.

    Relative paths are relative to ``workdir`` (where snakemake runs);
    ``also_not`` are more folders that scratch must not be nor contain (the
    workflow's own folder when snakemake runs elsewhere).
    """
    workdir = Path(workdir).resolve()
    scratch = (workdir / Path(scratch_dir).expanduser()).resolve()
    where = f"config.yaml: scratch_dir: {scratch_dir!r} ({scratch})"
    if scratch == Path(scratch.anchor):
        raise ScratchError(f"{where} is the file system root")
    home = Path.home().resolve()
    if scratch == home or home.is_relative_to(scratch):
        raise ScratchError(f"{where} is your home folder or contains it")
    for folder in (workdir, *(Path(p).resolve() for p in also_not)):
        if scratch == folder or folder.is_relative_to(scratch):
            raise ScratchError(
                f"{where} is the working directory or contains it; "
                "use a subfolder such as 'scratch'"
            )
    if archive_path is not None:
        archive = (workdir / Path(archive_path).expanduser()).resolve()
        if scratch == archive or scratch.is_relative_to(archive) or archive.is_relative_to(scratch):
            raise ScratchError(f"{where} is inside the archive ({archive}) or contains it")
    return scratch
