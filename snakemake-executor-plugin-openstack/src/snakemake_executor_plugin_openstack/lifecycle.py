"""The server state machines: launch (create, build, host key, SSH) and delete, with retries.

As in Nodepool's OpenStack driver (``nodepool/driver/openstack/adapter.py``:
``OpenstackCreateStateMachine``, ``OpenstackDeleteStateMachine``, whose "submit" states we
borrow), each server moves through explicit states (``model.ServerState``): a launch
attempt that fails is deleted before the next attempt starts, a quota rejection (Nova's 403 at
create or ERROR after its recheck) shrinks the pool instead of counting as a failure, and a
configuration error stops all further launches.

``ServerLifecycle`` is a mixin of ``Pool``: it uses the pool's ``cfg``, ``cloud``, ``servers``,
``stats``, ``log``, ``run_id``, ``quota`` and its ``_api``/``_spawn``/``wake`` plumbing.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Optional

from . import cloud as cl
from .model import LaunchFailed, Server, ServerState
from .quota import Flavor
from .ssh import JumpHostError, SshTarget, WorkerShell, open_connection


class ServerLifecycle:
    def _init_lifecycle(self) -> None:
        self._seq = itertools.count(1)
        self._boot_ema: dict[str, float] = {}
        self._quota_ceiling: Optional[tuple[int, float]] = None  # (max servers, since)
        self._launch_failures_in_row = 0
        self._last_launch_error = "launch failures"
        self._fatal_error: Optional[str] = None
        self._last_heartbeat = time.monotonic()
        self._views: dict = {}
        self._views_at = 0.0
        self._views_lock: Optional[asyncio.Lock] = None

    def boot_estimate(self, flavor: Flavor) -> float:
        return self._boot_ema.get(flavor.name, self.cfg.expected_boot_seconds)

    def _new_server(self, flavor: Flavor, attempt: int = 1) -> Server:
        name = f"{self.cfg.name_prefix}-{self.run_id[:8]}-{next(self._seq)}"
        s = Server(name=name, flavor=flavor, attempt=attempt)
        self.servers.append(s)
        return s

    def _start_launch(self, flavor: Flavor) -> Server:
        s = self._new_server(flavor)
        self._spawn(self._launch_chain(s))
        return s

    # -- launch state machine --------------------------------------------
    async def _launch_chain(self, s: Server):
        """Launch with retries: a failed attempt is deleted before the next one starts."""
        while True:
            try:
                await self._launch_attempt(s)
                self._launch_failures_in_row = 0
                self.wake()
                return
            except LaunchFailed as e:
                if e.fatal:
                    self.stats.boot_failures += 1
                    self.stats.launches_abandoned += 1
                    if self._fatal_error is None:
                        self._fatal_error = str(e)
                        self.log(
                            "error", f"openstack: {s.name}: {e}; no further servers are started"
                        )
                    await self._delete(s, reason="configuration error")
                    self.wake()
                    return
                if e.quota:
                    self.stats.quota_rejections += 1
                    if s.id is None:
                        self.stats.quota_rejected_at_create += 1
                    else:
                        self.stats.quota_error_servers += 1
                    n_other = sum(
                        1 for x in self.servers if x is not s and x.state != ServerState.DELETED
                    )
                    self._quota_ceiling = (n_other, time.monotonic())
                    self.quota.invalidate()
                    self.log(
                        "warning",
                        f"openstack: {s.name}: quota rejection ({e}); pool shrinks to "
                        f"{n_other} server(s) for now",
                    )
                    await self._delete(s, reason="quota")
                    self.wake()
                    return
                self.stats.boot_failures += 1
                self.log(
                    "warning",
                    f"openstack: {s.name}: launch attempt {s.attempt}/"
                    f"{self.cfg.launch_retries} failed: {e}",
                )
                await self._delete(s, reason="launch failure")
                if self._stopping:
                    return
                if s.attempt >= self.cfg.launch_retries:
                    self._launch_failures_in_row += 1
                    self.stats.launches_abandoned += 1
                    self.log(
                        "error", f"openstack: giving up on {s.name} after {s.attempt} attempts"
                    )
                    self._last_launch_error = str(e)
                    self.wake()
                    return
                # relaunch as a new server (new name, same flavor)
                nxt = self._new_server(s.flavor, attempt=s.attempt + 1)
                s = nxt
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.log(
                    "error", f"openstack: {s.name}: unexpected launch error {type(e).__name__}: {e}"
                )
                self.stats.boot_failures += 1
                await self._delete(s, reason="launch error")
                self.wake()
                return

    async def _launch_attempt(self, s: Server):
        cfg = self.cfg
        s.state = ServerState.SUBMIT
        s.t_create = time.monotonic()
        md = cl.metadata_for(self.run_id, cfg.lease_minutes, cfg.name_prefix)
        try:
            s.id = await self._api(
                self.cloud.create_server,
                name=s.name,
                image_id=cfg.image_id,
                flavor=s.flavor,
                key_name=cfg.keypair,
                metadata=md,
                user_data=cfg.user_data_text,
                security_groups=cfg.security_group_list,
            )
        except Exception as e:
            missing = cl.missing_security_groups(str(e), cfg.security_group_list)
            if missing:
                raise LaunchFailed(
                    f"security group {', '.join(repr(g) for g in missing)} "
                    "not found in this project "
                    f"(setting security_groups; Nova said: {e})",
                    fatal=True,
                ) from e
            # the 403 form of an over-quota create (Nova checks quota in the API)
            raise LaunchFailed(f"create failed: {e}", quota=cl.is_quota_error(str(e))) from e
        self.stats.servers_created += 1
        s.state = ServerState.BUILDING
        deadline = s.t_create + cfg.launch_timeout
        view = None
        while True:
            try:
                view = await self._server_view(s.id)
            except Exception as e:  # a transient API error: keep polling until the deadline
                if time.monotonic() > deadline:
                    raise LaunchFailed(f"API errors while building: {e}") from e
                await asyncio.sleep(cfg.poll_interval)
                continue
            if view is None:
                raise LaunchFailed("server vanished while building")
            if view.status == "ACTIVE":
                break
            if view.status == "ERROR":
                # the other over-quota form: accepted, then ERROR after the conductor's recheck
                raise LaunchFailed(
                    f"server went to ERROR: {view.fault or 'no fault'}",
                    quota=cl.is_quota_error(view.fault),
                )
            if time.monotonic() > deadline:
                raise LaunchFailed(
                    f"not ACTIVE after {cfg.launch_timeout:.0f}s (status {view.status})"
                )
            await asyncio.sleep(cfg.poll_interval)
        s.t_active = time.monotonic()
        s.address = view.address
        if not s.address:
            raise LaunchFailed("ACTIVE but no address")
        deadline = s.t_active + cfg.boot_timeout
        host_keys = None
        if cfg.host_key_check == "console":
            s.state = ServerState.HOSTKEY
            while True:
                try:
                    text = await self._api(self.cloud.console_output, s.id)
                    host_keys = cl.parse_console_host_keys(text)
                except Exception:
                    host_keys = None
                if host_keys:
                    break
                if time.monotonic() > deadline:
                    raise LaunchFailed("no SSH host key in the console output within boot timeout")
                await asyncio.sleep(cfg.poll_interval)
        s.state = ServerState.CONNECTING
        target = SshTarget(
            s.address,
            cfg.ssh_port,
            cfg.ssh_user,
            cfg.key_path,
            host_keys,
            cfg.host_key_check,
            cfg.jump_host,
            cfg.jump_host_known_hosts,
            cfg.ssh_connect_timeout,
            cfg.ssh_keepalive,
        )
        last = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LaunchFailed(f"SSH not answering within boot timeout ({last})")
            try:
                target.connect_timeout = max(1.0, min(cfg.ssh_connect_timeout, remaining))
                conn = await open_connection(target)
                shell = WorkerShell(conn, cfg.remote_scratch)
                await shell.run("true", timeout=max(1.0, remaining))
                break
            except asyncio.CancelledError:
                raise
            except JumpHostError as e:
                raise LaunchFailed(str(e), fatal=True) from e
            except Exception as e:
                last = f"{type(e).__name__}: {e}"
                await asyncio.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
        s.shell = shell
        s.state = ServerState.READY
        s.t_ready = s.last_active = time.monotonic()
        boot = s.t_ready - s.t_create
        self.stats.boot_seconds.append(boot)
        prev = self._boot_ema.get(s.flavor.name)
        self._boot_ema[s.flavor.name] = boot if prev is None else 0.5 * prev + 0.5 * boot
        self.log(
            "info",
            f"openstack: {s.name} ready at {s.address} after {boot:.1f}s "
            f"(ACTIVE after {s.t_active - s.t_create:.1f}s)",
        )

    async def _server_view(self, server_id: str):
        """Status of one of our servers from ONE list call shared by all waiting state machines
        (N servers booting cost one API request per poll interval, not N)."""
        if self._views_lock is None:
            self._views_lock = asyncio.Lock()
        async with self._views_lock:
            if time.monotonic() - self._views_at >= self.cfg.poll_interval:
                prefix = f"^{self.cfg.name_prefix}-{self.run_id[:8]}-"
                views = await self._api(self.cloud.list_servers, prefix)
                self._views = {v.id: v for v in views}
                self._views_at = time.monotonic()
        if server_id in self._views:
            return self._views[server_id]
        # not listed (just created, or gone): ask for it directly
        return await self._api(self.cloud.get_server, server_id)

    # -- delete state machine --------------------------------------------
    async def _delete(self, s: Server, reason: str = ""):
        if s.state in (ServerState.DELETED,):
            return
        if s.shell is not None:
            sh, s.shell = s.shell, None
            self._spawn(sh.close())
        if s.id is None:
            s.state = ServerState.DELETED
            s.t_gone = time.monotonic()
            return
        if self.cfg.keep_servers and reason == "end of run":
            self.log("warning", f"openstack: keeping {s.name} ({s.id}) as asked")
            s.state = ServerState.DELETED
            s.t_gone = time.monotonic()
            return
        tries = 0
        while True:
            tries += 1
            s.state = ServerState.DELETE_SUBMIT
            try:
                await self._api(self.cloud.delete_server, s.id)
            except Exception as e:
                self.log("warning", f"openstack: delete of {s.name} failed: {e}")
            s.state = ServerState.DELETING
            deadline = time.monotonic() + self.cfg.delete_timeout
            api_errors = 0
            while time.monotonic() < deadline:
                try:
                    view = await self._server_view(s.id)
                    api_errors = 0
                except Exception:
                    view = "?"
                    api_errors += 1
                    if api_errors >= 5:  # the API does not answer: next attempt, then the reaper
                        break
                if view is None:
                    s.state = ServerState.DELETED
                    s.t_gone = time.monotonic()
                    self.stats.servers_deleted += 1
                    self.stats.vm_seconds += s.t_gone - s.t_create
                    self.wake()
                    return
                await asyncio.sleep(self.cfg.poll_interval)
            if tries >= 3:
                self.stats.delete_failures += 1
                self.log(
                    "error",
                    f"openstack: {s.name} ({s.id}) not deleted after {tries} tries; "
                    "the reaper will remove it",
                )
                s.state = ServerState.DELETED
                s.t_gone = time.monotonic()
                return

    def _retire(self, s: Server, reason: str):
        if s.retired or s.state not in ServerState.LIVE:
            return
        s.retired = True
        self.log("info", f"openstack: deleting {s.name} ({reason})")
        self._spawn(self._delete(s, reason=reason))

    def _server_broken(self, s: Server):
        if s.broken:
            return
        s.broken = True
        self._retire(s, "server lost")

    async def _heartbeat(self):
        """Renew the expiry metadata of live servers so the reaper leaves them alone."""
        now = time.monotonic()
        period = max(5.0, self.cfg.lease_minutes * 60 / 3)
        if now - self._last_heartbeat < period:
            return
        self._last_heartbeat = now
        md = {cl.MD_EXPIRES: cl.expiry_in(self.cfg.lease_minutes)}
        for s in self.servers:
            if s.id and s.state in ServerState.LIVE:
                try:
                    await self._api(self.cloud.set_metadata, s.id, md)
                except Exception as e:
                    self.log("warning", f"openstack: cannot renew lease of {s.name}: {e}")
