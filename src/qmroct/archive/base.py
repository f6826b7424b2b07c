"""The archive interface: what the workflow needs from wherever sessions live.

Two backends implement it: ``directory`` (the embedded default, a folder laid
out like XNAT's hierarchy) and ``xnat`` (a real XNAT through its REST API).
The workflow only ever talks to this interface, so a backend knows nothing of
algorithms and the workflow knows nothing of HTTP or folders.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the document type only; archives never build assessments
    from qmroct.assessment import Assessment


_JAVA_INT_MAX = 2**31 - 1


def scan_order_key(scan_id: str) -> tuple[int, int, str]:
    """Sort key that puts a session's scans in the order XNAT shows them.

    XNAT sorts scans by ID with ``BaseXnatImagescandata.ImageScanComparator``
    (NrgXnat/xnat-web, src/main/java/org/nrg/xdat/om/base/BaseXnatImagescandata.java):
    the ID is split at its first ``-`` and both halves compared as integers, a half that
    is not one (empty, letters, beyond Java's int) counting as 0. So ``2`` < ``10`` <
    ``10-1`` < ``11``, and ``OCT`` (0) comes before ``1``. XNAT leaves ties (``OCT`` vs
    ``SLO``) in list order; here the ID itself breaks them, so the order never depends on
    how a backend listed the scans. Both backends use this key, so a session's manifest
    lists its scans the same way whichever archive it came from.
    """
    pre, _, post = str(scan_id).partition("-")
    return (_java_int_or_zero(pre), _java_int_or_zero(post), str(scan_id))


def _java_int_or_zero(text: str) -> int:
    # Integer.valueOf: optional sign, ASCII digits only, 32-bit; anything else is 0 in XNAT
    body = text[1:] if text[:1] in "+-" else text
    if not body or not (body.isascii() and body.isdigit()):
        return 0
    value = int(text)
    return value if -_JAVA_INT_MAX - 1 <= value <= _JAVA_INT_MAX else 0


class ArchiveError(RuntimeError):
    """A problem with the archive itself (unreachable, bad credentials, bad layout)."""


class SessionUnavailable(ArchiveError):
    """A session that was discovered can no longer be fetched (deleted, moved, corrupt)."""


@dataclass(frozen=True)
class FileEntry:
    """One file of a scan as the archive lists it."""

    name: str
    size: int
    checksum: str = ""  # "sha256:<hex>" or "md5:<hex>"; empty when the archive gives none
    uri: str = ""  # backend-specific locator (relative path, REST URI)


@dataclass(frozen=True)
class Scan:
    id: str
    type: str = ""
    series_description: str = ""
    quality: str = ""
    files: tuple[FileEntry, ...] = ()
    problem: str = ""  # why this scan must not be fetched (unsafe ID or file); "" when fine


@dataclass(frozen=True)
class Session:
    """One imaging session (XNAT: an experiment) with its scans and files."""

    project: str
    subject: str
    label: str
    id: str = ""  # archive accession ID (XNAT: XNAT_E00001); label when the backend has none
    session_type: str = "xnat:optSessionData"
    scans: tuple[Scan, ...] = ()
    # Why the session must not be fetched or written (a label XNAT would refuse, say):
    # it is still listed, and every algorithm records it as failed with this reason.
    problem: str = ""
    # The folder/file name of the session in results/ and scratch (qmroct.paths.path_segment
    # of the label, unless discovery chose otherwise); never the raw label.
    path_key: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not self.path_key:
            from qmroct.paths import path_segment

            object.__setattr__(self, "path_key", path_segment(self.label))

    @property
    def key(self) -> str:
        return f"{self.project}/{self.label}"

    @property
    def fingerprint(self) -> str:
        """Digest of everything that should trigger recomputation when it changes.

        Scan IDs, types and file names, sizes and checksums. Not the quality
        field: a person (or qmroct) marking a scan usable must not recompute it.
        """
        content = [
            [
                s.id,
                s.type,
                [[f.name, f.size, f.checksum] for f in sorted(s.files, key=lambda f: f.name)],
            ]
            for s in sorted(self.scans, key=lambda s: s.id)
        ]
        digest = hashlib.sha256(json.dumps(content, separators=(",", ":")).encode())
        return "sha256:" + digest.hexdigest()[:32]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["fingerprint"] = self.fingerprint
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Session":
        scans = tuple(
            Scan(
                id=s["id"],
                type=s.get("type", ""),
                series_description=s.get("series_description", ""),
                quality=s.get("quality", ""),
                files=tuple(FileEntry(**f) for f in s.get("files", ())),
                problem=s.get("problem", ""),
            )
            for s in data.get("scans", ())
        )
        return cls(
            project=data["project"],
            subject=data["subject"],
            label=data["label"],
            id=data.get("id", ""),
            session_type=data.get("session_type", "xnat:optSessionData"),
            scans=scans,
            problem=data.get("problem", ""),
            path_key=data.get("path_key", ""),
            extra=dict(data.get("extra", {})),
        )


@dataclass(frozen=True)
class WriteOutcome:
    """What a write-back did: 'created', 'updated' or 'unchanged'."""

    label: str
    action: str
    detail: str = ""


class Archive(ABC):
    """One archive backend. Instances are cheap to create and connect lazily."""

    backend: str = "abstract"
    # Assessor labels carry the algorithm version and older versions stay, marked superseded
    # (qmroct.assessment); a backend sets this once it keeps and marks them.
    versioned_labels: bool = False

    @abstractmethod
    def check(self) -> None:
        """Fail fast with a clear ArchiveError if the archive cannot be used (bad path,
        bad login)."""

    @abstractmethod
    def state_token(self, projects: list[str]) -> str:
        """A cheap token that changes whenever a session of ``projects`` may have changed.

        The workflow reruns discovery only when this token changes, so it must be
        much cheaper than discovery itself (a listing, not a checksum of every file).
        """

    @abstractmethod
    def discover(self, projects: list[str]) -> list[Session]:
        """Every session of the given projects, with scans, files and checksums."""

    @abstractmethod
    def fetch(self, session: Session, dest: Path) -> dict[str, list[Path]]:
        """Copy or download the session's scan files into ``dest``.

        Returns {scan_id: [local paths]}. Files are verified against the size
        and checksum from discovery; a session that vanished raises
        SessionUnavailable naming the session.
        """

    @abstractmethod
    def write_assessment(self, session: Session, assessment: Assessment) -> WriteOutcome:
        """Store one assessment (one algorithm's KQIs for the session) idempotently.

        Same label: replace in place, never duplicate. Same content digest as
        what is stored: do nothing and return action 'unchanged'.
        """

    def record_history(
        self,
        session: Session,
        algorithm: str,
        status: str,
        detail: str = "",
        launch_time: str | None = None,
    ) -> str | None:
        """Mark an algorithm run on the session's History (Queued/Running/Complete/Failed).

        The default records nothing here: the directory archive writes its history
        line together with the assessment.
        """
        return None

    def queued_run(self, session: Session, algorithm: str) -> str | None:
        """The launch time of the History row the head opened as Queued for this
        run, if any (see qmroct.history_queue); None where there is no History."""
        return None

    def set_scan_quality(
        self,
        session: Session,
        study: str,
        verdicts: dict[str, str],
        reasons: dict[str, str] | None = None,
    ) -> dict[str, str]:
        """Opt-in: write a study's verdicts into the scans' quality field (never over a
        person's)."""
        raise ArchiveError(
            f"the {self.backend} archive cannot set scan quality (use the xnat backend)"
        )

    def close(self) -> None:
        """Release connections; the default has nothing to release."""
        return None

    def __enter__(self) -> "Archive":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
