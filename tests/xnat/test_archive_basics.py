"""XnatArchive through pyxnat against the XNAT test server: check, discover, fetch."""

from __future__ import annotations

import pytest

from qmroct.archive import open_archive
from qmroct.archive.base import ArchiveError
from qmroct.archive.xnat import XnatArchive

from tests.xnat.helpers import USER, file_bytes, seed_session


def archive(server, **options) -> XnatArchive:
    options.setdefault("backoff", 0.05)
    return XnatArchive(server=server.url, projects=["OCT"], **options)


def test_open_archive_picks_xnat_backend(xnat_env):
    with open_archive({"backend": "xnat", "server": xnat_env.url, "projects": ["OCT"]}) as arc:
        assert isinstance(arc, XnatArchive)
        arc.check()


def test_check_bad_password_is_clear(xnat_server, monkeypatch):
    monkeypatch.setenv("XNAT_USER", USER)
    monkeypatch.setenv("XNAT_PASS", "wrong")
    with pytest.raises(ArchiveError, match=r"refused the login of user 'qmtester' \(401\)"):
        archive(xnat_server).check()


def test_check_unreachable_host_is_clear(monkeypatch, password):
    monkeypatch.setenv("XNAT_USER", USER)
    monkeypatch.setenv("XNAT_PASS", password)
    arc = XnatArchive(
        server="http://127.0.0.1:9", projects=["OCT"], backoff=0.01, connect_timeout=1
    )
    with pytest.raises(ArchiveError, match=r"cannot reach XNAT at http://127.0.0.1:9"):
        arc.check()


def test_check_missing_project(xnat_env):
    arc = XnatArchive(server=xnat_env.url, projects=["NOPE"])
    with pytest.raises(ArchiveError, match="project 'NOPE' does not exist"):
        arc.check()


def test_credentials_from_netrc(xnat_server, password, tmp_path, monkeypatch):
    monkeypatch.delenv("XNAT_USER", raising=False)
    monkeypatch.delenv("XNAT_PASS", raising=False)
    rc = tmp_path / "netrc"
    rc.write_text(f"machine 127.0.0.1 login {USER} password {password}\n")
    rc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(rc))
    archive(xnat_server).check()
    monkeypatch.setenv("NETRC", str(tmp_path / "missing"))
    with pytest.raises(ArchiveError, match="no credentials for 127.0.0.1"):
        archive(xnat_server).check()


def test_discover_sessions_scans_files(xnat_env, pyxnat_interface):
    seed_session(pyxnat_interface, "OCT", "S1", "S1_V1", scans=("1", "2"), files_per_scan=2)
    seed_session(pyxnat_interface, "OCT", "S2", "S2_V1", scans=("1",), files_per_scan=3)
    seed_session(
        pyxnat_interface, "OCT", "S3", "S3_MR", scans=("1",), session_type="xnat:mrSessionData"
    )
    arc = archive(xnat_env)
    sessions = arc.discover(["OCT"])
    assert [s.label for s in sessions] == ["S1_V1", "S2_V1"]  # the MR session is not an OPT session
    s1 = sessions[0]
    assert (
        s1.subject == "S1"
        and s1.id.startswith("XNAT_E")
        and s1.session_type == "xnat:optSessionData"
    )
    assert [sc.id for sc in s1.scans] == ["1", "2"]
    assert s1.scans[0].type == "OCT" and s1.scans[0].series_description == "Macula 6x6"
    f = s1.scans[0].files[0]
    assert f.name == "S1_V1_1_000.dcm" and f.size == 4096
    import hashlib

    assert f.checksum == "md5:" + hashlib.md5(file_bytes("OCT", "S1_V1", "1", 0)).hexdigest()
    # other session types are configurable
    mr = archive(xnat_env, session_types=["xnat:mrSessionData"]).discover(["OCT"])
    assert [s.label for s in mr] == ["S3_MR"]


# State token, fingerprints and verified downloads are the archive contract, tested for both
# backends in tests/test_archive_contract.py.
