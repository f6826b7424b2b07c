"""The archive contract (qmroct.archive.base.Archive), one test per promise, run against
both backends: the directory archive and XNAT (the test server on loopback, filled from the
same demo archive through pyxnat). Backend-only behaviour stays in test_directory_archive.py
and tests/xnat/.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from qmroct.archive import ArchiveError, SessionUnavailable, open_archive
from qmroct.archive.base import scan_order_key
from qmroct.assessment import Assessment
from tests.support import kqi_result
from tests.xnat.conftest import password, xnat_env, xnat_server  # noqa: F401 (fixtures)
from tests.xnat.helpers import USER, file_bytes, seed_session

LABELS = ["SUBJ001_V1", "SUBJ001_V2", "SUBJ002_V1"]  # the small demo archive's sessions
ODD_SCANS = ("10", "2", "OCT", "1-2", "1", "SLO")  # in XNAT's order: OCT, SLO, 1, 1-2, 2, 10


class DirectoryBackend:
    def __init__(self, tmp_path: Path, demo: Path) -> None:
        self.root = tmp_path / "archive"
        shutil.copytree(demo / "archive", self.root)
        self.project = "DEMO"
        self.archive = open_archive(
            {"backend": "directory", "path": str(self.root)}, cache_dir=str(tmp_path / "cache")
        )

    def overwrite(self, session, scan_id: str, name: str, data: bytes) -> None:
        scan = next(s for s in session.scans if s.id == scan_id)
        entry = next(f for f in scan.files if f.name == name)
        (self.root / entry.uri).write_bytes(data)

    def add_session(self, subject: str, label: str, scans: tuple[str, ...]) -> None:
        base = self.root / self.project / "subjects" / subject / "experiments" / label
        base.mkdir(parents=True)
        (base / "session.json").write_text(
            json.dumps(
                {"label": label, "ID": label, "xsiType": "xnat:optSessionData", "subject": subject}
            )
        )
        for scan in scans:
            folder = base / "scans" / scan
            (folder / "resources" / "DICOM" / "files").mkdir(parents=True)
            (folder / "scan.json").write_text(json.dumps({"ID": scan, "type": "OCT"}))
            (folder / "resources" / "DICOM" / "files" / f"{scan}.dcm").write_bytes(
                file_bytes(self.project, label, scan, 0)
            )

    def delete_session_files(self, session) -> None:
        shutil.rmtree(self.archive.session_dir(session) / "scans")


class XnatBackend:
    def __init__(self, tmp_path: Path, demo: Path, server, password: str) -> None:  # noqa: F811
        import pyxnat

        from tests.xnat_server.load import upload_archive

        self.intf = pyxnat.Interface(server=server.url, user=USER, password=password)
        upload_archive(self.intf, demo / "archive")
        self.project = "DEMO"
        # credentials from the environment (xnat_env), as XNAT's Container Service gives them
        self.archive = open_archive(
            {"backend": "xnat", "server": server.url, "projects": [self.project], "backoff": 0.05},
            cache_dir=str(tmp_path / "cache"),
        )

    def _file(self, session, scan_id: str, name: str):
        return self.intf.select(
            f"/project/{self.project}/subject/{session.subject}/experiment/"
            f"{session.label}/scan/{scan_id}/resource/DICOM/file/{name}"
        )

    def overwrite(self, session, scan_id: str, name: str, data: bytes) -> None:
        self._file(session, scan_id, name).put(data, format="DICOM", overwrite=True)

    def add_session(self, subject: str, label: str, scans: tuple[str, ...]) -> None:
        seed_session(self.intf, self.project, subject, label, scans=scans, files_per_scan=1)

    def delete_session_files(self, session) -> None:
        for scan in session.scans:
            for entry in scan.files:
                self._file(session, scan.id, entry.name).delete()

    def close(self) -> None:
        self.intf._http.close()


@pytest.fixture(params=["directory", "xnat"])
def backend(request, tmp_path, small_demo):
    if request.param == "directory":
        yield DirectoryBackend(tmp_path, small_demo)
        return
    server = request.getfixturevalue("xnat_env")
    made = XnatBackend(tmp_path, small_demo, server, request.getfixturevalue("password"))
    yield made
    made.archive.close()
    made.close()


def _digest(checksum: str, data: bytes) -> str:
    algorithm, _, _ = checksum.partition(":")
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def test_discover_lists_every_session_with_scans_and_checksummed_files(backend, tmp_path):
    sessions = backend.archive.discover([backend.project])
    assert [s.label for s in sessions] == LABELS
    assert len({s.fingerprint for s in sessions}) == len(LABELS)
    for session in sessions:
        assert session.project == backend.project and session.subject.startswith("SUBJ")
        assert session.session_type == "xnat:optSessionData" and session.id and not session.problem
        assert [scan.id for scan in session.scans] == ["1", "2"]
        fetched = backend.archive.fetch(session, tmp_path / session.label)
        for scan in session.scans:
            assert scan.files and [p.name for p in fetched[scan.id]] == [f.name for f in scan.files]
            for entry, path in zip(scan.files, fetched[scan.id], strict=True):
                data = path.read_bytes()
                assert entry.size == len(data) > 0
                assert entry.checksum == _digest(entry.checksum, data)  # sha256: or md5:
    assert not list(tmp_path.rglob("*.part"))  # no partial download left behind


def test_scans_come_in_xnat_order_from_every_backend(backend):
    backend.add_session("SUBJ009", "SUBJ009_V1", ODD_SCANS)
    session = next(
        s for s in backend.archive.discover([backend.project]) if s.label == "SUBJ009_V1"
    )
    assert [scan.id for scan in session.scans] == ["OCT", "SLO", "1", "1-2", "2", "10"]


def test_state_token_and_fingerprints_follow_content(backend):
    before = backend.archive.state_token([backend.project])
    sessions = backend.archive.discover([backend.project])
    assert backend.archive.state_token([backend.project]) == before  # discovery changes nothing
    first = sessions[0].scans[0].files[0]
    backend.overwrite(sessions[0], sessions[0].scans[0].id, first.name, b"\0" * first.size)
    assert backend.archive.state_token([backend.project]) != before
    after = {s.label: s.fingerprint for s in backend.archive.discover([backend.project])}
    assert after[LABELS[0]] != sessions[0].fingerprint
    assert [after[label] for label in LABELS[1:]] == [s.fingerprint for s in sessions[1:]]
    changed = backend.archive.state_token([backend.project])
    backend.add_session("SUBJ009", "SUBJ009_V1", ("1",))
    assert backend.archive.state_token([backend.project]) != changed


def test_fetch_refuses_changed_or_vanished_files_naming_the_session(backend, tmp_path):
    session = backend.archive.discover([backend.project])[0]
    entry = session.scans[0].files[0]
    backend.overwrite(session, session.scans[0].id, entry.name, b"changed")
    # the directory archive says SessionUnavailable, XNAT an ArchiveError after its retries
    with pytest.raises(ArchiveError, match=f"{session.project}/{session.label}"):
        backend.archive.fetch(session, tmp_path / "changed")
    other = backend.archive.discover([backend.project])[1]
    backend.delete_session_files(other)
    with pytest.raises(SessionUnavailable, match=f"{other.project}/{other.label}"):
        backend.archive.fetch(other, tmp_path / "vanished")


def test_an_unknown_project_is_an_archive_error(backend):
    with pytest.raises(ArchiveError, match="NOPE"):
        backend.archive.discover(["NOPE"])


def test_write_back_creates_then_leaves_unchanged_then_updates(backend, tmp_path):
    session = backend.archive.discover([backend.project])[0]
    kqi = tmp_path / "noise.json"

    def write(value: float, end_time: str):
        kqi.write_text(json.dumps(kqi_result(session, value, end_time=end_time)))
        assessment = Assessment.from_result(kqi_result(session, value), {"noise.json": kqi})
        return backend.archive.write_assessment(session, assessment).action

    assert write(20.0, "2026-11-26T10:00:00+00:00") == "created"
    # the same document again (XNAT also compares the stored files' bytes; the directory
    # archive only the KQI digest, so it alone would call a later end_time unchanged too)
    assert write(20.0, "2026-11-26T10:00:00+00:00") == "unchanged"
    assert write(21.5, "2026-11-28T10:00:00+00:00") == "updated"


def test_scan_order_key_follows_xnat_image_scan_comparator():
    ids = ["10", "2", "OCT", "1-2", "1-10", "1", "SLO", "99999999999", "-3", "1-x"]
    # non-numbers (and IDs beyond Java's int) count as 0; ties broken by the ID itself
    assert sorted(ids, key=scan_order_key) == [
        "99999999999",
        "OCT",
        "SLO",
        "-3",
        "1",
        "1-x",
        "1-2",
        "1-10",
        "2",
        "10",
    ]
