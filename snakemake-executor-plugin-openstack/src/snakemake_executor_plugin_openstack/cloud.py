"""Thin, blocking wrapper over openstacksdk (the pool calls it from worker threads)."""

from __future__ import annotations

import base64
import getpass
import os
import socket
import time
from dataclasses import dataclass
from typing import Optional

from .quota import Flavor, Limits

TOOL = "snakemake-executor-plugin-openstack"
# server metadata keys (values are strings); never secrets
MD_TOOL = "snakemake-openstack"
MD_RUN = "snakemake-openstack-run"
MD_OWNER = "snakemake-openstack-owner"
MD_PID = "snakemake-openstack-pid"
MD_EXPIRES = "snakemake-openstack-expires"
MD_POOL = "snakemake-openstack-pool"


def owner_id() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def connect(cloud: Optional[str] = None):
    """openstack.connect with clouds.yaml / OS_CLOUD / OS_* (incl. application credentials)."""
    import openstack

    if cloud:
        return openstack.connect(cloud=cloud)
    return openstack.connect()


def describe_connect_error(exc: BaseException, cloud: Optional[str]) -> str:
    """The cause of a failed first contact with the cloud, in one line."""
    from openstack import exceptions as sdk

    name = cloud or os.environ.get("OS_CLOUD") or "(OS_* variables)"
    files = os.environ.get("OS_CLIENT_CONFIG_FILE") or "clouds.yaml"
    if isinstance(exc, sdk.ConfigException):
        return (
            f"openstack executor: cloud {name!r} is not in {files} (set --openstack-cloud "
            f"to one of its entries, or OS_CLOUD): {exc}"
        )
    status = getattr(exc, "status_code", None)
    if status == 401 or type(exc).__name__ == "Unauthorized":
        return (
            f"openstack executor: cloud {name!r} refused the credentials (401): check the "
            f"auth section of {name!r} in {files} or the OS_* variables"
        )
    if status == 403:
        return f"openstack executor: cloud {name!r} denied access (403): {exc}"
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"openstack executor: cannot reach cloud {name!r}: {type(exc).__name__}: {text[:300]}"


def write_error_chain(exc: BaseException, folder: str) -> str:
    """The exception chain into <folder>/connect-error.log; ' (details: <file>)' or ''."""
    import traceback

    path = os.path.join(folder, "connect-error.log")
    try:
        os.makedirs(folder, exist_ok=True)
        with open(path, "a") as fh:
            fh.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            fh.write("".join(traceback.format_exception(exc)))
    except OSError:
        return ""
    return f" (details: {path})"


def is_quota_error(text: str) -> bool:
    t = (text or "").lower()
    return ("quota" in t and ("exceed" in t or "exceeded" in t)) or "number of ports exceeded" in t


def missing_security_groups(text: str, groups) -> list[str]:
    """The requested groups a failed create names as unknown, else [].

    Nova resolves group names through neutronclient, whose NotFound reads "Unable to find
    security_group with name or id 'NAME'" and comes back as a 400 on POST /servers; older
    releases (and nova-network) said "Security group NAME not found"."""
    t = text or ""
    low = t.lower()
    if "security_group" not in low and "security group" not in low:
        return []
    if "not found" not in low and "unable to find" not in low:
        return []
    return [g for g in (groups or []) if f"'{g}'" in t or f"group {g} not found" in t]


@dataclass
class ServerView:
    id: str
    name: str
    status: str
    fault: str
    address: Optional[str]
    metadata: dict
    created: str


