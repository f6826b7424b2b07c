"""``qmroct watch`` against the XNAT test server (real HTTP on loopback, real snakemake)."""

from __future__ import annotations

import secrets
import signal
from pathlib import Path

import pytest
import yaml

from tests.support import copy_workflow
from tests.test_watch_workflow import qmroct, runs, start_watcher, state, summary, wait_for
from tests.xnat.helpers import USER
from tests.xnat_server.load import upload_archive
from tests.xnat_server import XnatTestServer
from tests.xnat_server.server import DEFAULT_SCHEMA_DIR

pytestmark = pytest.mark.slow


class _Workflow:  # what the helpers of test_watch_workflow need
    def __init__(self, root: Path):
        self.root = root


def _no_change_polls(wf) -> int:
    return (wf.root / "watcher.out").read_text().count("qmroct watch: no change")


def test_watch_against_xnat(tmp_path):
    from qmroct.synth.demo import build_demo_archive

    password = "pw-" + secrets.token_hex(12)
    schemas = DEFAULT_SCHEMA_DIR if (DEFAULT_SCHEMA_DIR / "xnat" / "xnat.xsd").is_file() else None
    server = XnatTestServer(tmp_path / "xnat-data", users={USER: password}, schema_dir=schemas)
    server.store.put_project("DEMO", {})
    with server:
        import pyxnat

        intf = pyxnat.Interface(server=server.url, user=USER, password=password)
        demo = tmp_path / "demo"
        build_demo_archive(demo, sessions=3, seed=11, shape=(3, 128, 64))
        upload_archive(intf, demo / "archive", only={"SUBJ001_V1", "SUBJ001_V2"})

        root = copy_workflow(tmp_path / "wf")
        config = yaml.safe_load((root / "config.yaml").read_text())
        config.update(
            archive={
                "backend": "xnat",
                "server": server.url,
                "retries": 0,
                "backoff": 0.1,
                "timeout": 10,
            },
            projects=["DEMO"],
            algorithms={"noise": {}},
            studies={},
        )
        (root / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        wf = _Workflow(root)
        env = {"XNAT_USER": USER, "XNAT_PASS": password}

        watcher = start_watcher(wf, "--interval", "0.5", "--max-backoff", "2", **env)
        try:
            # The first check runs the workflow: both sessions computed and written back.
            wait_for(lambda: state(wf).get("last_run"), 300, "the first run")
            first = summary(wf, state(wf)["last_run"])
            assert first["outcome"] == "success" and first["sessions"]["new"] == 2
            assert first["jobs"]["compute_noise"] == 2 and first["jobs"]["writeback"] == 2
            # Writing assessors back may touch the sessions' last_modified once; after that,
            # polls of an unchanged XNAT start nothing.
            wait_for(lambda: _no_change_polls(wf) >= 1, 300, "an unchanged poll")
            settled = len(runs(wf))
            mark = _no_change_polls(wf)
            wait_for(lambda: _no_change_polls(wf) >= mark + 3, 60, "three more unchanged polls")
            assert len(runs(wf)) == settled, "no change must make no run"
            assert settled <= 2

            # XNAT unreachable: the watcher backs off and keeps running; status says so.
            server.inject("drop", count=10**9)
            wait_for(lambda: state(wf).get("archive_failures", 0) >= 2, 60, "failed polls")
            status = qmroct(wf, "status", **env)
            assert status.returncode == 2 and "UNREACHABLE" in status.stdout
            assert password not in status.stdout
            server.clear_faults()
            wait_for(lambda: state(wf).get("archive") == {"reachable": True}, 60, "XNAT back")

            # A new session uploaded: one run, computing only it.
            upload_archive(intf, demo / "archive", only={"SUBJ002_V1"})
            wait_for(
                lambda: (
                    len(runs(wf)) > settled
                    and summary(wf, runs(wf)[-1]).get("end")
                    and summary(wf, runs(wf)[-1]).get("outcome") != "running"
                ),
                300,
                "the run for the new session",
            )
            s = summary(wf, runs(wf)[-1])
            assert s["trigger"] == "archive changed" and s["outcome"] == "success", s
            assert (
                s["sessions"]["new_sessions"] == ["DEMO/SUBJ002_V1"]
                and s["jobs"]["compute_noise"] == 1
            )
            assert qmroct(wf, "status", **env).returncode == 0
        finally:
            watcher.send_signal(signal.SIGTERM)
            assert watcher.wait(timeout=120) == 0
            intf._http.close()
    log = (root / "watcher.out").read_text()
    assert password not in log
    for path in root.glob("results/runs/*/*"):
        assert password not in path.read_text(errors="replace"), path
