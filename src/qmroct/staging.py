"""Staging a session's scans once, for all the algorithms that need them.

Every algorithm job of a session needs the same normalised volumes. Reading
and decoding them per algorithm would multiply archive traffic; making them a
Snakemake ``temp()`` output would make one algorithm's version bump recompute
every algorithm (the temp file has to be rebuilt, and everything downstream of
a rebuilt file reruns). So staging is a cache outside Snakemake's view:

* the first algorithm job of a session fetches the files from the archive,
  decodes each scan into ``volume.npy`` + ``meta.json`` and records per-scan
  failures; the others wait on a lock and reuse it;
* the session's summary job (the last job of the session's group) releases
  it, and the workflow's onsuccess/onerror handlers delete the run's scratch
  folder (qmroct.scratch: only folders this run owns).

The cache is keyed by the session's fingerprint, so a changed session is
never served stale volumes. ``scratch_root`` is the run's own folder
(``config["scratch_dir"]`` inside jobs, set by rules/common.smk).

Nothing from the archive is trusted here: a session or scan discovery marked
with a ``problem`` is not fetched (every scan records the reason), every
staged path is checked to stay inside the staging folder (qmroct.paths), and
scan readers are bounded by ``limits/scan_decoded_mb``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from qmroct.archive.base import Archive, Session
from qmroct.paths import UnsafePath, confined
from qmroct.scanio import ScanError, Volume, read_scan
from qmroct.scratch import claim

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StagedScan:
    scan_id: str
    volume_path: Path | None
    meta: dict
    error: str | None = None  # why the scan could not be read (then volume_path is None)


def stage_dir(scratch_root: Path, session: Session) -> Path:
    # path_key, never the label: a label is archive content (qmroct.paths)
    fingerprint = session.fingerprint.split(":")[-1][:16]
    return Path(scratch_root) / session.project / session.path_key / fingerprint


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def stage_session(scratch_root: Path, session: Session, archive: Archive) -> dict[str, StagedScan]:
    """Fetch and decode the session's scans unless already staged; return them per scan."""
    claim(scratch_root)  # a run folder with its owner's marker (qmroct.scratch)
    directory = confined(scratch_root, stage_dir(scratch_root, session))
    index_path = directory / "staged.json"
    with _locked(directory.parent / f".{directory.name}.lock"):
        if not index_path.is_file():
            _stage(directory, session, archive)
        index = json.loads(index_path.read_text())
    return {
        scan_id: StagedScan(
            scan_id=scan_id,
            volume_path=directory / entry["volume"] if entry.get("volume") else None,
            meta=entry.get("meta", {}),
            error=entry.get("error"),
        )
        for scan_id, entry in index.items()
    }


def _stage(directory: Path, session: Session, archive: Archive) -> None:
    started = time.monotonic()
    shutil.rmtree(directory, ignore_errors=True)
    raw = directory / "raw"
    raw.mkdir(parents=True)
    index: dict[str, dict] = {}
    for scan in session.scans:  # what discovery refused is never fetched
        if session.problem or scan.problem:
            index[scan.id] = {"error": session.problem or scan.problem}
    fetchable = tuple(s for s in session.scans if s.id not in index)
    # archive errors propagate: the job fails, naming the session
    fetched = archive.fetch(replace(session, scans=fetchable), raw) if fetchable else {}
    for scan in fetchable:
        try:
            paths = [Path(p) for p in fetched.get(scan.id, []) if confined(raw, p)]
            volume = _read_scan_files(scan.id, paths)
            target = confined(directory, directory / scan.id)
        except UnsafePath as exc:
            index[scan.id] = {"error": f"unsafe path: {exc}"}
            continue
        except ScanError as exc:
            index[scan.id] = {
                "error": exc.reason if not paths else str(exc).replace(str(raw) + "/", "")
            }
            continue
        volume.save(target, scan.id)
        index[scan.id] = {"volume": f"{target.name}/volume.npy", "meta": volume.meta(scan.id)}
    shutil.rmtree(raw)  # the raw files are not needed once decoded
    (directory / "staged.json").write_text(json.dumps(index, indent=1))
    readable = sum("volume" in entry for entry in index.values())
    log.info(
        "staged session %s: %d of %d scans readable (%.1f s)",
        session.key,
        readable,
        len(index),
        time.monotonic() - started,
    )


def _read_scan_files(scan_id: str, paths: list[Path]) -> Volume:
    if not paths:
        raise ScanError(f"scan {scan_id}", "scan has no files")
    if len(paths) == 1:
        return read_scan(paths[0])
    volumes, errors = [], []
    for path in paths:
        try:
            volumes.append(read_scan(path))
        except ScanError as exc:
            errors.append(exc)
    if len(volumes) == 1:
        return volumes[0]
    if not volumes:
        raise errors[0]
    raise ScanError(f"scan {scan_id}", f"scan holds {len(volumes)} volumes; expected one")


def release_session(scratch_root: Path, session: Session) -> None:
    """Delete the session's staged volumes (all fingerprints) and its locks."""
    base = Path(scratch_root) / session.project / session.path_key
    if base.is_symlink():
        base.unlink()
    else:
        shutil.rmtree(confined(scratch_root, base), ignore_errors=True)
    _prune_empty(base.parent, stop=Path(scratch_root))


def _prune_empty(path: Path, stop: Path) -> None:
    """Remove empty folders from ``path`` up to (not including) ``stop``. Sessions of one
    project are released concurrently: rmdir itself is the test (it refuses a folder that
    is not empty), and a folder another job removed first is just as good."""
    while path != stop:
        try:
            path.rmdir()
        except FileNotFoundError:
            pass
        except OSError:  # not empty (another session's staging), or not ours to remove
            return
        path = path.parent
