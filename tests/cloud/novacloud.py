"""A one-process OpenStack compute cloud for tests: the real Nova 34 API.

Runs Nova's own functional-test stack (API, conductor, scheduler, compute
manager, Placement, quota code; fake hypervisor, Glance, Neutron) in this
process and serves the real Nova WSGI application on 127.0.0.1:PORT.

Every server becomes a real SSH host: the compute driver ``SshFakeDriver``
starts an OpenSSH ``sshd`` per instance on its own loopback address
(127.X.Y.Z), authorises the key pair's public key, gives the instance a
private scratch directory (``TMPDIR`` of its sessions), publishes the address
as ``accessIPv4`` and the host key in the console output (cloud-init format),
and stops the sshd (and every process started through it) when the server is
deleted.

Authentication: Keystone is stubbed; a token ``user:project[:role,role]``
becomes the request identity (user ``admin`` is an admin).

Fault injection and inspection: ``GET/POST /_control`` (JSON), see
``CONTROL_HELP``.  Must run in the Nova venv (``.venv-nova``); see
tests/cloud/README.md.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
import uuid as uuid_mod
import warnings

os.environ.setdefault("OS_NOVA_DISABLE_EVENTLET_PATCHING", "")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from procs import descendants  # noqa: E402  (shared with the executor tests)
from isolation import outermost  # noqa: E402  (shared with the executor tests)
import nova.tests.functional  # noqa: E402,F401  (eventlet monkey patching)
import eventlet  # noqa: E402
import eventlet.wsgi  # noqa: E402
from nova import exception  # noqa: E402
from nova.image import glance as nova_glance  # noqa: E402
from nova.tests.functional import integrated_helpers  # noqa: E402
from nova.virt import fake as nova_fake  # noqa: E402
from neutronclient.common import exceptions as neutron_exc  # noqa: E402

CONTROL_HELP = {
    "boot_delay": "seconds spawn() sleeps (server stays BUILD/spawning)",
    "delete_delay": "seconds destroy() sleeps before the VM is gone",
    "fail_spawns": (
        "the next N spawns raise: the server goes to ERROR (NoValidHost after rescheduling)"
    ),
    "slow_spawns": "the next N spawns sleep slow_spawn_delay seconds instead of boot_delay",
    "slow_spawn_delay": "boot delay of a slow spawn",
    "refuse_ssh": "the next N servers become ACTIVE but never start sshd (connection refused)",
    "ssh_start_delay": "seconds between ACTIVE and sshd accepting connections (slow SSH)",
    "kill": (
        "list of server ids: kill their sshd and every process started through it "
        "(Nova still says ACTIVE)"
    ),
    "hang": "list of server ids: SIGSTOP their sshd and sessions (a hung VM)",
    "snapshot_delay": (
        "seconds a snapshot's upload takes (the image stays queued, Nova shows SAVING)"
    ),
    "boot_from_request": (
        "count boot_delay from the create request, as a user times a boot "
        "(Nova's own "
        "work is then part of the delay instead of added to it)"
    ),
    "add_security_groups": "list of {name, project_id}: security groups the Neutron fixture knows",
    "isolate": "servers started from now on run their sshd in a mount namespace of their own, "
    "where the --hide paths (the head's checkout, home, /tmp) are empty",
}

STATE = {
    "boot_delay": 0.0,
    "delete_delay": 0.0,
    "fail_spawns": 0,
    "slow_spawns": 0,
    "slow_spawn_delay": 0.0,
    "refuse_ssh": 0,
    "ssh_start_delay": 0.0,
    "snapshot_delay": 0.0,
    "boot_from_request": False,
    "isolate": False,
    "spawned": 0,
    "destroyed": 0,
}
INSTANCES: dict[str, dict] = {}
LOCK = threading.Lock()
BASE_DIR = None  # set in main()
CLOUD = None  # the Cloud test case, set in main()
SSH_PORT = 2222
SSHD = "/usr/sbin/sshd"
HIDE: list[str] = []  # paths an isolated server does not see (set in main())
_ADDR_COUNTER = [0]


def _free_address() -> str:
    """Next loopback address whose SSH port is free (SO_REUSEADDR probe)."""
    for _ in range(60000):
        n = _ADDR_COUNTER[0]
        _ADDR_COUNTER[0] += 1
        addr = f"127.42.{(n // 250) % 250 + 1}.{n % 250 + 1}"
        if any(i["address"] == addr for i in INSTANCES.values()):
            continue
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((addr, SSH_PORT))
        except OSError:
            continue
        finally:
            s.close()
        return addr
    raise RuntimeError("no free loopback address")


def _processes_of(uuid: str) -> list[int]:
    """PIDs whose environment carries NOVA_INSTANCE_UUID=uuid, plus the sshd listener."""
    marker = f"NOVA_INSTANCE_UUID={uuid}".encode()
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if marker in env.split(b"\0"):
            pids.append(int(d))
    inst = INSTANCES.get(uuid)
    if inst and inst.get("proc") is not None:
        pids.append(inst["proc"].pid)
        # per-connection sshd children do not carry the SetEnv variable
        pids.extend(descendants(inst["proc"].pid))
    return sorted(set(pids))


def _signal_instance(uuid: str, sig: int) -> int:
    n = 0
    for pid in _processes_of(uuid):
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, sig)
            n += 1
        except ProcessLookupError:
            pass
    return n


def _start_sshd(uuid: str) -> None:
    inst = INSTANCES.get(uuid)
    if inst is None or inst.get("proc") is not None:
        return
    d = inst["dir"]
    conf = os.path.join(d, "sshd_config")
    with open(conf, "w") as f:
        f.write(
            f"ListenAddress {inst['address']}:{SSH_PORT}\n"
            f"HostKey {d}/ssh_host_ed25519_key\n"
            f"AuthorizedKeysFile {d}/authorized_keys\n"
            f"PidFile {d}/sshd.pid\n"
            "StrictModes no\nUsePAM no\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
            "Subsystem sftp internal-sftp\nMaxStartups 200:30:400\nMaxSessions 200\n"
            "AllowTcpForwarding yes\nLogLevel ERROR\nUseDNS no\n"
            # A VM has a home of its own: sessions must not run the head's ~/.bashrc
            # (pyenv's rehash lock there can hang every session for a minute).
            f"SetEnv NOVA_INSTANCE_UUID={uuid} TMPDIR={d}/scratch HOME={d}/home\n"
        )
    os.makedirs(os.path.join(d, "home"), exist_ok=True)
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    log = open(os.path.join(d, "sshd.log"), "ab")
    cmd = [SSHD, "-D", "-e", "-f", conf]
    if inst.get("isolated"):
        cmd = _isolated(d, cmd)
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    inst["proc"] = proc
    deadline = time.time() + 10
    while time.time() < deadline:
        s = socket.socket()
        s.settimeout(0.2)
        try:
            s.connect((inst["address"], SSH_PORT))
            s.close()
            inst["ssh_ready"] = time.time()
            return
        except OSError:
            time.sleep(0.02)
        finally:
            s.close()
        if proc.poll() is not None:
            break
    inst["ssh_error"] = "sshd did not start"


def _isolated(d: str, cmd: list[str]) -> list[str]:
    """``cmd`` in a mount namespace of its own (``unshare``) where every path in HIDE is an
    empty tmpfs, except the instance's own directory, kept at its path: what runs through
    this sshd sees neither the head's checkout and virtual environments, nor its home, nor
    its temporary folders (the pytest folders of the head's workdirs among them). The
    network, users and processes stay shared: the head reaches the server over loopback and
    the test cloud kills its processes by pid."""
    keep = "/mnt"  # an empty directory to hold the instance directory while /tmp is covered
    script = ["set -e", "mount --make-rprivate /", f"mount --bind {d} {keep}"]
    for path in HIDE:
        script.append(f"mount -t tmpfs -o mode=0755 tmpfs {path}")
    script += [f"mkdir -p {d}", f"mount --move {keep} {d}", 'exec "$@"']
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        "; ".join(script),
        "sh",
        *cmd,
    ]


class SshFakeDriver(nova_fake.FakeDriver):
    """Fake hypervisor whose servers are real SSH hosts on loopback addresses."""

    vcpus = 64
    memory_mb = 262144
    local_gb = 10000

    def spawn(
        self,
        context,
        instance,
        image_meta,
        injected_files,
        admin_password,
        allocations,
        network_info=None,
        block_device_info=None,
        power_on=True,
        accel_info=None,
    ):
        uuid = instance.uuid
        with LOCK:
            STATE["spawned"] += 1
            if STATE["fail_spawns"] > 0:
                STATE["fail_spawns"] -= 1
                raise exception.ComputeResourcesUnavailable(reason="injected spawn failure")
            if STATE["slow_spawns"] > 0:
                STATE["slow_spawns"] -= 1
                delay = float(STATE["slow_spawn_delay"])
            else:
                delay = float(STATE["boot_delay"])
            refuse = STATE["refuse_ssh"] > 0
            if refuse:
                STATE["refuse_ssh"] -= 1
            ssh_delay = float(STATE["ssh_start_delay"])
        if delay and STATE["boot_from_request"] and instance.created_at is not None:
            # A user times a boot from the create request to a usable server; under
            # load Nova's API, conductor and scheduler take seconds of that before
            # spawn() is even called (benchmarks/executor counts on the nominal boot).
            delay = max(0.0, delay - (time.time() - instance.created_at.timestamp()))
        if delay:
            time.sleep(delay)
        super().spawn(
            context,
            instance,
            image_meta,
            injected_files,
            admin_password,
            allocations,
            network_info,
            block_device_info,
            power_on,
            accel_info,
        )
        d = os.path.join(BASE_DIR, uuid)
        os.makedirs(os.path.join(d, "scratch"), exist_ok=True)
        os.chmod(d, 0o700)
        subprocess.run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                f"root@{instance.hostname}",
                "-f",
                os.path.join(d, "ssh_host_ed25519_key"),
            ],
            check=True,
            stdin=subprocess.DEVNULL,
        )
        with open(os.path.join(d, "authorized_keys"), "w") as f:
            f.write((instance.key_data or "") + "\n")
        address = _free_address()
        INSTANCES[uuid] = {
            "uuid": uuid,
            "address": address,
            "dir": d,
            "proc": None,
            "name": instance.display_name,
            "active": time.time(),
            "refuse": refuse,
            "isolated": bool(STATE["isolate"]),
        }
        instance.access_ip_v4 = address
        if refuse:
            return
        if ssh_delay:
            eventlet.spawn_after(ssh_delay, _start_sshd, uuid)
        else:
            _start_sshd(uuid)

    def get_console_output(self, context, instance):
        inst = INSTANCES.get(instance.uuid)
        if not inst:
            return "booting\n"
        with open(os.path.join(inst["dir"], "ssh_host_ed25519_key.pub")) as f:
            pub = f.read().strip()
        return (
            f"[    0.000000] Linux version fake ({instance.uuid})\n"
            "ci-info: no authorized SSH keys fingerprints found for user ubuntu.\n"
            "-----BEGIN SSH HOST KEY KEYS-----\n"
            f"{pub}\n"
            "-----END SSH HOST KEY KEYS-----\n"
            "Cloud-init finished\n"
        )

    def snapshot(self, context, instance, image_id, update_task_state):
        """Upload the image as a real driver does: Nova's API created the image record
        (queued, see _queued_snapshots); the image becomes active only when the driver's
        upload through Nova's image API is done, after ``snapshot_delay`` seconds."""
        super().snapshot(context, instance, image_id, update_task_state)
        delay = float(STATE["snapshot_delay"])
        if delay:
            time.sleep(delay)
        data = f"fake disk of {instance.uuid}\n".encode()
        nova_glance.API().update(
            context,
            image_id,
            {
                "status": "active",
                "size": len(data),
                "disk_format": "raw",
                "container_format": "bare",
            },
            data=io.BytesIO(data),
            purge_props=False,
        )

    def destroy(
        self,
        context,
        instance,
        network_info,
        block_device_info=None,
        destroy_disks=True,
        destroy_secrets=True,
    ):
        delay = float(STATE["delete_delay"])
        if delay and instance.uuid in self.instances:
            time.sleep(delay)
        _stop_instance(instance.uuid)
        with LOCK:
            STATE["destroyed"] += 1
        super().destroy(
            context, instance, network_info, block_device_info, destroy_disks, destroy_secrets
        )


def _stop_instance(uuid: str) -> None:
    inst = INSTANCES.get(uuid)
    if not inst:
        return
    _signal_instance(uuid, signal.SIGCONT)
    for _ in range(3):
        if _signal_instance(uuid, signal.SIGKILL) == 0:
            break
        time.sleep(0.05)
    if inst.get("proc") is not None:
        try:
            inst["proc"].wait(timeout=5)
        except Exception:
            pass
    INSTANCES.pop(uuid, None)
    shutil.rmtree(inst["dir"], ignore_errors=True)


# Nova imports "nova.virt." + compute_driver: register the module there.
_mod = types.ModuleType("nova.virt.sshfake")
_mod.SshFakeDriver = SshFakeDriver
sys.modules["nova.virt.sshfake"] = _mod


class Cloud(integrated_helpers._IntegratedTestBase):
    CAST_AS_CALL = False
    ADMIN_API = True
    api_major_version = "v2.1"

    def runTest(self):  # pragma: no cover - testtools wants one
        pass

    def _setup_compute_service(self):
        self.flags(compute_driver="sshfake.SshFakeDriver")
        self.flags(max_concurrent_builds=50)
        return self._start_compute("compute")

    def setUp(self):
        self.flags(api_paste_config=os.path.join(sys.prefix, "etc/nova/api-paste.ini"))
        super().setUp()
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        self.flags(response_validation="warn", group="api")
        _find_resource_for(self.neutron)
        _ports_keep_security_groups(self.neutron)
        _default_group_per_project(self.neutron)
        _queued_snapshots(self.glance)


def _find_resource_for(neutron) -> None:
    """Give Nova's NeutronFixture the neutronclient lookup Nova uses for security group names.

    Nova resolves every requested group other than 'default' with neutronclient's
    ``find_resource`` (compute.api._check_requested_secgroups -> security_group_api.validate_name);
    the fixture lacks it, so any other name gave a 500 (AttributeError) instead of Nova's own
    400 "Security group ... not found". Same semantics as neutronclient: by id, else by name
    within the project, NotFound (404) when there is none."""

    def find_resource(
        resource, name_or_id, project_id=None, cmd_resource=None, parent_id=None, fields=None
    ):
        if resource != "security_group":
            raise neutron_exc.NotFound(message=f"test cloud: no lookup for {resource}")
        groups = neutron._security_groups.values()
        for g in groups:
            if g["id"] == name_or_id:
                return dict(g)
        found = [
            g
            for g in groups
            if g["name"] == name_or_id and (not project_id or g.get("tenant_id") == project_id)
        ]
        if len(found) > 1:
            raise neutron_exc.NeutronClientNoUniqueMatch(resource=resource, name=name_or_id)
        if not found:
            raise neutron_exc.NotFound(
                message=f"Unable to find {resource} with name or id '{name_or_id}'"
            )
        return dict(found[0])

    neutron.find_resource = find_resource


def _ports_keep_security_groups(neutron) -> None:
    """Ports keep the security groups Nova asked for, as in Neutron.

    The fixture's create_port lays its template port (group 'default') over the request, so
    every server reported only 'default' whatever was requested."""
    create_port = neutron.create_port

    def create_port_with_groups(body=None):
        out = create_port(body)
        requested = ((body or {}).get("port") or {}).get("security_groups")
        if requested is not None:
            neutron._ports[out["port"]["id"]]["security_groups"] = list(requested)
            out["port"]["security_groups"] = list(requested)
        return out

    neutron.create_port = create_port_with_groups


def _default_group_per_project(neutron) -> None:
    """Every project has a 'default' group, as Neutron creates one on a project's first use.

    The fixture has one 'default' for its own fixed project only, so a server that asked for
    'default' together with another group failed to build (Nova looks the names up within the
    server's project) and ended in ERROR after rescheduling."""
    list_security_groups = neutron.list_security_groups

    def list_with_default(retrieve_all=True, **params):
        project = params.get("tenant_id") or params.get("project_id")
        if isinstance(project, str) and not any(
            g["name"] == "default" and g.get("tenant_id") == project
            for g in neutron._security_groups.values()
        ):
            add_security_group(neutron, "default", project)
        return list_security_groups(retrieve_all, **params)

    neutron.list_security_groups = list_with_default


def _queued_snapshots(glance) -> None:
    """Snapshot image records start 'queued', as in Glance, instead of the fixture's instant
    'active' (its own comment calls that "mostly a lie"); SshFakeDriver.snapshot uploads them."""
    create = glance.create

    def create_queued(context, metadata, data=None):
        if (metadata.get("properties") or {}).get(
            "image_type"
        ) == "snapshot" and "status" not in metadata:
            metadata = dict(metadata, status="queued")
        return create(context, metadata, data)

    glance.create = create_queued


def add_security_group(neutron, name: str, project_id: str) -> dict:
    sg = {
        "id": str(uuid_mod.uuid4()),
        "name": name,
        "description": "test cloud group",
        "tenant_id": project_id,
        "project_id": project_id,
        "security_group_rules": [],
    }
    neutron._security_groups[sg["id"]] = sg
    return sg


def _control(environ, start_response):
    method = environ["REQUEST_METHOD"]
    if method == "POST":
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        req = json.loads(body or b"{}")
        with LOCK:
            for k, v in req.items():
                if k in STATE and k not in ("spawned", "destroyed"):
                    STATE[k] = v
        for uuid in req.get("kill", []):
            _signal_instance(uuid, signal.SIGKILL)
            inst = INSTANCES.get(uuid)
            if inst:
                inst["killed"] = True
        for uuid in req.get("hang", []):
            _signal_instance(uuid, signal.SIGSTOP)
        for g in req.get("add_security_groups", []):
            add_security_group(CLOUD.neutron, g["name"], g["project_id"])
    out = {
        "state": dict(STATE),
        "help": CONTROL_HELP,
        "instances": {u: {k: v for k, v in i.items() if k != "proc"} for u, i in INSTANCES.items()},
        "security_groups": list(CLOUD.neutron._security_groups.values()) if CLOUD else [],
    }
    data = json.dumps(out).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]


