"""Login sessions and alias tokens as XNAT keeps them: one session per process,
ended at the end (1000 per user, 15 minutes each); tokens that outlive their
estimated expiry until the hourly cleanup, 404 on a second invalidation, and
tokens a killed run left invalidated by the next run. Credentials in the
server URL are refused without repeating them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from qmroct.archive.base import ArchiveError
from qmroct.archive.xnat import XnatArchive
from qmroct.archive.xnat_tokens import TokenKeeper, invalidate_token, issue_token, login
from tests.xnat.conftest import ROOT
from tests.xnat.helpers import USER, seed_session
from tests.xnat.test_writeback import make_assessment
from tests.xnat_server import XnatTestServer


def sessions_created(server) -> int:
    return server.store.sessions_opened.get(USER, 0)


def test_one_login_session_per_archive_ended_at_close(xnat_env, pyxnat_interface, tmp_path):
    seed_session(pyxnat_interface, "OCT", "S1", "S1_V1")
    pyxnat_interface._http.close()
    before, live = sessions_created(xnat_env), xnat_env.store.live_sessions(USER)
    with XnatArchive(server=xnat_env.url, projects=["OCT"], backoff=0.02) as arc:
        arc.check()
        session = arc.discover(["OCT"])[0]
        arc.fetch(session, tmp_path / "scratch")
        arc.write_assessment(session, make_assessment(tmp_path, session))
        arc.history_entries(session)
    assert sessions_created(xnat_env) - before == 1  # every call reused one session
    assert xnat_env.store.live_sessions(USER) == live  # and it was ended


def test_the_server_refuses_logins_beyond_the_limit(tmp_path, password):
    with XnatTestServer(
        tmp_path / "d", users={USER: password}, schema_dir=None, max_sessions=3
    ) as server:
        for _ in range(3):  # like a client that never reuses nor ends its session
            assert requests.get(f"{server.url}/data/JSESSION", auth=(USER, password)).ok
        refused = requests.get(f"{server.url}/data/JSESSION", auth=(USER, password))
        assert refused.status_code == 401 and "Maximum sessions of 3" in refused.text
        # the keeper issues, renews and invalidates through one session, ended at stop
        server.store.q("DELETE FROM jsessions")
        server.store.sessions_opened.clear()
        keeper = TokenKeeper(
            environ={"XNAT_HOST": server.url, "XNAT_USER": USER, "XNAT_PASS": password}
        )
        keeper.start()
        keeper.renew()
        keeper.renew()
        keeper.stop()
        assert sessions_created(server) == 1 and server.store.live_sessions(USER) == 0


def test_tokens_live_until_the_cleanup_and_invalidate_twice(tmp_path, password):
    """validateToken checks no expiry; the hourly invalidateExpiredTokens removes
    them; a second invalidate answers 404, which the client takes as done."""
    with XnatTestServer(
        tmp_path / "d",
        users={USER: password},
        schema_dir=None,
        token_lifetime=0.2,
        token_cleanup_interval=3600,
    ) as server:
        token = issue_token(server.url, USER, password)
        time.sleep(0.3)  # past estimatedExpirationTime
        assert token.expires < time.time()
        assert requests.get(f"{server.url}/data/auth", auth=(token.alias, token.secret)).ok
        http = login(server.url, USER, password)
        try:
            assert invalidate_token(http, token.alias) is True  # still valid: invalidated
            assert invalidate_token(http, token.alias) is False  # 404 the second time
            late = issue_token(server.url, USER, password)
            time.sleep(0.3)
            server.store.cleanup_expired_tokens()  # the hourly job ran
            refused = requests.get(f"{server.url}/data/auth", auth=(late.alias, late.secret))
            assert refused.status_code == 401
            assert invalidate_token(http, late.alias) is False
        finally:
            http.close()


KEEPER = """
import os, sys, time
from qmroct.archive.xnat_tokens import TokenKeeper
keeper = TokenKeeper(ledger=sys.argv[1])
token = keeper.start()
print(token.alias, flush=True)
time.sleep(600)
"""


def test_tokens_a_killed_run_left_are_invalidated_by_the_next(xnat_env, password, tmp_path):
    ledger = tmp_path / ".qmroct" / "xnat" / "tokens.json"
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}:{ROOT}")
    head = subprocess.Popen(
        [sys.executable, "-c", KEEPER, str(ledger)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        alias = head.stdout.readline().strip()
    finally:
        head.send_signal(signal.SIGKILL)  # kill -9: no handler, no invalidation
        head.wait(10)
    assert xnat_env.store.token(alias) is not None  # left valid
    recorded = json.loads(ledger.read_text())["tokens"]
    assert [e["alias"] for e in recorded] == [alias]
    assert password not in ledger.read_text() and "secret" not in recorded[0]

    # a run still alive keeps its tokens: another keeper in the folder does not touch them
    live = TokenKeeper(ledger=ledger)
    live_token = live.start()
    try:
        nxt = TokenKeeper(ledger=ledger)
        nxt.start()
        assert xnat_env.store.token(alias) is None  # the killed run's token: invalidated
        assert xnat_env.store.token(live_token.alias) is not None  # the live run's: kept
        nxt.stop()
    finally:
        live.stop()
    assert json.loads(ledger.read_text())["tokens"] == []


@pytest.mark.parametrize("url", ["http://{user}:{pw}@{host}", "http://{user}@{host}"])
def test_credentials_in_the_server_url_are_refused(xnat_server, password, url, monkeypatch):
    monkeypatch.delenv("XNAT_HOST", raising=False)
    host = xnat_server.url.split("//", 1)[1]
    server = url.format(user=USER, pw=password, host=host)
    for make in (
        lambda: XnatArchive(server=server, projects=["OCT"]),
        lambda: TokenKeeper(server=server, environ={"XNAT_USER": USER, "XNAT_PASS": password}),
    ):
        with pytest.raises(ArchiveError, match="server URL carries credentials") as err:
            make()
        assert password not in str(err.value)
    monkeypatch.setenv("XNAT_HOST", server)
    with pytest.raises(ArchiveError, match="server URL carries credentials") as err:
        XnatArchive(projects=["OCT"]).check()
    assert password not in str(err.value)
    assert xnat_server.requests == []  # refused before any call


def test_check_config_refuses_credentials_in_the_server_url(tmp_path, password):
    import yaml

    from qmroct.config import ConfigError, load_settings

    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["archive"] = {"backend": "xnat", "server": f"https://{USER}:{password}@xnat.example.org"}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="archive/server: .*carries credentials") as err:
        load_settings(path, workflow_dir=ROOT)
    assert password not in str(err.value)
