"""Issue 9: no secret is ever written. The workflow runs (real snakemake) with
each credential source against the XNAT test server: ``~/.netrc``, the
environment, and a password in the server URL (refused, with a message that
does not repeat it). While it runs, every process's command line is watched
(/proc); afterwards every file under results/, logs/, .snakemake/, scratch,
.qmroct/ and the archive (the server's files, its request log and its catalogue
but for its own user table) is searched for the password."""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path

import pytest
import yaml

from tests.support import copy_workflow
from tests.xnat.helpers import USER
from tests.xnat.test_end_to_end import SHAPE, ProcWatch, XnatWorkflow
from tests.xnat_server.load import upload_archive

pytestmark = pytest.mark.slow


def files_with(secret: bytes, *roots: Path, skip: tuple[Path, ...] = ()) -> list[str]:
    hits = []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and path not in skip and secret in path.read_bytes():
                hits.append(str(path))
    return hits


def catalogue_with(secret: str, db: Path) -> list[str]:
    """Tables of the server's catalogue holding the secret (its users table
    holds the password by design: it is the server's credential store)."""
    with sqlite3.connect(db) as con:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return [
            t
            for t in tables
            if t != "users" and secret in repr(con.execute(f"SELECT * FROM {t}").fetchall())
        ]


@pytest.fixture
def demo_in_xnat(xnat_server, pyxnat_interface, tmp_path):
    from qmroct.synth.demo import build_demo_archive

    xnat_server.store.put_project("DEMO", {})
    demo = tmp_path / "demo"
    build_demo_archive(demo, sessions=1, seed=5, shape=SHAPE)
    assert upload_archive(pyxnat_interface, demo / "archive") == ["SUBJ001_V1"]
    pyxnat_interface._http.close()
    return xnat_server


@pytest.mark.parametrize("source", ["environment", "netrc", "url"])
def test_no_password_written_or_shown(demo_in_xnat, password, tmp_path, source):
    server = demo_in_xnat
    root = copy_workflow(tmp_path / "wf")
    config = yaml.safe_load((root / "config.yaml").read_text())
    url = server.url
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    for key in ("XNAT_HOST", "XNAT_USER", "XNAT_PASS", "NETRC"):
        env.pop(key, None)
    if source == "environment":
        env.update(XNAT_USER=USER, XNAT_PASS=password)
    elif source == "netrc":
        rc = tmp_path / "netrc"  # the user's credential store, outside the workflow
        rc.write_text(f"machine 127.0.0.1 login {USER} password {password}\n")
        rc.chmod(0o600)
        env["NETRC"] = str(rc)
    else:  # as in the issue: a password in the URL, and the environment's as well
        url = server.url.replace("://", f"://{USER}:{password}@")
        env.update(XNAT_USER=USER, XNAT_PASS=password)
    config.update(
        archive={"backend": "xnat", "server": url, "backoff": 0.1},
        projects=["DEMO"],
        algorithms={"noise": {}},
        studies={},
    )
    wf = XnatWorkflow(root, env)
    wf.write_config(config)

    watch = ProcWatch(password)
    run = wf.run(watch=watch, check=source != "url")
    output = run.stdout + run.stderr
    if source == "url":
        assert run.returncode != 0
        assert "server URL carries credentials" in output
        assert not (root / "results").exists()
    else:
        assert (root / "results/kqi/DEMO/SUBJ001_V1/noise.json").is_file()
        assert watch.jobs_seen, "no job process was observed"
    assert watch.leaks == []  # no command line of any process
    assert password not in output
    secret = password.encode()
    # config.yaml is the user's own input (holding the URL they wrote); all else is ours
    assert files_with(secret, root, skip=(root / "config.yaml",)) == []
    assert files_with(secret, server.store.files_dir, server.store.data_dir / "access.log") == []
    assert catalogue_with(password, server.store.data_dir / "xnat.db") == []