def _image_v2(img: dict) -> dict:
    """An image of the Glance fixture in Glance v2's JSON form (properties at the top level)."""
    out = {
        k: v
        for k, v in img.items()
        if k not in ("properties", "is_public", "deleted", "deleted_at")
    }
    props = dict(img.get("properties") or {})
    out.update({k: str(v) for k, v in props.items() if k != "owner"})
    out["owner"] = img.get("owner") or props.get("owner")
    out["visibility"] = img.get("visibility") or ("private" if out["owner"] else "public")
    for k in ("created_at", "updated_at"):
        if hasattr(out.get(k), "isoformat"):
            out[k] = out[k].strftime("%Y-%m-%dT%H:%M:%SZ")
    out["self"] = f"/v2/images/{img['id']}"
    out["file"] = f"/v2/images/{img['id']}/file"
    out["schema"] = "/v2/schemas/image"
    return out


def _glance(environ, start_response, project: str, admin: bool):
    """A read-only Glance v2 image API over Nova's GlanceFixture (the images Nova itself uses),
    so clients can wait for a snapshot the way they do on a real cloud (GET /v2/images/{id})."""
    from urllib.parse import parse_qs

    path = environ.get("PATH_INFO", "")[len("/image") :].rstrip("/")
    method = environ["REQUEST_METHOD"]

    def reply(status, obj=None):
        data = json.dumps(obj, default=str).encode() if obj is not None else b""
        start_response(
            status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
        )
        return [data]

    def visible(img):
        v = _image_v2(img)
        return admin or v["visibility"] in ("public", "community") or v["owner"] == project

    host = environ.get("HTTP_HOST", "127.0.0.1")
    if path == "" and method == "GET":
        return reply(
            "300 Multiple Choices",
            {
                "versions": [
                    {
                        "id": "v2.16",
                        "status": "CURRENT",
                        "links": [{"rel": "self", "href": f"http://{host}/image/v2/"}],
                    }
                ]
            },
        )
    images = CLOUD.glance.images
    if path == "/v2/images" and method == "GET":
        q = parse_qs(environ.get("QUERY_STRING", ""))
        out = [_image_v2(i) for i in images.values() if visible(i)]
        for key in ("name", "status", "visibility", "owner"):
            if key in q:
                out = [i for i in out if str(i.get(key)) == q[key][0]]
        return reply(
            "200 OK", {"images": out, "first": "/v2/images", "schema": "/v2/schemas/images"}
        )
    m = re.fullmatch(r"/v2/images/([^/]+)", path)
    if m:
        img = images.get(m.group(1))
        if img is None or not visible(img):
            return reply("404 Not Found", {"message": f"No image found with ID {m.group(1)}"})
        if method == "GET":
            return reply("200 OK", _image_v2(img))
        if method == "DELETE":
            CLOUD.glance.delete(None, img["id"])
            return reply("204 No Content")
    return reply("404 Not Found", {"message": f"test cloud: {method} {path} not served"})


