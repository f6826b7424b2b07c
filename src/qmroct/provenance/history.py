"""Old algorithm versions stay runnable: a config pin served from git history.

A multi-year study keeps one algorithm version for all its sessions, including those
uploaded after the algorithm's folder moved on. ``algorithms: {noise: {version: "1.0.0"}}``
with a manifest that now says 1.1.0 is served from the newest commit whose
``algorithm.yaml`` said 1.0.0: the folder as of that commit (and the shared code and data
it declared then) is materialised read-only under ``<cache_dir>/algorithm-history/``,
loaded like any algorithm and checksummed the same way, so its identity is stable from
run to run. The materialised folder is a job input like any algorithm code, so it travels
to remote workers, where no git history is needed to find it again.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import yaml

from qmroct.algorithms.manifest import MANIFEST, SHARED_DIR

HISTORY_DIR = "algorithm-history"


class PinError(ValueError):
    """A pinned version that cannot be served; the message names what exists."""


def _git(repo: Path, *args: str) -> bytes:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, timeout=120)
    if proc.returncode != 0:
        raise PinError(proc.stderr.decode(errors="replace").strip() or f"git {args[0]} failed")
    return proc.stdout


def _repo_and_path(folder: Path) -> tuple[Path, str]:
    try:
        top = Path(_git(folder, "rev-parse", "--show-toplevel").decode().strip())
    except (OSError, PinError) as exc:
        raise PinError(f"{folder} is not in a git checkout ({exc})") from None
    return top, folder.resolve().relative_to(top.resolve()).as_posix()


def versions_in_history(folder: Path) -> dict[str, list[str]]:
    """version -> commits (newest first) whose ``algorithm.yaml`` in ``folder`` said it."""
    repo, rel = _repo_and_path(folder)
    versions: dict[str, list[str]] = {}
    for commit in _git(repo, "log", "--format=%H", "--", f"{rel}/{MANIFEST}").decode().split():
        try:
            doc = yaml.safe_load(_git(repo, "show", f"{commit}:{rel}/{MANIFEST}"))
        except (PinError, yaml.YAMLError):
            continue  # deleted or broken in that commit
        if isinstance(doc, dict) and doc.get("version") is not None:
            versions.setdefault(str(doc["version"]), []).append(commit)
    return versions


def _materialise(repo: Path, rel: str, commit: str, target: Path) -> None:
    """The algorithm folder at ``commit`` (plus the shared files it declared then) into
    ``target/<name>`` and ``target/_shared``, read-only, all or nothing."""
    name = rel.rsplit("/", 1)[-1]
    parent = rel.rsplit("/", 1)[0] if "/" in rel else ""
    doc = yaml.safe_load(_git(repo, "show", f"{commit}:{rel}/{MANIFEST}"))
    wanted = [
        p
        for p in _git(repo, "ls-tree", "-r", "--name-only", commit, "--", rel).decode().splitlines()
    ]
    shared_prefix = f"{parent}/{SHARED_DIR}" if parent else SHARED_DIR
    wanted += [f"{shared_prefix}/{s}" for s in doc.get("shared") or []]
    for data in doc.get("data") or []:
        resolved = os.path.normpath(f"{rel}/{data}")
        if resolved.startswith(shared_prefix + "/"):
            wanted.append(resolved)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for path in wanted:
            inside = path[len(parent) + 1 :] if parent else path
            dest = tmp / inside
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(_git(repo, "show", f"{commit}:{path}"))
        (tmp / name).mkdir(parents=True, exist_ok=True)
        for dirpath, _dirnames, filenames in os.walk(tmp, topdown=False):
            for fn in filenames:
                os.chmod(Path(dirpath) / fn, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
            os.chmod(
                dirpath,
                stat.S_IRUSR
                | stat.S_IXUSR
                | stat.S_IRGRP
                | stat.S_IXGRP
                | stat.S_IROTH
                | stat.S_IXOTH,
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)  # another process may have won the race: same content
    except OSError:
        if not (target / name / MANIFEST).is_file():
            raise
    finally:
        if tmp.exists():
            for dirpath, _, _ in os.walk(tmp):
                os.chmod(dirpath, stat.S_IRWXU)
            shutil.rmtree(tmp, ignore_errors=True)


def pinned_folder(current: Path, pin: str, cache_dir: Path) -> Path:
    """The folder of version ``pin`` of the algorithm whose current folder is ``current``."""
    from qmroct.assessment import version_token

    name = current.name
    prefix = f"{name}-{version_token(pin)}-"
    base = Path(cache_dir) / HISTORY_DIR
    try:
        history = versions_in_history(current)
    except PinError as exc:
        # No git here (a remote worker): the folder materialised on the head came with the job.
        found = sorted(base.glob(f"{prefix}*/{name}/{MANIFEST}"), key=lambda p: p.stat().st_mtime)
        if found:
            return found[-1].parent
        raise PinError(
            f"version {pin!r} is not in {current} and its git history cannot be read: {exc}"
        ) from None
    commits = history.get(pin)
    if not commits:
        known = ", ".join(sorted(history)) or "none"
        raise PinError(
            f"version {pin!r} is in no commit of {current}/{MANIFEST} "
            f"(versions in its history: {known})"
        )
    target = base / f"{prefix}{commits[0][:12]}"
    if not (target / name / MANIFEST).is_file():
        repo, rel = _repo_and_path(current)
        try:
            _materialise(repo, rel, commits[0], target)
        except (OSError, PinError, yaml.YAMLError) as exc:
            raise PinError(
                f"version {pin!r} is in commit(s) {', '.join(c[:12] for c in commits)} but "
                f"could not be restored from {commits[0][:12]}: {exc}"
            ) from None
    return target / name
