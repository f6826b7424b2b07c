"""Fault injection on the XNAT test server: transient errors are retried, a
deleted session fails alone with its name, assessors are never duplicated,
tokens replace passwords for jobs and expire/renew/invalidate as XNAT's do."""

from __future__ import annotations

import os
import time

import pytest

from qmroct.archive.base import ArchiveError, SessionUnavailable
from qmroct.archive.xnat import XnatArchive
from qmroct.archive.xnat_tokens import TokenKeeper, issue_token
from tests.xnat.helpers import USER, file_bytes, seed_session
from tests.xnat.test_writeback import make_assessment


@pytest.fixture
def two_sessions(xnat_env, pyxnat_interface):
    seed_session(
        pyxnat_interface, "OCT", "S1", "S1_V1", scans=("1",), files_per_scan=2, size=200_000
    )
    seed_session(
        pyxnat_interface, "OCT", "S2", "S2_V1", scans=("1",), files_per_scan=2, size=200_000
    )
    arc = XnatArchive(server=xnat_env.url, projects=["OCT"], backoff=0.02, timeout=1.0, retries=3)
    return arc, arc.discover(["OCT"])


def statuses(server, pattern):
    return [r["status"] for r in server.requests if pattern in r["target"] and r["method"] == "GET"]


def test_5xx_and_dropped_connections_are_retried(two_sessions, xnat_server, tmp_path):
    arc, sessions = two_sessions
    xnat_server.inject("status", path=r"/files/S1_V1_1_000\.dcm$", status=503, count=2)
    xnat_server.inject("drop", path=r"/files/S1_V1_1_001\.dcm$", count=1)
    got = arc.fetch(sessions[0], tmp_path / "a")
    assert got["1"][0].read_bytes() == file_bytes("OCT", "S1_V1", "1", 0, 200_000)
    assert statuses(xnat_server, "S1_V1_1_000.dcm") == [503, 503, 200]
    assert statuses(xnat_server, "S1_V1_1_001.dcm") == [-1, 200]
    # listings too
    xnat_server.inject("status", path=r"/experiments\?", status=502, count=1)
    assert len(arc.discover(["OCT"])) == 2


def test_slow_and_truncated_downloads_are_retried(two_sessions, xnat_server, tmp_path, caplog):
    arc, sessions = two_sessions
    xnat_server.inject(
        "delay", path=r"S2_V1_1_000\.dcm$", delay=2.5, count=1
    )  # longer than the 1 s timeout
    xnat_server.inject("truncate", path=r"S2_V1_1_001\.dcm$", count=1)
    got = arc.fetch(sessions[1], tmp_path / "b")
    assert [p.stat().st_size for p in got["1"]] == [200_000, 200_000]
    assert (
        "S2_V1_1_000.dcm: ReadTimeout" in caplog.text
    )  # the slow answer was abandoned and retried
    assert len(statuses(xnat_server, "S2_V1_1_001.dcm")) == 2  # the truncated one was fetched again


def test_persistent_errors_give_up_clearly(two_sessions, xnat_server, tmp_path):
    arc, sessions = two_sessions
    xnat_server.inject("status", path=r"S1_V1_1_000\.dcm$", status=500, count=10)
    with pytest.raises(ArchiveError, match=r"failed after 4 attempts.*HTTP 500"):
        arc.fetch(sessions[0], tmp_path / "c")
    assert not list((tmp_path / "c").rglob("*.part"))


def test_deleted_session_fails_alone_with_its_name(two_sessions, xnat_server, tmp_path):
    arc, sessions = two_sessions
    s1, s2 = sessions
    # deleted between discovery and download: when its first file is requested
    xnat_server.inject("delete_experiment", path=r"S1_V1_1_000\.dcm$", experiment=s1.id)
    with pytest.raises(SessionUnavailable, match=r"OCT/S1_V1 \(XNAT_E\d+\) is no longer available"):
        arc.fetch(s1, tmp_path / "s1")
    assert sorted(arc.fetch(s2, tmp_path / "s2")) == ["1"]  # the other session is unaffected


def test_lost_answer_to_a_put_does_not_duplicate(two_sessions, xnat_server, tmp_path):
    arc, sessions = two_sessions
    s = sessions[0]
    # the server stores the assessor but the answer is lost; the client retries the same label
    xnat_server.inject("drop_after", path=r"/assessors/S1_V1_qmroct_noise\?", method="PUT", count=1)
    out = arc.write_assessment(s, make_assessment(tmp_path, s))
    assert out.action in ("created", "updated")
    labels = [
        r["label"]
        for r in xnat_server.store.q("SELECT label FROM experiments WHERE session_id=?", s.id)
    ]
    assert labels == ["S1_V1_qmroct_noise"]


def test_token_keeper_hands_down_only_the_token(xnat_server, password, monkeypatch, tmp_path):
    env = {"XNAT_HOST": xnat_server.url, "XNAT_USER": USER, "XNAT_PASS": password}
    keeper = TokenKeeper(environ=env)
    token = keeper.start()
    try:
        assert env["XNAT_USER"] == token.alias and env["XNAT_PASS"] == token.secret
        assert password not in env.values() and password not in repr(token)
        # a job with that environment works through the archive
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        arc = XnatArchive(projects=["OCT"], backoff=0.02)
        arc.check()
        assert xnat_server.requests[-1]["user"] == USER  # the token acts as its user
    finally:
        keeper.stop()
    # invalidated at the end, and the head's environment is back
    assert env == {"XNAT_HOST": xnat_server.url, "XNAT_USER": USER, "XNAT_PASS": password}
    arc = XnatArchive(projects=["OCT"], backoff=0.02)
    with pytest.raises(ArchiveError, match="refused the alias token"):
        arc.check()


def test_token_renewed_before_expiry(tmp_path, password):
    from tests.xnat_server import XnatTestServer

    with XnatTestServer(
        tmp_path / "d", users={USER: password}, schema_dir=None, token_lifetime=2.0
    ) as server:
        env = {"XNAT_HOST": server.url, "XNAT_USER": USER, "XNAT_PASS": password}
        keeper = TokenKeeper(environ=env, min_renew_interval=0.2)
        first = keeper.start()
        try:
            deadline = time.time() + 6
            while env["XNAT_USER"] == first.alias and time.time() < deadline:
                time.sleep(0.1)
            assert env["XNAT_USER"] != first.alias, "token was not renewed"
            renewed = keeper.current
            # the renewed token works; the first one expires on its own
            monkey = dict(os.environ)
            try:
                os.environ.update(env)
                XnatArchive(projects=[], backoff=0.02).check()
            finally:
                os.environ.clear()
                os.environ.update(monkey)
            assert renewed.expires > first.expires
        finally:
            keeper.stop()
        assert len(server.store.q("SELECT * FROM tokens WHERE enabled=1")) == 0


def test_expired_token_is_a_clear_error(xnat_server, password, monkeypatch):
    token = issue_token(xnat_server.url, USER, password)
    monkeypatch.setenv("XNAT_USER", token.alias)
    monkeypatch.setenv("XNAT_PASS", token.secret)
    arc = XnatArchive(server=xnat_server.url, projects=["OCT"], backoff=0.02)
    arc.check()
    xnat_server.inject("expire_tokens", path=".*", count=1)
    with pytest.raises(ArchiveError, match=r"alias token .* expired or was invalidated"):
        arc.discover(["OCT"])