def identity_filter(app):
    """Map the token ``user:project[:roles]`` to the stubbed Keystone identity."""

    def wrapped(environ, start_response):
        token = environ.get("HTTP_X_AUTH_TOKEN", "")
        parts = token.split(":")
        if len(parts) < 2 or not parts[0] or not parts[1]:
            start_response("401 Unauthorized", [("Content-Type", "text/plain")])
            return [b"token must be user:project[:roles]"]
        user, project = parts[0], parts[1]
        roles = (
            parts[2]
            if len(parts) > 2
            else ("reader,member,admin" if user == "admin" else "reader,member")
        )
        if environ.get("PATH_INFO", "").startswith("/_control"):
            if user != "admin":
                start_response("403 Forbidden", [("Content-Type", "text/plain")])
                return [b"admin only"]
            return _control(environ, start_response)
        if environ.get("PATH_INFO", "").startswith("/image"):
            return _glance(environ, start_response, project, "admin" in roles.split(","))
        environ["HTTP_X_AUTH_USER"] = user
        environ["HTTP_X_USER_ID"] = user
        environ["HTTP_X_AUTH_PROJECT_ID"] = project
        environ["HTTP_X_PROJECT_ID"] = project
        environ["HTTP_X_ROLES"] = roles
        return app(environ, start_response)

    return wrapped


