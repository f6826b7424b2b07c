"""Cloud errors a user can act on, through real snakemake with the OpenStack profile:
an unknown cloud name and an unreachable cloud are one sentence (WorkflowError), not
openstacksdk's chain, which goes to .snakemake/openstack/connect-error.log."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from tests.support import REPO


def _cloud_run(workflow, tmp_path, monkeypatch, cloud: str):
    """Fails when the executor first contacts the cloud: before the key pair is read."""
    shutil.copytree(REPO / "profiles", workflow.root / "profiles")
    config = workflow.config()
    config["archive"]["path"] = str(workflow.archive)
    workflow.write_config(config)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(
        "clouds:\n  other:\n    auth_type: admin_token\n    auth:\n"
        f"      endpoint: http://127.0.0.1:{port}/v2.1\n      token: 'me:p'\n"
    )
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
    proc = workflow.run(
        "--workflow-profile",
        "profiles/openstack",
        "--openstack-cloud",
        cloud,
        check=False,
        timeout=300,
    )
    return proc, port


def _assert_short(proc, sentence: str, root: Path) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    tail = out.split("Building DAG of jobs...", 1)[-1]
    assert sentence in tail, tail[-3000:]
    assert "Traceback" not in tail and len(tail.strip().splitlines()) <= 4, tail
    assert "Traceback" in (root / ".snakemake/openstack/connect-error.log").read_text()


def test_unknown_cloud_name(workflow, tmp_path, monkeypatch):
    proc, _ = _cloud_run(workflow, tmp_path, monkeypatch, "nosuch")
    _assert_short(proc, "cloud 'nosuch' is not in", workflow.root)


def test_unreachable_cloud(workflow, tmp_path, monkeypatch):
    proc, port = _cloud_run(workflow, tmp_path, monkeypatch, "other")
    _assert_short(proc, "cannot reach cloud 'other'", workflow.root)
    assert f"127.0.0.1:{port}" in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "status, words", [(401, "refused the credentials (401)"), (403, "denied access (403)")]
)
def test_refused_credentials_are_named(status, words):
    from openstack import exceptions

    from snakemake_executor_plugin_openstack.cloud import describe_connect_error

    error = exceptions.HttpException(
        message="The request you have made requires authentication.", http_status=status
    )
    text = describe_connect_error(error, "mycloud")
    assert words in text and "'mycloud'" in text and "\n" not in text
