"""The directory archive: discovery, fingerprints, fetch checks, idempotent write-back."""

from __future__ import annotations

import json
import shutil

import pytest

from qmroct.archive import SessionUnavailable, open_archive
from qmroct.assessment import Assessment
from tests.support import kqi_result


@pytest.fixture
def archive_copy(tmp_path, small_demo):
    shutil.copytree(small_demo / "archive", tmp_path / "archive")
    return open_archive(
        {"backend": "directory", "path": str(tmp_path / "archive")},
        cache_dir=str(tmp_path / "cache"),
    )


# Discovery, state token, fingerprints, fetch checks and write-back actions are the archive
# contract, tested for both backends in tests/test_archive_contract.py; here what only the
# directory archive does.


def test_a_missing_archive_is_named(tmp_path):
    missing = open_archive({"backend": "directory", "path": str(tmp_path / "nowhere")})
    with pytest.raises(Exception, match="does not exist"):
        missing.check()


def _result(session, value):
    return kqi_result(session, value, end_time="2026-11-26T10:00:00")


def test_write_back_is_idempotent(tmp_path, archive_copy):
    session = archive_copy.discover(["DEMO"])[0]
    kqi = tmp_path / "noise.json"
    kqi.write_text(json.dumps(_result(session, 20.0)))
    first = archive_copy.write_assessment(
        session, Assessment.from_result(_result(session, 20.0), {"noise.json": kqi})
    )
    assert first.action == "created"
    kqi.write_text(
        json.dumps(_result(session, 20.0) | {"provenance": {"end_time": "2026-11-27T10:00:00"}})
    )
    again = archive_copy.write_assessment(
        session, Assessment.from_result(_result(session, 20.0), {"noise.json": kqi})
    )
    assert again.action == "unchanged"
    changed = archive_copy.write_assessment(
        session, Assessment.from_result(_result(session, 21.5), {"noise.json": kqi})
    )
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
        return archive_copy.write_assessment(
            session,
            Assessment.from_result(
                result, {"noise.json": kqi}, versioned=archive_copy.versioned_labels
            ),
        )

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
