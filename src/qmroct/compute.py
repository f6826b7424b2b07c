"""One job: one algorithm over every scan of one session.

The result document records the KQIs per scan, or per scan why there are
none, plus provenance: which code ran (name, version, checksum), on which
inputs (file checksums), where and when. A scan that cannot be read and an
algorithm that crashes are recorded with their reason and the job succeeds,
so one bad scan never hides the others and the tables show every failure as
a row. Archive errors (unreachable, session gone mid-run) fail the job
instead: they are not facts about the scan, and the next run retries them.

Each algorithm call runs in a child process with a time limit (see
:mod:`qmroct.algorithms.child`), so a segfault, ``sys.exit`` or an endless loop
is one failed row too. What the algorithm printed goes to the job's log file
only (records marked :data:`LOG_FILE_ONLY`), capped: never to the console.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import platform
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import qmroct
from qmroct.algorithms.manifest import code_files
from qmroct.archive.base import Archive, Session

# write_json_atomic re-exported: qmroct.provenance still imports it from here
from qmroct.fileio import now_iso, write_json_atomic  # noqa: F401
from qmroct.provenance.identity import algorithm_environment, distributions_digest, git_state
from qmroct.staging import stage_session

RESULT_SCHEMA = "qmroct.kqi/1"
# ``extra`` of log records meant for the job's log file and not for the console
# (an algorithm's own output); the workflow's console handler drops them.
LOG_FILE_ONLY = {"file_only": True}
log = logging.getLogger("qmroct.compute")


def _snakemake_version() -> str:
    try:
        import snakemake

        return snakemake.__version__
    except Exception:  # provenance must never break a computation
        return "unknown"


def algorithm_identity(algo, params: dict[str, Any]) -> dict[str, Any]:
    """What makes a result what it is: used as Snakemake params, so a change reruns.

    ``pipeline_checksum`` covers qmroct's own code between the archive and the KQI file
    (qmroct.provenance.identity); package versions are recorded in the result instead.
    """
    from qmroct.provenance.identity import cached_pipeline_checksum

    return {
        "name": algo.name,
        "version": str(algo.version),
        "runtime": algo.runtime,
        "code_checksum": algo.code_checksum,
        "pipeline_checksum": cached_pipeline_checksum(algo.runtime),
        "params": params,
    }


def compute_session(
    session: Session,
    algo,
    params: dict[str, Any],
    archive: Archive,
    scratch_root: Path,
    extras_dir: Path,
    timeout: float | None = None,
    start_time: str | None = None,
    output_keep: int | None = None,
) -> dict[str, Any]:
    """Run ``algo`` on every scan of ``session``; return the result document.

    ``timeout``: seconds per call (default: the algorithm's own limit);
    ``output_keep``: bytes of its output kept at the head and at the tail.
    """
    from qmroct.algorithms import AlgorithmFailure

    start = start_time or now_iso()
    t0 = time.monotonic()
    staged = stage_session(scratch_root, session, archive)
    extras_dir.mkdir(parents=True, exist_ok=True)
    files_by_scan = {
        s.id: [{"name": f.name, "size": f.size, "checksum": f.checksum} for f in s.files]
        for s in session.scans
    }
    scans = []
    for scan in session.scans:
        entry: dict[str, Any] = {
            "scan": scan.id,
            "type": scan.type,
            "files": files_by_scan[scan.id],
            "kqis": {},
            "error": None,
        }
        item = staged.get(scan.id)
        if item is None or item.error:
            entry.update(
                status="failed", error=f"scan not readable: {item.error if item else 'not staged'}"
            )
            scans.append(entry)
            continue
        workdir = Path(tempfile.mkdtemp(prefix=f"{algo.name}-{scan.id}-", dir=scratch_root))
        keep = {} if output_keep is None else {"output_keep": output_keep}
        try:
            # the built-in algorithms' ILM/BM segmentation, computed once per scan for the
            # session's algorithm jobs (algorithms/_shared/octseg.py), next to the staged volume
            with _segmentation_shared_in(Path(item.volume_path).parent):
                output = algo.run(
                    item.volume_path, item.meta, params, workdir, timeout=timeout, **keep
                )
            _log_output(algo.name, scan.id, output.get("output", ""))
            entry["kqis"] = output["kqis"]
            entry["extra_files"] = _keep_extras(
                output.get("files", []), workdir, extras_dir / scan.id
            )
            entry["status"] = "ok"
        except AlgorithmFailure as exc:
            _log_output(algo.name, scan.id, exc.output)
            entry.update(status="failed", error=f"algorithm failure: {exc}")
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        scans.append(entry)

    n_ok = sum(s["status"] == "ok" for s in scans)
    if not scans:
        # a problem session (a label XNAT would refuse, say) may list no scans: its
        # reason is what the user needs, not the empty list it caused
        status, error = "failed", session.problem or "session has no scans"
    else:
        status = "ok" if n_ok == len(scans) else ("partial" if n_ok else "failed")
        error = None if n_ok == len(scans) else f"{len(scans) - n_ok} of {len(scans)} scans failed"
    return {
        "schema": RESULT_SCHEMA,
        "session": {
            "project": session.project,
            "subject": session.subject,
            "label": session.label,
            "id": session.id,
            "fingerprint": session.fingerprint,
        },
        "algorithm": algorithm_identity(algo, params),
        "status": status,
        "error": error,
        "scans": scans,
        "provenance": {
            "host": socket.gethostname(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "qmroct_version": qmroct.__version__,
            "snakemake_version": _snakemake_version(),
            # Recorded, not an identity: drift shows in the report, freeze refuses a mix.
            **_environment_record(algo, scratch_root),
            "start_time": start,
            "end_time": now_iso(),
            "elapsed_s": round(time.monotonic() - t0, 3),
            "pid": os.getpid(),
        },
    }


def _environment_record(algo, scratch_root: Path) -> dict[str, Any]:
    """The ``environment`` and ``git`` of an algorithm's results, worked out once per run
    folder and algorithm rather than once per job (parsing the algorithm's imports, reading
    package metadata, asking Octave and git cost ~0.06 s, as much as a cheap algorithm).

    Kept in the run folder under a key of everything the record depends on: the
    algorithm's code, the interpreter and its path, and the installed distributions. A
    commit made while a run is under way shows from the next run on.
    """
    key = hashlib.sha256(
        json.dumps(
            [
                algo.name,
                algo.code_checksum,
                algo.runtime,
                str(algo.path),
                str(algo.entry),
                str(algo.mcr_root or os.environ.get("QMROCT_MCR_ROOT") or ""),
                sys.executable,
                sys.path,
                distributions_digest(),
            ]
        ).encode()
    ).hexdigest()[:32]
    cache = Path(scratch_root) / ".provenance" / f"{key}.json"
    try:
        return json.loads(cache.read_text())
    except (OSError, ValueError):
        pass
    record = {
        "environment": algorithm_environment(
            algo, [p for _, p in code_files(algo.path, algo.shared)]
        ),
        "git": git_state(algo.path),
    }
    write_json_atomic(cache, record)
    return record


# Read by algorithms/_shared/octseg.py in the algorithm's child (which inherits this
# process's environment): where the scan's segmentation is shared between processes.
SEGMENT_DIR_ENV = "QMROCT_SEGMENT_DIR"


@contextmanager
def _segmentation_shared_in(folder: Path):
    previous = os.environ.get(SEGMENT_DIR_ENV)
    os.environ[SEGMENT_DIR_ENV] = str(folder)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(SEGMENT_DIR_ENV, None)
        else:
            os.environ[SEGMENT_DIR_ENV] = previous


def _log_output(name: str, scan_id: str, text: str) -> None:
    if text:
        log.info(
            "output of %s on scan %s:\n%s\n--- end of the output of %s on scan %s ---",
            name,
            scan_id,
            text.rstrip("\n"),
            name,
            scan_id,
            extra=LOG_FILE_ONLY,
        )


def _keep_extras(files: list[Path], workdir: Path, target: Path) -> list[str]:
    """Move an algorithm's extra outputs (segmentation lines, ...) next to the result."""
    kept = []
    for path in files:
        path = Path(path)
        rel = path.relative_to(workdir) if path.is_relative_to(workdir) else Path(path.name)
        destination = target / rel
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), destination)
        kept.append(str(Path(target.name) / rel))
    return kept
