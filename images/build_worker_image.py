"""Build the worker image: boot a base image with cloud-init user data, wait for the ready
marker on the console, stop the server, snapshot it (Nova createImage), wait until the
image is active in Glance, delete the server.

    python images/build_worker_image.py --cloud mycloud --base-image debian-12 \
        --flavor m1.medium --network private --name qmroct-worker-2026-11 \
        --qmroct-source "qmroct @ git+https://git.example.org/qmroct.git@v1.2" \
        [--user-data images/worker-cloud-init.yaml] [--timeout 1800]

``--qmroct-source`` (a pip requirement: a git URL with a tag, a wheel's URL, ``qmroct==X`` from
an index) is written into the user data as /etc/qmroct-worker/qmroct-source, where the
setup script in worker-cloud-init.yaml reads it.

Prints the new image id (only it, on stdout; progress goes to stderr). The builder server is
deleted on success, failure and Ctrl-C; an image whose upload failed is deleted too.
"""

from __future__ import annotations

import argparse
import base64
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
SOURCE_FILE = "/etc/qmroct-worker/qmroct-source"  # read by the setup script in the user data


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the setup script) as literal blocks, readable in the console."""


_BlockDumper.add_representer(
    str,
    lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", v, style="|" if "\n" in v else None),
)


def render_user_data(template: str, qmroct_source: str) -> str:
    """The cloud-config ``template`` with the qmroct source added as a file for its setup."""
    source = qmroct_source.strip()
    if not source or "\n" in source:
        raise ValueError(f"--qmroct-source must be one pip requirement, got {qmroct_source!r}")
    doc = yaml.safe_load(template)
    if not isinstance(doc, dict):
        raise ValueError("user data template is not a cloud-config mapping")
    files = list(doc.get("write_files") or [])
    files.insert(0, {"path": SOURCE_FILE, "permissions": "0644", "content": source + "\n"})
    doc["write_files"] = files
    return "#cloud-config\n" + yaml.dump(doc, Dumper=_BlockDumper, sort_keys=False, width=1000)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cloud", default=None, help="clouds.yaml entry (default: OS_CLOUD / OS_*)")
    p.add_argument("--base-image", required=True)
    p.add_argument("--flavor", required=True)
    p.add_argument("--network", default=None, help="network name/id, or 'none'")
    p.add_argument("--name", required=True, help="name of the image to create")
    p.add_argument(
        "--qmroct-source",
        required=True,
        help="pip requirement qmroct is installed from on the worker "
        "(git URL with a tag, wheel URL, or qmroct==VERSION)",
    )
    p.add_argument(
        "--user-data",
        default=str(HERE / "worker-cloud-init.yaml"),
        help="cloud-config template (the qmroct source is added to it)",
    )
    p.add_argument("--ready-marker", default="QMROCT-WORKER-READY")
    p.add_argument("--failed-marker", default="QMROCT-WORKER-FAILED")
    p.add_argument(
        "--timeout",
        type=float,
        default=1800,
        help="seconds for each phase: boot and setup, snapshot upload",
    )
    a = p.parse_args(argv)
    try:
        user_data = render_user_data(Path(a.user_data).read_text(), a.qmroct_source)
    except ValueError as e:
        p.error(str(e))
    import openstack  # after the arguments are checked: --help and mistakes need no cloud

    conn = openstack.connect(cloud=a.cloud) if a.cloud else openstack.connect()
    c = conn.compute
    flavor = c.find_flavor(a.flavor, ignore_missing=False)
    image_id = a.base_image
    try:
        img = conn.image.find_image(a.base_image, ignore_missing=True)
        image_id = img.id if img else a.base_image
    except Exception:
        pass
    if a.network in (None, "auto", "none"):
        networks = a.network or "auto"
    else:
        net = conn.network.find_network(a.network, ignore_missing=False)
        networks = [{"uuid": net.id}]
    user_data = base64.b64encode(user_data.encode()).decode()
    server = c.create_server(
        name=f"{a.name}-builder",
        image_id=image_id,
        flavor_id=flavor.id,
        networks=networks,
        user_data=user_data,
        metadata={"purpose": "qmroct worker image build"},
    )
    print(f"builder server {server.id}", file=sys.stderr)
    try:
        server = c.wait_for_server(server, wait=int(a.timeout), interval=2)
        deadline = time.time() + a.timeout
        while True:
            out = c.get_server_console_output(server).get("output", "")
            if a.failed_marker in out:
                raise SystemExit(
                    "worker setup failed; see /var/log/qmroct-worker-setup.log on the builder"
                )
            if a.ready_marker in out:
                break
            if time.time() > deadline:
                raise SystemExit("timed out waiting for the worker setup")
            time.sleep(5)
        print("worker setup done; stopping the builder for a consistent snapshot", file=sys.stderr)
        c.stop_server(server)
        c.wait_for_server(server, status="SHUTOFF", wait=600, interval=2)
        # createImage returns at once with the image queued; the hypervisor uploads the disk and
        # Glance marks the image active only then: booting workers from it before would fail
        image = c.create_server_image(server, a.name, metadata={"qmroct-worker": "1"})
        print(
            f"snapshot {image.id} requested ({image.status}); waiting until it is active",
            file=sys.stderr,
        )
        try:
            image = conn.wait_for_image(image, timeout=a.timeout)
        except BaseException:
            try:  # a half-uploaded snapshot is useless: do not leave it behind
                conn.image.delete_image(image.id, ignore_missing=True)
            except Exception as e:
                print(f"could not delete the unfinished image {image.id}: {e}", file=sys.stderr)
            raise
        print(image.id)
        return 0
    finally:
        c.delete_server(server)
        c.wait_for_delete(server, wait=600, interval=2)
        print(f"builder server {server.id} deleted", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
