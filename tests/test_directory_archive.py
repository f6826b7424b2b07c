"""The directory archive: discovery, fingerprints, fetch checks, idempotent write-back."""

from __future__ import annotations

import json
import shutil

import pytest

from qmroct.archive import SessionUnavailable, open_archive
from qmroct.assessment import Assessment


@pytest.fixture
def archive_copy(tmp_path, small_demo):
    shutil.copytree(small_demo / "archive", tmp_path / "archive")
    return open_archive({"backend": "directory", "path": str(tmp_path / "archive")}, cache_dir=str(tmp_path / "cache"))


def test_discover_lists_sessions_scans_files(archive_copy):
    sessions = archive_copy.discover(["DEMO"])
    assert [s.label for s in sessions] == ["SUBJ001_V1", "SUBJ001_V2", "SUBJ002_V1"]
    for s in sessions:
        assert s.session_type == "xnat:optSessionData" and s.subject.startswith("SUBJ")
        assert [scan.id for scan in s.scans] == ["1", "2"]
        assert all(f.checksum.startswith("sha256:") and f.size > 0 for scan in s.scans for f in scan.files)
    assert len({s.fingerprint for s in sessions}) == 3


def test_state_token_and_fingerprint_follow_content(archive_copy):
    before = archive_copy.state_token(["DEMO"])
    sessions = archive_copy.discover(["DEMO"])
    assert archive_copy.state_token(["DEMO"]) == before  # discovery itself changes nothing
    f = next(archive_copy.root.glob("DEMO/subjects/SUBJ001/experiments/SUBJ001_V1/scans/1/resources/*/files/*"))
    f.write_bytes(f.read_bytes() + b"\0")
    assert archive_copy.state_token(["DEMO"]) != before
    after = {s.label: s.fingerprint for s in archive_copy.discover(["DEMO"])}
    assert after["SUBJ001_V1"] != sessions[0].fingerprint
    assert after["SUBJ001_V2"] == sessions[1].fingerprint


def test_unknown_project_and_missing_archive(tmp_path, archive_copy):
    with pytest.raises(Exception, match="project 'NOPE' not found"):
        archive_copy.discover(["NOPE"])
    missing = open_archive({"backend": "directory", "path": str(tmp_path / "nowhere")})
    with pytest.raises(Exception, match="does not exist"):
        missing.check()


def test_fetch_verifies_and_names_the_session(tmp_path, archive_copy):
    session = archive_copy.discover(["DEMO"])[0]
    fetched = archive_copy.fetch(session, tmp_path / "dest")
    assert sorted(fetched) == ["1", "2"] and all(p.is_file() for ps in fetched.values() for p in ps)
    f = archive_copy.root / session.scans[0].files[0].uri
    f.write_bytes(b"changed")
    with pytest.raises(SessionUnavailable, match="SUBJ001_V1"):
        archive_copy.fetch(session, tmp_path / "dest2")
    shutil.rmtree(f.parent.parent.parent.parent.parent)
    with pytest.raises(SessionUnavailable, match="DEMO/SUBJ001_V1"):
        archive_copy.fetch(session, tmp_path / "dest3")


def _result(session, value):
    return {
        "session": {"project": session.project, "subject": session.subject, "label": session.label, "id": session.id},
        "algorithm": {"name": "noise", "version": "1.0.0", "code_checksum": "sha256:abc"},
        "status": "ok",
        "scans": [{"scan": "1", "status": "ok", "error": None, "kqis": {"snr_db": {"value": value, "unit": "dB"}}}],
        "provenance": {"end_time": "2026-11-26T10:00:00"},
    }


def test_write_back_is_idempotent(tmp_path, archive_copy):
    session = archive_copy.discover(["DEMO"])[0]
    kqi = tmp_path / "noise.json"
    kqi.write_text(json.dumps(_result(session, 20.0)))
    first = archive_copy.write_assessment(session, Assessment.from_result(_result(session, 20.0), {"noise.json": kqi}))
    assert first.action == "created"
    kqi.write_text(json.dumps(_result(session, 20.0) | {"provenance": {"end_time": "2026-11-27T10:00:00"}}))
    again = archive_copy.write_assessment(session, Assessment.from_result(_result(session, 20.0), {"noise.json": kqi}))
    assert again.action == "unchanged"
    changed = archive_copy.write_assessment(session, Assessment.from_result(_result(session, 21.5), {"noise.json": kqi}))
    assert changed.action == "updated"
    base = archive_copy.session_dir(session) / "assessors"
    assert [p.name for p in base.iterdir()] == ["SUBJ001_V1_qmroct_noise"]
    assert b">21.5<" in (base / "SUBJ001_V1_qmroct_noise/assessor.xml").read_bytes()
    history = (archive_copy.session_dir(session) / "history.jsonl").read_text().splitlines()
    assert len(history) == 2  # created, updated; the unchanged rerun wrote nothing


def test_history_through_a_link_is_refused_also_when_superseding(tmp_path, archive_copy):
    """A rollback to an unchanged older version only marks the newer one superseded;
    that history line goes through the same link check as every other."""
    from qmroct.archive import ArchiveError

    session = archive_copy.discover(["DEMO"])[0]

    def write(version):
        result = _result(session, 20.0) | {}
        result["algorithm"] = dict(result["algorithm"], version=version)
        kqi = tmp_path / "noise.json"
        kqi.write_text(json.dumps(result))
        return archive_copy.write_assessment(session, Assessment.from_result(
            result, {"noise.json": kqi}, versioned=archive_copy.versioned_labels))

    assert write("1.0.0").action == "created" and write("1.1.0").action == "created"
    base = archive_copy.session_dir(session)
    outside = tmp_path / "outside.txt"
    outside.write_text("not the archive's\n")
    (base / "history.jsonl").unlink()
    (base / "history.jsonl").symlink_to(outside)
    records = {p: p.read_bytes() for p in (base / "assessors").glob("*/assessor.json")}
    with pytest.raises(ArchiveError, match="is a link"):
        write("1.0.0")  # unchanged: only the superseding step writes history
    assert outside.read_text() == "not the archive's\n"
    assert {p: p.read_bytes() for p in records} == records, "no record marked before the refusal"


def test_a_relative_archive_is_refused_for_workers_without_shared_storage():
    from qmroct.archive import ArchiveError
    from qmroct.archive.directory import check_reachable_from_workers

    with pytest.raises(ArchiveError, match="'demo/archive' is on this machine only.*absolute"):
        check_reachable_from_workers({"backend": "directory", "path": "demo/archive"})
    check_reachable_from_workers({"backend": "directory", "path": "/mnt/oct/archive"})
    check_reachable_from_workers({"backend": "xnat", "server": "https://xnat.example.org"})


def test_a_worker_without_the_archive_says_so_with_its_host_name(tmp_path, archive_copy):
    import socket

    session = archive_copy.discover(["DEMO"])[0]
    # what a worker sees: the head's archive path does not exist there
    elsewhere = open_archive({"backend": "directory", "path": str(tmp_path / "not-mounted")})
    with pytest.raises(SessionUnavailable) as raised:
        elsewhere.fetch(session, tmp_path / "dest")
    assert f"not reachable from host {socket.gethostname()}" in str(raised.value)
    assert "gone" not in str(raised.value)
    # the archive is there but the file is not: both causes are named, with the host
    (archive_copy.root / session.scans[0].files[0].uri).unlink()
    with pytest.raises(SessionUnavailable, match=f"as host {socket.gethostname()} sees it"):
        archive_copy.fetch(session, tmp_path / "dest2")
