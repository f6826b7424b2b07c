"""The worker image build (images/build-worker-image.sh) end to end against the Nova test cloud:
boot with user data, ready marker on the console, stop, createImage, wait for the image to be
active in Glance, delete the builder, print the image id.

The test cloud's fake VMs do not run cloud-init, so the ready marker is the line its console
always ends with; the snapshot is Nova's real createImage path, with the upload done by the
test cloud's driver and the image read back through its Glance v2 API (tests/cloud/README.md)."""

from __future__ import annotations

import re
import subprocess
import time

import openstack
import pytest
from openstack import exceptions

from tests.executor.helpers import IMAGE, REPO

pytestmark = pytest.mark.cloud

SCRIPT = REPO / "images" / "build-worker-image.sh"


def image_cloud(project, tmp_path):
    """clouds.yaml of the project with the test cloud's Glance endpoint, as a real cloud's
    catalog has."""
    glance = project.cloud.endpoint.replace("/v2.1", "/image")
    y = tmp_path / "clouds-image.yaml"
    y.write_text(project.clouds_yaml.read_text() + f"    image_endpoint_override: {glance}\n")
    conn = openstack.connect(
        auth_type="admin_token",
        image_endpoint_override=glance,
        auth={"endpoint": project.cloud.endpoint, "token": f"{project.user}:{project.name}"},
    )
    return y, conn


def build(project, clouds_yaml, *extra, timeout=180):
    env = project.env(OS_CLIENT_CONFIG_FILE=str(clouds_yaml))
    t0 = time.time()
    r = subprocess.run(
        [
            "bash",
            str(SCRIPT),
            "--cloud",
            "testcloud",
            "--base-image",
            IMAGE,
            "--flavor",
            "m1.small",
            "--network",
            "none",
            "--name",
            "qmroct-worker-test",
            "--ready-marker",
            "Cloud-init finished",
            "--timeout",
            "60",
            "--qmroct-source",
            "qmroct @ git+https://git.example.org/qmroct.git@v0.0-test",
            *extra,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return r, time.time() - t0


def builder_id(stderr: str) -> str:
    m = re.search(r"builder server ([0-9a-f-]{36})", stderr)
    assert m, stderr
    return m.group(1)


def test_build_snapshots_waits_for_active_and_removes_the_builder(project, nova_cloud, tmp_path):
    clouds_yaml, conn = image_cloud(project, tmp_path)
    nova_cloud.control(snapshot_delay=3)  # the upload takes a while, as on a real cloud
    try:
        r, took = build(project, clouds_yaml)
    finally:
        nova_cloud.control(snapshot_delay=0)
    assert r.returncode == 0, r.stderr[-3000:]
    image_id = r.stdout.strip()
    assert re.fullmatch(r"[0-9a-f-]{36}", image_id), r.stdout
    assert "(queued); waiting until it is active" in r.stderr  # it really had to wait
    assert took >= 3
    builder = builder_id(r.stderr)
    img = conn.image.get_image(image_id)
    assert img.status == "active" and img.name == "qmroct-worker-test"
    assert img.instance_uuid == builder and img.owner == project.name
    assert img.properties.get("qmroct-worker") == "1"
    with pytest.raises(exceptions.NotFoundException):
        project.conn.compute.get_server(builder)
    assert project.servers() == []
    # the new image boots servers (what the executor will do with it); Nova set its min_disk
    # from the builder's flavor, so workers need at least that disk
    assert img.min_disk == 20
    flavor = project.conn.compute.find_flavor("m1.small", ignore_missing=False)
    s = project.conn.compute.create_server(
        name="from-snapshot", image_id=image_id, flavor_id=flavor.id, networks="none"
    )
    s = project.conn.compute.wait_for_server(s, interval=0.3, wait=60)
    assert s.status == "ACTIVE" and s.image.id == image_id
    project.conn.compute.delete_server(s)


def test_failed_setup_leaves_neither_builder_nor_image(project, nova_cloud, tmp_path):
    clouds_yaml, conn = image_cloud(project, tmp_path)
    r, _ = build(project, clouds_yaml, "--failed-marker", "Cloud-init finished")
    assert r.returncode != 0
    assert "worker setup failed" in r.stderr
    assert r.stdout.strip() == ""
    with pytest.raises(exceptions.NotFoundException):
        project.conn.compute.get_server(builder_id(r.stderr))
    assert project.servers() == []
    assert [i for i in conn.image.images(owner=project.name)] == []