class CloudAdapter:
    def __init__(self, conn, network: Optional[str] = None):
        self.conn = conn
        self.network = network

    # --- lookups ---
    def find_flavor(self, name_or_id: str) -> Flavor:
        f = self.conn.compute.find_flavor(name_or_id, ignore_missing=False)
        return Flavor(id=f.id, name=f.name, vcpus=int(f.vcpus), ram=int(f.ram))

    def find_image_id(self, name_or_id: str) -> str:
        try:
            img = self.conn.image.find_image(name_or_id, ignore_missing=True)
            if img is not None:
                return img.id
        except Exception:
            pass
        return name_or_id

    def networks_arg(self):
        if self.network is None:
            return None
        if self.network.lower() in ("none", "auto"):
            return self.network.lower()
        try:
            net = self.conn.network.find_network(self.network, ignore_missing=True)
            if net is not None:
                return [{"uuid": net.id}]
        except Exception:
            pass
        return [{"uuid": self.network}]

    def ensure_keypair(self, name: str, public_key: Optional[str]) -> None:
        kp = self.conn.compute.find_keypair(name, ignore_missing=True)
        if kp is None:
            if not public_key:
                raise RuntimeError(
                    f"key pair {name!r} does not exist and no public key to create it"
                )
            self.conn.compute.create_keypair(name=name, public_key=public_key)
            return
        if public_key and kp.public_key:
            # servers with another key would never let us in: fail now, not after boot timeouts
            if kp.public_key.split()[:2] != public_key.split()[:2]:
                raise RuntimeError(
                    f"key pair {name!r} exists with a different public key than the private key's"
                )

    def limits(self) -> Limits:
        return Limits.from_absolute(self.conn.compute.get_limits().absolute)

    # --- servers ---
    def create_server(
        self,
        *,
        name,
        image_id,
        flavor: Flavor,
        key_name,
        metadata,
        user_data=None,
        security_groups=None,
    ) -> str:
        kw = dict(
            name=name, image_id=image_id, flavor_id=flavor.id, key_name=key_name, metadata=metadata
        )
        nets = self.networks_arg()
        kw["networks"] = nets if nets is not None else "auto"
        if user_data:
            kw["user_data"] = base64.b64encode(user_data.encode()).decode()
        if security_groups:
            kw["security_groups"] = [{"name": s} for s in security_groups]
        s = self.conn.compute.create_server(**kw)
        return s.id

    def get_server(self, server_id: str) -> Optional[ServerView]:
        from openstack import exceptions

        try:
            s = self.conn.compute.get_server(server_id)
        except exceptions.NotFoundException:
            return None
        return self._view(s)

    def _view(self, s) -> ServerView:
        fault = ""
        if getattr(s, "fault", None):
            fault = str(s.fault.get("message", "")) if isinstance(s.fault, dict) else str(s.fault)
        return ServerView(
            id=s.id,
            name=s.name,
            status=(s.status or "").upper(),
            fault=fault,
            address=self.address_of(s),
            metadata=dict(s.metadata or {}),
            created=str(getattr(s, "created_at", "") or ""),
        )

    def address_of(self, s) -> Optional[str]:
        if getattr(s, "access_ipv4", None):
            return s.access_ipv4
        addrs = s.addresses or {}
        nets = [self.network] if self.network in addrs else list(addrs)
        best = None
        for n in nets:
            for a in addrs.get(n, []):
                if a.get("version") == 4:
                    if a.get("OS-EXT-IPS:type") == "floating":
                        return a["addr"]
                    best = best or a["addr"]
        return best

    def console_output(self, server_id: str) -> str:
        out = self.conn.compute.get_server_console_output(server_id)
        return out.get("output", "") if isinstance(out, dict) else str(out)

    def delete_server(self, server_id: str) -> None:
        from openstack import exceptions

        try:
            self.conn.compute.delete_server(server_id)
        except exceptions.NotFoundException:
            pass

    def set_metadata(self, server_id: str, md: dict) -> None:
        self.conn.compute.set_server_metadata(server_id, **md)

    def list_servers(self, name_regex: str) -> list[ServerView]:
        """Servers of this project whose name matches ``name_regex`` (Nova's name filter)."""
        return [self._view(s) for s in self.conn.compute.servers(details=True, name=name_regex)]

    def list_tool_servers(self) -> list[ServerView]:
        out = []
        for s in self.conn.compute.servers(details=True):
            md = s.metadata or {}
            if md.get(MD_TOOL) == TOOL:
                out.append(self._view(s))
        return out


def parse_console_host_keys(text: str) -> list[str]:
    """Host public keys printed by cloud-init between the SSH HOST KEY KEYS markers."""
    keys, inside = [], False
    for line in (text or "").splitlines():
        line = line.strip()
        # cloud-init may prefix lines with a timestamp or "ec2: "
        if "-----BEGIN SSH HOST KEY KEYS-----" in line:
            inside = True
            keys = []
            continue
        if "-----END SSH HOST KEY KEYS-----" in line:
            inside = False
            continue
        if inside and line:
            parts = line.split()
            for i, p in enumerate(parts):
                if p.startswith(("ssh-", "ecdsa-")) and i + 1 < len(parts):
                    keys.append(f"{p} {parts[i + 1]}")
                    break
    return keys


def expiry_in(minutes: float) -> str:
    return str(int(time.time() + minutes * 60))


def metadata_for(run_id: str, lease_minutes: float, pool: str) -> dict:
    return {
        MD_TOOL: TOOL,
        MD_RUN: run_id,
        MD_OWNER: owner_id(),
        MD_PID: str(os.getpid()),
        MD_EXPIRES: expiry_in(lease_minutes),
        MD_POOL: pool,
    }
