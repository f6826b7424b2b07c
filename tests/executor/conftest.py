"""Fixtures for the OpenStack executor tests.

Unit tests need nothing.  Tests marked ``cloud`` start the Nova 34 test cloud
(tests/cloud/novacloud.py, in .venv-nova, see tests/cloud/setup.sh) once per session; every
test gets its own project (own quota, own servers) and its own key pair. Helpers and constants
live in helpers.py: tests import them from there (``from tests.executor.helpers import ...``),
so there is one SECRET per test session whatever order pytest collects the folders in.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid

import pytest

from tests.executor.helpers import NOVA_PY, REPO, NovaCloud, Project, build_worker_env


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "cloud: integration test against the Nova test cloud with sshd per server"
    )


@pytest.fixture(scope="session")
def nova_cloud(tmp_path_factory):
    if not NOVA_PY.exists():
        pytest.fail(f"{NOVA_PY} missing: run tests/cloud/setup.sh first")
    if not os.path.exists("/usr/sbin/sshd"):
        pytest.fail("/usr/sbin/sshd missing: apt-get install -y openssh-server")
    d = tmp_path_factory.mktemp("novacloud")
    ready = d / "ready.json"
    log = open(d / "cloud.log", "wb")
    proc = subprocess.Popen(
        [
            str(NOVA_PY),
            str(REPO / "tests" / "cloud" / "novacloud.py"),
            "--port",
            "0",
            "--ssh-port",
            os.environ.get("SMOS_TEST_SSH_PORT", "2222"),
            "--state-dir",
            str(d / "state"),
            "--ready-file",
            str(ready),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.time() + 90
    while not ready.exists():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail("nova test cloud did not start:\n" + (d / "cloud.log").read_text()[-3000:])
        time.sleep(0.2)
    info = json.loads(ready.read_text())
    cloud = NovaCloud(info["endpoint"], proc, info["state_dir"], info["ssh_port"])
    yield cloud
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def project(nova_cloud, tmp_path, request):
    nova_cloud.reset()
    name = "p" + uuid.uuid4().hex[:10]
    p = Project(nova_cloud, tmp_path, name)
    yield p
    nova_cloud.reset()
    # never leave servers behind, even when a test failed half-way
    for s in p.servers():
        p.conn.compute.delete_server(s)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def worker_bin(tmp_path_factory):
    """bin/ of the workers' Python environment (Snakemake and qmroct), built by the worker
    image's own setup script from this checkout, once per test session (reused while the
    script, pyproject.toml and src/ are unchanged), at a path only the test VMs use."""
    return build_worker_env(tmp_path_factory.mktemp("worker-src"))


@pytest.fixture
def isolated(nova_cloud, worker_bin):
    """Servers booted in this test share nothing with the head but the network: their sshd
    runs in a mount namespace of its own where the checkout, its virtual environments, the
    home and /tmp are empty (tests/cloud/README.md). Returns the workers' bin/ for
    ``remote_path_prefix``."""
    nova_cloud.control(isolate=True)
    yield worker_bin
    nova_cloud.control(isolate=False)