def main(argv=None) -> None:
    global BASE_DIR, SSH_PORT, CLOUD
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=18774, help="API port on 127.0.0.1 (0: pick one)")
    p.add_argument("--ssh-port", type=int, default=2222, help="sshd port on every instance address")
    p.add_argument(
        "--state-dir", default=None, help="instance directories (wiped at start and end)"
    )
    p.add_argument(
        "--ready-file", default=None, help="write {endpoint, pid} JSON here when serving"
    )
    p.add_argument("--boot-delay", type=float, default=0.0)
    p.add_argument("--delete-delay", type=float, default=0.0)
    p.add_argument(
        "--boot-from-request", action="store_true", help=CONTROL_HELP["boot_from_request"]
    )
    p.add_argument(
        "--hide",
        action="append",
        default=None,
        metavar="PATH",
        help="a path isolated servers do not see (repeatable; default: /tmp, $HOME "
        "and the repository this file is in)",
    )
    p.add_argument("--isolate", action="store_true", help=CONTROL_HELP["isolate"])
    args = p.parse_args(argv)
    STATE["boot_from_request"] = args.boot_from_request
    STATE["isolate"] = args.isolate
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    hidden = args.hide or ["/tmp", os.path.expanduser("~"), repo]
    HIDE[:] = outermost([os.path.abspath(x) for x in hidden])
    SSH_PORT = args.ssh_port
    STATE["boot_delay"] = args.boot_delay
    STATE["delete_delay"] = args.delete_delay
    BASE_DIR = os.path.abspath(args.state_dir or tempfile.mkdtemp(prefix="novacloud-"))
    shutil.rmtree(BASE_DIR, ignore_errors=True)
    os.makedirs(BASE_DIR, mode=0o700)
    if not os.path.exists(SSHD):
        sys.exit(f"{SSHD} not found: apt-get install -y openssh-server")

    def stop(*_):
        for uuid in list(INSTANCES):
            _stop_instance(uuid)
        shutil.rmtree(BASE_DIR, ignore_errors=True)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    cloud = CLOUD = Cloud()
    cloud.setUp()
    app = identity_filter(cloud.api_fixture.app())
    sock = eventlet.listen(("127.0.0.1", args.port), reuse_port=False)
    port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}/v2.1"
    if args.ready_file:
        tmp = args.ready_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(
                {
                    "endpoint": endpoint,
                    "image_endpoint": f"http://127.0.0.1:{port}/image",
                    "pid": os.getpid(),
                    "state_dir": BASE_DIR,
                    "ssh_port": SSH_PORT,
                },
                f,
            )
        os.replace(tmp, args.ready_file)
    print(f"nova test cloud serving {endpoint} (ssh port {SSH_PORT}, state {BASE_DIR})", flush=True)
    try:
        eventlet.wsgi.server(sock, app, log_output=False, max_size=200)
    finally:
        stop()


if __name__ == "__main__":
    main()
