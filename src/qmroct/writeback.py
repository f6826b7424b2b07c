"""Writing each algorithm's assessment back into the archive, idempotently."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qmroct.archive.base import Archive, Session
from qmroct.assessment import Assessment


def assessment_files(result_path: Path, result: dict[str, Any]) -> dict[str, Path]:
    """The KQI JSON plus every extra output, as resource file name -> path."""
    files = {result_path.name: result_path}
    extras = result_path.with_suffix(".files")
    for scan in result.get("scans", []):
        for rel in scan.get("extra_files", []):
            path = extras / rel
            if path.is_file():
                files[rel.replace("/", "_")] = path
    return files


def write_back(session: Session, archive: Archive, result_paths: list[Path]) -> dict[str, Any]:
    """Write one assessment per algorithm; returns a receipt of what happened.

    A session discovery refused (``problem``: a label XNAT would not accept, a
    duplicate label) is not written anywhere; the receipt says why.
    """
    if session.problem:
        return {
            "session": session.key,
            "archive": archive.backend,
            "assessments": [],
            "skipped": session.problem,
        }
    outcomes = []
    for path in sorted(Path(p) for p in result_paths):
        result = json.loads(path.read_text())
        assessment = Assessment.from_result(
            result, files=assessment_files(path, result), versioned=archive.versioned_labels
        )
        outcome = archive.write_assessment(session, assessment)
        outcomes.append(
            {
                "label": outcome.label,
                "action": outcome.action,
                "digest": assessment.digest,
                "detail": outcome.detail,
            }
        )
    return {"session": session.key, "archive": archive.backend, "assessments": outcomes}
