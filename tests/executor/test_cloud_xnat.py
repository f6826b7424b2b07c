"""XNAT and OpenStack together: the qmroct workflow with the XNAT backend (the XNAT test server
on loopback) and the openstack executor on ISOLATED workers (tests/cloud/README.md), which share
the network with the head (so they reach the server on 127.0.0.1) but none of its files.

Who made each request: the XNAT test server records the client's address and the credential
(`password`, `alias:<alias>`) of every request; while the request is being served (its
connection still open) the test finds the process that owns the client's socket (/proc/net/tcp,
then /proc/<pid>/fd) and calls it a worker when its environment carries the test cloud's
NOVA_INSTANCE_UUID (every session of a fake VM's sshd does), the head otherwise.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import getpass
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from tests.executor.helpers import (
    OPENSTACK_RUN,
    kqi_results,
    local_kqi_results,
    run_summary,
)
from tests.support import REPO, copy_workflow
from tests.xnat.helpers import USER
from tests.xnat_server import XnatTestServer
from tests.xnat_server.load import upload_archive
from tests.xnat_server.server import DEFAULT_SCHEMA_DIR

SHAPE = (5, 128, 64)
ALGORITHMS = ("noise", "signal")


# ------------------------------------------------------------ who owns a client socket
def _socket_inode(ip: str, port: int) -> str | None:
    """The inode of the TCP socket whose local end is ip:port (the client's end)."""
    local = "%08X:%04X" % (struct.unpack("<I", socket.inet_aton(ip))[0], port)
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if parts[1] == local:
                return parts[9]
    return None


def _socket_owner(inode: str) -> int | None:
    link = f"socket:[{inode}]"
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == link:
                    return int(pid)
            except OSError:
                continue
    return None


HEAD_MNT_NS = os.readlink("/proc/self/ns/mnt")


def request_origin(peer: str) -> dict:
    """{"where": "worker <uuid>" | "head" | "unknown", "pid", "own_mounts"} for a client
    address "ip:port" whose connection is open."""
    ip, port = peer.rsplit(":", 1)
    inode = _socket_inode(ip, int(port))
    pid = _socket_owner(inode) if inode else None
    if pid is None:
        return {"where": "unknown", "pid": None, "own_mounts": False}
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        mnt = os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return {"where": "unknown", "pid": pid, "own_mounts": False}
    uuid = next(
        (e.split(b"=", 1)[1].decode() for e in env if e.startswith(b"NOVA_INSTANCE_UUID=")), None
    )
    return {
        "where": f"worker {uuid}" if uuid else "head",
        "pid": pid,
        "own_mounts": mnt != HEAD_MNT_NS,
    }


class OriginLog:
    """Adds "origin" to every request the XNAT test server records (while the request is
    served, so the client's socket still exists)."""

    def __init__(self, server: XnatTestServer):
        self.server = server
        record = server.record

        def record_with_origin(entry):
            entry["origin"] = request_origin(entry["peer"])
            record(entry)

        server.record = record_with_origin


# ------------------------------------------------------------ the workflow
def make_workflow(root: Path, server_url: str) -> Path:
    copy_workflow(root)
    shutil.copytree(REPO / "profiles", root / "profiles")  # --workflow-profile openstack
    cfg = yaml.safe_load((root / "config.yaml").read_text())
    cfg["archive"] = {"backend": "xnat", "server": server_url, "backoff": 0.1}
    cfg["projects"] = ["DEMO"]
    cfg["algorithms"] = {name: {} for name in ALGORITHMS}
    cfg["studies"] = {}
    (root / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return root


def history_states(requests: list[dict]) -> dict[tuple[str, str], list[tuple[str, dict]]]:
    """(session id, pipeline) -> [(status, request)] of the History rows PUT in ``requests``."""
    rows: dict[tuple[str, str], list[tuple[str, dict]]] = {}
    for r in requests:
        if r["method"] != "PUT" or not r["target"].startswith("/data/workflows?"):
            continue
        q = {k: v[0] for k, v in parse_qs(urlsplit(r["target"]).query).items()}
        key = (q["wrk:workflowData/id"], q["wrk:workflowData/pipeline_name"])
        rows.setdefault(key, []).append((q["wrk:workflowData/status"], r))
    return rows


def worker_listing(project, server) -> list[str]:
    """Every path under the worker's $TMPDIR, /tmp and $HOME, as the worker sees them
    (through its own sshd, so inside its mount namespace)."""
    addr = server.access_ipv4
    r = subprocess.run(
        [
            "ssh",
            "-i",
            str(project.key),
            "-p",
            str(project.cloud.ssh_port),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            f"{getpass.getuser()}@{addr}",
            'for d in "$TMPDIR" /tmp "$HOME"; do find "$d" -mindepth 1; done',
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_access_log_names_the_credential_of_each_request(tmp_path):
    """The XNAT test server's access log says which credential each request came with:
    the password, an alias token, or the one that opened the JSESSION it carries."""
    import requests

    with XnatTestServer(tmp_path / "data", users={USER: "pw-x"}) as server:
        OriginLog(server)
        http = requests.Session()
        token = http.get(f"{server.url}/data/services/tokens/issue", auth=(USER, "pw-x")).json()
        http.get(f"{server.url}/data/projects", auth=(USER, "pw-x"))  # cookie of the password
        by_alias = requests.Session()
        by_alias.get(f"{server.url}/data/projects", auth=(token["alias"], token["secret"]))
        by_alias.get(f"{server.url}/data/projects")  # the cookie the alias opened
        assert requests.get(f"{server.url}/data/projects", auth=(USER, "wrong")).status_code == 401
        http.get(f"{server.url}/data/projects")
        got = [(r["auth"], r["origin"]["where"]) for r in server.requests]
        log = (tmp_path / "data" / "access.log").read_text()
    alias = f"alias:{token['alias']}"
    assert got == [
        ("password", "head"),
        ("password", "head"),
        (alias, "head"),
        (alias, "head"),
        ("-", "head"),
        ("password", "head"),
    ]
    assert token["secret"] not in log and "pw-x" not in log
    assert [line.split()[2] for line in log.splitlines()] == [a for a, _ in got]


@pytest.mark.cloud
def test_xnat_workflow_on_isolated_openstack_workers(project, nova_cloud, isolated, tmp_path):
    from qmroct.synth.demo import build_demo_archive

    password = "pw-" + os.urandom(12).hex()
    server = XnatTestServer(
        tmp_path / "xnat-data",
        users={USER: password},
        schema_dir=DEFAULT_SCHEMA_DIR if (DEFAULT_SCHEMA_DIR / "xnat").is_dir() else None,
    )
    OriginLog(server)
    server.store.put_project("DEMO", {})
    with server:
        import pyxnat

        demo = tmp_path / "demo"
        build_demo_archive(demo, sessions=2, seed=5, shape=SHAPE)
        intf = pyxnat.Interface(server=server.url, user=USER, password=password)
        labels = upload_archive(intf, demo / "archive")
        assert len(labels) == 2
        sessions = {r["label"]: r["ID"] for r in intf._get_json("/data/projects/DEMO/experiments")}
        intf._http.close()

        path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
        creds = {"XNAT_USER": USER, "XNAT_PASS": password, "PATH": path}

        # the reference: the same workflow on this machine
        local = make_workflow(tmp_path / "local", server.url)
        env_local = dict(os.environ, **creds)
        for k in ("XNAT_HOST", "NETRC"):
            env_local.pop(k, None)
        ref = local_kqi_results(local, env_local)
        assert len(ref) == len(sessions) * len(ALGORITHMS)

        # the same on isolated workers; servers kept at the end so that the test can look
        # at what the jobs left on them
        remote = make_workflow(tmp_path / "remote", server.url)
        mark = len(server.requests)
        env = project.env(**creds)
        for k in ("XNAT_HOST", "NETRC"):
            env.pop(k, None)
        args = [
            *OPENSTACK_RUN,
            *project.executor_args(
                max_servers=2,
                remote_path_prefix=isolated,
                idle_timeout=600,
                envvars_from_head="XNAT_USER,XNAT_PASS",
                keep_servers=True,
            ),
        ]
        r = subprocess.run(args, cwd=remote, env=env, capture_output=True, text=True, timeout=900)
        log = r.stdout + r.stderr
        assert r.returncode == 0, log[-5000:]
        requests = server.requests[mark:]

    # 1. the KQIs are those of the local run; the jobs ran on the VMs
    assert kqi_results(remote) == ref
    summ = run_summary(remote)
    assert summ["jobs_done"] == len(sessions) and summ["jobs_failed"] == 0, summ
    assert password not in log

    # 2. workers reached XNAT with alias tokens only; the password only from the head
    unknown = [r for r in requests if r["origin"]["where"] == "unknown"]
    assert unknown == [], unknown[:5]
    from_workers = [r for r in requests if r["origin"]["where"].startswith("worker ")]
    assert from_workers, "no job reached XNAT from a worker"
    # the workers' processes are the isolated ones (a mount namespace of their own)
    assert all(r["origin"]["own_mounts"] for r in from_workers)
    assert {r["auth"].split(":")[0] for r in from_workers} == {"alias"}, sorted(
        {(r["auth"], r["method"], r["target"]) for r in from_workers if r["auth"] != "alias"}
    )[:5]
    issued = {row["alias"] for row in server.store.q("SELECT alias FROM tokens")}
    assert {r["auth"].split(":", 1)[1] for r in from_workers} <= issued
    by_password = [r for r in requests if r["auth"] == "password"]
    assert by_password and all(r["origin"]["where"] == "head" for r in by_password)
    # the scans were downloaded by the workers, not by the head
    downloads = [r for r in requests if r["method"] == "GET" and "/files/" in r["target"]]
    assert downloads and all(r["origin"]["where"].startswith("worker ") for r in downloads)
    assert server.store.q("SELECT * FROM tokens WHERE enabled=1") == []  # invalidated at the end

    # 3. History: one row per session x algorithm, Queued (head) -> Running (the job, on its
    #    worker) -> Complete (write-back on the head)
    rows = history_states(requests)
    assert sorted(rows) == sorted(
        (sid, f"qmroct {name}") for sid in sessions.values() for name in ALGORITHMS
    )
    for key, states in rows.items():
        assert [s for s, _ in states] == ["Queued", "Running", "Complete"], (key, states)
        running = states[1][1]
        assert running["origin"]["where"].startswith("worker "), (key, running)

    # 4. nothing of a job left on any worker: no job folder, no scan (the sources cache stays)
    servers = project.servers()
    assert len(servers) == summ["servers_created"] >= 1
    scan_names = {p.name for p in (demo / "archive").rglob("*") if p.is_file()}
    for s in servers:
        listing = worker_listing(project, s)
        scratch = [p for p in listing if "/snakemake-openstack/" in p + "/"]
        assert any("/.cache/src-" in p for p in scratch), listing  # we look at the right place
        job_dirs = {
            p.split("/snakemake-openstack/", 1)[1].split("/")[0]
            for p in scratch
            if "/snakemake-openstack/" in p
        } - {"", ".cache"}
        assert job_dirs == set(), (s.name, sorted(job_dirs))
        left = [p for p in listing if Path(p).name in scan_names or p.endswith(".dcm")]
        assert left == [], (s.name, left[:10])
    for s in servers:
        project.conn.compute.delete_server(s)
