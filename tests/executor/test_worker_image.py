"""The worker image's user data (images/worker-cloud-init.yaml) checked by cloud-init itself,
and the build script's qmroct source setting (images/build_worker_image.py). No cloud."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import yaml

from tests.executor.helpers import REPO

TEMPLATE = REPO / "images" / "worker-cloud-init.yaml"
BUILD = REPO / "images" / "build_worker_image.py"
SOURCE = "qmroct @ git+https://git.example.org/qmroct.git@v1.2"


def cloud_init_schema(path) -> subprocess.CompletedProcess:
    exe = shutil.which("cloud-init")
    if exe is None:
        pytest.fail("cloud-init missing: apt-get install cloud-init (make system-packages)")
    return subprocess.run(
        [exe, "schema", "-c", str(path)], capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def build_module():
    sys.path.insert(0, str(BUILD.parent))
    try:
        import build_worker_image

        yield build_worker_image
    finally:
        sys.path.remove(str(BUILD.parent))


def test_cloud_init_accepts_the_template():
    r = cloud_init_schema(TEMPLATE)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Valid cloud-config" in r.stdout


def test_cloud_init_rejects_a_broken_file(tmp_path):
    # the check above can fail: the same command on a file with a schema error
    bad = tmp_path / "bad.yaml"
    bad.write_text("#cloud-config\npackages: 5\nwrite_files:\n  - content: x\n")
    r = cloud_init_schema(bad)
    assert r.returncode != 0 and "'path' is a required property" in r.stdout + r.stderr


def test_rendered_user_data_carries_the_source_and_passes_cloud_init(tmp_path, build_module):
    out = tmp_path / "user-data.yaml"
    out.write_text(build_module.render_user_data(TEMPLATE.read_text(), SOURCE))
    r = cloud_init_schema(out)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = yaml.safe_load(out.read_text())
    files = {f["path"]: f["content"] for f in doc["write_files"]}
    assert files[build_module.SOURCE_FILE] == SOURCE + "\n"
    template = yaml.safe_load(TEMPLATE.read_text())
    assert doc["runcmd"] == template["runcmd"] and doc["packages"] == template["packages"]
    assert "example.invalid" not in out.read_text()  # no placeholder address left


@pytest.mark.parametrize("bad", ["", "  ", "qmroct\nrm -rf /"])
def test_the_source_must_be_one_requirement(build_module, bad):
    with pytest.raises(ValueError, match="one pip requirement"):
        build_module.render_user_data(TEMPLATE.read_text(), bad)


def test_build_script_requires_the_source_before_touching_a_cloud():
    r = subprocess.run(
        [sys.executable, str(BUILD), "--base-image", "x", "--flavor", "y", "--name", "z"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "--qmroct-source" in r.stderr


def test_setup_script_stops_without_a_source(tmp_path):
    template = yaml.safe_load(TEMPLATE.read_text())
    setup = next(
        f["content"]
        for f in template["write_files"]
        if f["path"] == "/usr/local/sbin/qmroct-worker-setup"
    )
    script = tmp_path / "setup.sh"
    script.write_text(setup)
    env = {"PATH": "/usr/bin:/bin", "QMROCT_SOURCE_FILE": str(tmp_path / "missing")}
    r = subprocess.run(["sh", str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2
    assert "no qmroct source" in r.stderr and "--qmroct-source" in r.stderr
