"""`python -m tests.xnat_server --load ARCHIVE`: the documented way to fill the test server.

The server runs as a user starts it (a subprocess, users from XNAT_TEST_USERS); the
loaded sessions are read back through pyxnat, a second start on the same data
loads nothing twice, and a server without XSD schemas says so when it starts.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(data: Path, *args: str, users: str = "alice:secret") -> tuple:
    """The server started by hand; returns (process, port, lines up to the load report)."""
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.xnat_server",
            "--port",
            str(port),
            "--data",
            str(data),
            *args,
        ],
        cwd=REPO,
        env=os.environ | {"XNAT_TEST_USERS": users},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    for line in proc.stdout:  # waits on the server's own report, never a fixed time
        lines.append(line.rstrip("\n"))
        if line.startswith("loaded ") or "Traceback" in line:
            break
    return proc, port, lines


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


def test_load_puts_the_demo_archive_into_the_server_once(tmp_path, small_demo):
    import pyxnat

    data = tmp_path / "xnat"
    proc, port, lines = start_server(
        data, "--load", str(small_demo / "archive"), "--schemas", str(tmp_path / "no-schemas")
    )
    try:
        assert any(
            "WARNING: no XNAT XSD schemas at" in line and "xnatpy cannot connect" in line
            for line in lines
        ), lines
        assert lines[-1].startswith("loaded 3 sessions from"), lines
        intf = pyxnat.Interface(server=f"http://127.0.0.1:{port}", user="alice", password="secret")
        labels = sorted(e.label() for e in intf.select.project("DEMO").experiments())
        assert labels == ["SUBJ001_V1", "SUBJ001_V2", "SUBJ002_V1"]
        scans = intf.select("/project/DEMO/subject/SUBJ001/experiment/SUBJ001_V1").scans()
        files = [f for scan in scans for f in scan.resource("DICOM").files().get()]
        expected = list(
            (small_demo / "archive").glob(
                "DEMO/subjects/SUBJ001/experiments/SUBJ001_V1/scans/*/resources/DICOM/files/*"
            )
        )
        assert expected and len(files) == len(expected)
        intf.disconnect()
    finally:
        stop(proc)
    proc, _, lines = start_server(data, "--load", str(small_demo / "archive"))
    try:
        assert lines[-1].startswith("loaded 0 sessions"), lines
    finally:
        stop(proc)


def test_load_of_a_folder_that_is_no_archive_is_one_line(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.xnat_server",
            "--data",
            str(tmp_path / "x"),
            "--load",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "holds no sessions" in out.stderr
    assert "Traceback" not in out.stderr


def test_no_warning_with_schemas(tmp_path, small_demo):
    from tests.xnat.conftest import schemas_present

    if not schemas_present():
        pytest.fail("XNAT XSD schemas not found (../shared/xnat-schemas)")
    proc, _, lines = start_server(tmp_path / "xnat", "--load", str(small_demo / "archive"))
    try:
        assert not any("WARNING" in line for line in lines), lines
    finally:
        stop(proc)
