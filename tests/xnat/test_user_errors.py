"""Archive errors a user can act on, through real snakemake: one line on the console
naming the cause (wrong password, unreachable server), no InputFunctionException or
traceback there, the exception chain in logs/archive.log, no lock left behind."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from tests.support import copy_workflow
from tests.xnat.helpers import USER


def _workflow(tmp_path: Path, small_demo: Path, server: str) -> Path:
    root = copy_workflow(tmp_path / "wf")
    config = yaml.safe_load((root / "config.yaml").read_text())
    config["archive"] = {"backend": "xnat", "server": server, "retries": 0}
    config["projects"] = ["OCT"]
    config["algorithms"] = {"noise": {}}
    config["studies"] = {}
    (root / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root


def _snakemake(root: Path, password: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        XNAT_USER=USER,
        XNAT_PASS=password,
        PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    )
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "1", "--nocolor", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _assert_plain(proc: subprocess.CompletedProcess, sentence: str, root: Path) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    lines = [line for line in out.splitlines() if line.startswith("qmroct: ")]
    assert len(lines) == 1 and sentence in lines[0], out[-3000:]
    assert "details: logs/archive.log" in lines[0]
    assert "InputFunctionException" not in out and "Traceback" not in out, out[-3000:]
    chain = (root / "logs" / "archive.log").read_text()
    assert "Traceback" in chain and sentence in chain
    assert not any((root / ".snakemake" / "locks").iterdir()), "the lock is released"


def test_wrong_password_is_one_line(tmp_path, small_demo, xnat_server, password):
    root = _workflow(tmp_path, small_demo, xnat_server.url)
    wrong = password + "-wrong"
    for args in ((), ("-n",)):
        proc = _snakemake(root, wrong, *args)
        _assert_plain(proc, f"refused the login of user '{USER}' (401)", root)
        assert wrong not in proc.stdout + proc.stderr
        assert wrong not in (root / "logs" / "archive.log").read_text()
    assert not (root / "results").exists()


def test_unreachable_server_is_one_line(tmp_path, small_demo):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    root = _workflow(tmp_path, small_demo, f"http://127.0.0.1:{port}")
    proc = _snakemake(root, "whatever")
    _assert_plain(proc, f"cannot reach XNAT at http://127.0.0.1:{port}", root)
