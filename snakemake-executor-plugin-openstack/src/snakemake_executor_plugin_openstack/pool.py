"""The VM pool: launch and delete state machines, slot accounting, dispatch and healing.

Everything here runs on one asyncio loop in a dedicated thread; blocking OpenStack calls go to
a small thread pool.  The pool knows nothing about Snakemake: it receives ``PoolJob`` objects
(a command, files to stage, files to bring back) and reports their outcome on the object.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import itertools
import math
import os
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional

from . import cloud as cl
from .planner import ExistingServer, PlanRequest, plan_boots
from .quota import Flavor, QuotaCache, Resources, budget, fits, pool_caps
from .ssh import (CTL, JobIO, JumpHostError, SshTarget, VMLost, WorkerShell, build_run_script,
                  open_connection, tar_paths)
from .status import PoolStats


# ---------------------------------------------------------------- jobs
class JobState:
    QUEUED = "queued"
    STAGING = "staging"
    RUNNING = "running"
    FETCHING = "fetching"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass
class PoolJob:
    key: str
    name: str
    kind: str  # runtime-estimate class (rule names)
    cores: int
    mem_mb: int
    est_seconds: float
    io: JobIO
    state: str = JobState.QUEUED
    error: Optional[str] = None
    server: Optional["Server"] = None
    vm_losses: int = 0
    submitted_at: float = field(default_factory=time.monotonic)
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    servers_used: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.state in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


# ---------------------------------------------------------------- servers
class ServerState:
    # launch state machine
    START = "start"
    SUBMIT = "submitting create"
    BUILDING = "building"
    HOSTKEY = "waiting for host key"
    CONNECTING = "connecting ssh"
    READY = "ready"
    # delete state machine
    DELETE_SUBMIT = "submitting delete"
    DELETING = "deleting"
    DELETED = "deleted"

    LIVE = (START, SUBMIT, BUILDING, HOSTKEY, CONNECTING, READY)
    BOOTING = (START, SUBMIT, BUILDING, HOSTKEY, CONNECTING)


class LaunchFailed(Exception):
    def __init__(self, msg: str, quota: bool = False, fatal: bool = False):
        super().__init__(msg)
        self.quota = quota
        # a configuration error (unknown security group, jump host key): no other server can
        # succeed, so the pool stops launching and fails the queued jobs with this message
        self.fatal = fatal


@dataclass
class Server:
    name: str
    flavor: Flavor
    attempt: int = 1
    id: Optional[str] = None
    state: str = ServerState.START
    address: Optional[str] = None
    shell: Optional[WorkerShell] = None
    jobs: set = field(default_factory=set)
    used_cores: int = 0
    used_mem: int = 0
    submissions: int = 0
    t_create: float = field(default_factory=time.monotonic)
    t_active: Optional[float] = None
    t_ready: Optional[float] = None
    t_gone: Optional[float] = None
    last_active: float = field(default_factory=time.monotonic)
    broken: bool = False
    retired: bool = False

    @property
    def free_cores(self) -> int:
        return self.flavor.vcpus - self.used_cores

    @property
    def free_mem(self) -> int:
        return self.flavor.ram - self.used_mem


# ---------------------------------------------------------------- config
@dataclass
class PoolConfig:
    image_id: str
    flavors: list[Flavor]
    keypair: str
    private_key: Optional[str]
    ssh_user: str
    ssh_port: int = 22
    host_key_check: str = "console"
    jump_host: Optional[str] = None
    jump_host_known_hosts: str = "~/.ssh/known_hosts"
    security_groups: Optional[list[str]] = None
    user_data: Optional[str] = None
    max_servers: int = 4
    max_cores: int = 0
    max_ram_mb: int = 0
    keep_warm: int = 0
    idle_timeout: float = 60.0
    max_jobs_per_server: int = 0
    quota_cache_seconds: float = 300.0
    launch_timeout: float = 600.0
    boot_timeout: float = 300.0
    launch_retries: int = 3
    delete_timeout: float = 300.0
    quota_wait_timeout: float = 900.0
    expected_boot_seconds: float = 120.0
    vm_failure_retries: int = 3
    ssh_connect_timeout: float = 15.0
    ssh_keepalive: float = 5.0
    status_log_interval: float = 15.0
    name_prefix: str = "smk-os"
    lease_minutes: float = 30.0
    remote_scratch: str = "${TMPDIR:-/tmp}/snakemake-openstack"
    remote_path_prefix: Optional[str] = None
    keep_servers: bool = False
    poll_interval: float = 0.5


# ---------------------------------------------------------------- the pool
class Pool:
    def __init__(self, cfg: PoolConfig, adapter: cl.CloudAdapter, log: Callable[[str, str], None],
                 run_id: Optional[str] = None, backlog: Optional[Callable[[], float]] = None):
        self.cfg = cfg
        self.cloud = adapter
        self.log = log  # log(level, message)
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.backlog = backlog or (lambda: 0.0)  # slot-seconds of work not yet submitted
        self.servers: list[Server] = []
        self.queue: deque[PoolJob] = deque()
        self.jobs: dict[str, PoolJob] = {}
        self.stats = PoolStats()
        self.loop = asyncio.new_event_loop()
        self.api = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="os-api")
        self.thread = threading.Thread(target=self._run_loop, name="openstack-pool", daemon=True)
        self._wake: Optional[asyncio.Event] = None
        self._seq = itertools.count(1)
        self._tasks: set[asyncio.Task] = set()
        self._stopping = False
        self._boot_ema: dict[str, float] = {}
        self._runtime_ema: dict[str, float] = {}
        self._quota_ceiling: Optional[tuple[int, float]] = None  # (max servers, until)
        self._no_capacity_since: Optional[float] = None
        self._launch_failures_in_row = 0
        self._fatal_error: Optional[str] = None
        self._last_plan_key = None
        self._last_plan_time = 0.0
        self._last_status = ""
        self._last_status_time = 0.0
        self._last_heartbeat = time.monotonic()
        self._sources: Optional[tuple[str, bytes]] = None
        self._owned_snapshot = Resources()
        self._views: dict = {}
        self._views_at = 0.0
        self._views_lock: Optional[asyncio.Lock] = None
        self.quota = QuotaCache(self._read_limits, cfg.quota_cache_seconds)
        self._owned_at_read = Resources()

    # -- thread plumbing ------------------------------------------------
    def _run_loop(self):
        asyncio.set_event_loop(self.loop)
        self._wake = asyncio.Event()
        self._sched_task = self.loop.create_task(self._scheduler())
        self.loop.run_forever()
        # stopped: let cancelled tasks unwind before the loop is closed
        pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()

    def start(self) -> None:
        self.thread.start()
        while self._wake is None:
            time.sleep(0.01)

    def call(self, coro, timeout: Optional[float] = None):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def wake(self) -> None:
        if self._wake is not None:
            self.loop.call_soon_threadsafe(self._wake.set)

    async def _api(self, fn, *a, **kw):
        return await self.loop.run_in_executor(self.api, lambda: fn(*a, **kw))

    def _spawn(self, coro) -> asyncio.Task:
        t = self.loop.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    # -- public (thread-safe) -------------------------------------------
    def set_sources(self, data: bytes) -> None:
        self._sources = (hashlib.sha256(data).hexdigest()[:16], data)

    def submit(self, job: PoolJob) -> None:
        def _add():
            self.jobs[job.key] = job
            self.queue.append(job)
            self.stats.jobs_submitted += 1
            if not self.stats.first_submit:
                self.stats.first_submit = time.time()
            self._wake.set()

        self.loop.call_soon_threadsafe(_add)

    def shutdown(self, timeout: float = 600.0) -> None:
        try:
            self.call(self._shutdown(), timeout)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.api.shutdown(wait=False, cancel_futures=True)

    def cancel_all(self, timeout: float = 60.0) -> None:
        self.call(self._cancel_all(), timeout)

    # -- owned resources and quota -------------------------------------
    def live(self) -> list[Server]:
        return [s for s in self.servers if s.state in ServerState.LIVE]

    def owned(self) -> list[Server]:
        """Servers that count against quota: live ones and those still being deleted."""
        return [s for s in self.servers if s.state != ServerState.DELETED and not (
            s.state == ServerState.START and s.id is None)]

    def owned_resources(self) -> Resources:
        r = Resources()
        for s in self.servers:
            if s.state != ServerState.DELETED:
                r = r + s.flavor.resources
        return r

    def _read_limits(self):
        lim = self.cloud.limits()
        return lim, self._owned_snapshot

    def _budget(self) -> Resources:
        caps = pool_caps(self.cfg.max_servers, self.cfg.max_cores, self.cfg.max_ram_mb)
        val = None
        try:
            self._owned_snapshot = self.owned_resources()
            val = self.quota.get()
        except Exception as e:  # no limits at all: only the pool caps
            self.log("warning", f"openstack: cannot read limits ({e}); using pool caps only")
        left = budget(val[0] if val else None, val[1] if val else Resources(), self.owned_resources(), caps)
        if self._quota_ceiling is not None:
            ceiling, since = self._quota_ceiling
            # back off for a while (at most 30 s, or the quota cache age if shorter)
            if time.monotonic() > since + min(30.0, self.quota.ttl):
                self._quota_ceiling = None
            else:
                n_live = sum(1 for s in self.servers if s.state != ServerState.DELETED)
                left = left.min(Resources(max(0, ceiling - n_live), math.inf, math.inf))
        return left

    # -- scheduler loop --------------------------------------------------
    async def _scheduler(self):
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.cfg.poll_interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            if self._stopping:
                continue
            try:
                self._dispatch()
                await self._maybe_plan()
                self._retire_idle()
                self._check_starvation()
                await self._heartbeat()
                self._status()
            except Exception as e:  # never let the loop die
                self.log("error", f"openstack pool: scheduler error: {type(e).__name__}: {e}")

    def _fit_server(self, job: PoolJob) -> Optional[Server]:
        best = None
        for s in self.servers:
            if s.state != ServerState.READY or s.broken or s.retired:
                continue
            if self.cfg.max_jobs_per_server and s.submissions >= self.cfg.max_jobs_per_server:
                continue
            if fits(s.free_cores, s.free_mem, job.cores, job.mem_mb):
                # best fit: the busiest server that still fits (keeps others free to retire)
                if best is None or (s.free_cores, s.free_mem) < (best.free_cores, best.free_mem):
                    best = s
        return best

    def _dispatch(self):
        if not self.queue:
            return
        remaining = deque()
        while self.queue:
            job = self.queue.popleft()
            if job.finished:
                continue
            s = self._fit_server(job)
            if s is None:
                remaining.append(job)
                continue
            s.jobs.add(job.key)
            s.used_cores += job.cores
            s.used_mem += job.mem_mb
            s.submissions += 1
            job.server = s
            job.state = JobState.STAGING
            job.servers_used.append(s.name)
            self._spawn(self._run_job(job, s))
        self.queue = remaining

    # -- planning ---------------------------------------------------------
    def _est(self, job: PoolJob) -> float:
        return job.est_seconds if job.est_seconds > 0 else self._runtime_ema.get(job.kind, 60.0)

    def runtime_estimate(self, kind: str, default: float) -> float:
        return self._runtime_ema.get(kind, default)

    def boot_estimate(self, flavor: Flavor) -> float:
        return self._boot_ema.get(flavor.name, self.cfg.expected_boot_seconds)

    async def _maybe_plan(self):
        if self._fatal_error is not None:
            return
        queued = [j for j in self.queue if not j.finished]
        backlog = max(0.0, float(self.backlog() or 0.0))
        if not queued and backlog <= 0:
            return
        # nothing to do if every queued job can start on a ready server right now
        now = time.monotonic()
        key = (len(queued), round(backlog), tuple((s.name, s.state) for s in self.servers))
        if key == self._last_plan_key and now - self._last_plan_time < 5.0:
            return
        if now - self._last_plan_time < 0.5:
            return
        self._last_plan_key, self._last_plan_time = key, now
        left = await self.loop.run_in_executor(self.api, self._budget)
        running = [self.jobs[k] for s in self.servers for k in s.jobs if k in self.jobs]
        work = sum(self._est(j) for j in queued) + backlog
        for j in running:
            elapsed = now - (j.started_at or now)
            work += max(0.1 * self._est(j), self._est(j) - elapsed)
        cores = max([j.cores for j in queued] or [1])
        mem = max([j.mem_mb for j in queued] or [0])
        longest = max([self._est(j) for j in queued] or [0.0])
        existing = []
        for s in self.servers:
            if s.state not in ServerState.LIVE or s.broken or s.retired:
                continue
            sl = min(s.flavor.vcpus // max(1, cores), s.flavor.ram // mem if mem else 10**6)
            if self.cfg.max_jobs_per_server:
                sl = min(sl, max(0, self.cfg.max_jobs_per_server - s.submissions))
            avail = 0.0
            if s.state != ServerState.READY:
                avail = max(0.0, self.boot_estimate(s.flavor) - (now - s.t_create))
            existing.append(ExistingServer(slots=sl, available_in=avail))
        flavors = self.cfg.flavors
        if self.cfg.max_jobs_per_server:
            # a server runs at most max_jobs_per_server submissions: never more slots than that
            flavors = [f for f in flavors]
        req = PlanRequest(
            work_seconds=work, longest_job=longest, cores=cores, mem_mb=mem, flavors=flavors,
            boot_seconds={f.name: self.boot_estimate(f) for f in flavors}, budget=left,
            existing=existing,
        )
        if self.cfg.max_jobs_per_server:
            # single- (or few-) use servers: one new server per queued job at most
            n_new = min(len(queued) - sum(e.slots for e in existing), 10**6)
            plan_boots_n = {}
            if n_new > 0:
                from .quota import how_many_fit

                f = flavors[0]
                per = max(1, min(self.cfg.max_jobs_per_server, f.vcpus // max(1, cores)))
                n = min(math.ceil(n_new / per), how_many_fit(left, f))
                if n > 0:
                    plan_boots_n = {f.name: n}
            boots = plan_boots_n
        else:
            plan = await self.loop.run_in_executor(self.api, plan_boots, req)
            boots = plan.boots
        if boots:
            self.stats.plans += 1
            self.log("info", f"openstack: planner boots {boots} (work {work:.0f} slot-s, budget "
                             f"{_fmt_res(left)}, existing {len(existing)})")
        for fname, n in boots.items():
            f = next(x for x in flavors if x.name == fname)
            for _ in range(n):
                self._start_launch(f)

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
                        self.log("error", f"openstack: {s.name}: {e}; no further servers are started")
                    await self._delete(s, reason="configuration error")
                    self.wake()
                    return
                if e.quota:
                    self.stats.quota_rejections += 1
                    if s.id is None:
                        self.stats.quota_rejected_at_create += 1
                    else:
                        self.stats.quota_error_servers += 1
                    n_other = sum(1 for x in self.servers if x is not s and x.state != ServerState.DELETED)
                    self._quota_ceiling = (n_other, time.monotonic())
                    self.quota.invalidate()
                    self.log("warning", f"openstack: {s.name}: quota rejection ({e}); pool shrinks to "
                                        f"{n_other} server(s) for now")
                    await self._delete(s, reason="quota")
                    self.wake()
                    return
                self.stats.boot_failures += 1
                self.log("warning", f"openstack: {s.name}: launch attempt {s.attempt}/"
                                    f"{self.cfg.launch_retries} failed: {e}")
                await self._delete(s, reason="launch failure")
                if self._stopping:
                    return
                if s.attempt >= self.cfg.launch_retries:
                    self._launch_failures_in_row += 1
                    self.stats.launches_abandoned += 1
                    self.log("error", f"openstack: giving up on {s.name} after {s.attempt} attempts")
                    self._last_launch_error = str(e)
                    self.wake()
                    return
                # relaunch as a new server (new name, same flavor)
                nxt = self._new_server(s.flavor, attempt=s.attempt + 1)
                s = nxt
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.log("error", f"openstack: {s.name}: unexpected launch error {type(e).__name__}: {e}")
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
                self.cloud.create_server, name=s.name, image_id=cfg.image_id, flavor=s.flavor,
                key_name=cfg.keypair, metadata=md, user_data=cfg.user_data,
                security_groups=cfg.security_groups)
        except Exception as e:
            missing = cl.missing_security_groups(str(e), cfg.security_groups)
            if missing:
                raise LaunchFailed(
                    f"security group {', '.join(repr(g) for g in missing)} not found in this project "
                    f"(setting security_groups; Nova said: {e})", fatal=True) from e
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
                raise LaunchFailed(f"server went to ERROR: {view.fault or 'no fault'}",
                                   quota=cl.is_quota_error(view.fault))
            if time.monotonic() > deadline:
                raise LaunchFailed(f"not ACTIVE after {cfg.launch_timeout:.0f}s (status {view.status})")
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
        target = SshTarget(s.address, cfg.ssh_port, cfg.ssh_user, cfg.private_key, host_keys,
                           cfg.host_key_check, cfg.jump_host, cfg.jump_host_known_hosts,
                           cfg.ssh_connect_timeout, cfg.ssh_keepalive)
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
        self.log("info", f"openstack: {s.name} ready at {s.address} after {boot:.1f}s "
                         f"(ACTIVE after {s.t_active - s.t_create:.1f}s)")

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
                self.log("error", f"openstack: {s.name} ({s.id}) not deleted after {tries} tries; "
                                  "the reaper will remove it")
                s.state = ServerState.DELETED
                s.t_gone = time.monotonic()
                return

    def _retire(self, s: Server, reason: str):
        if s.retired or s.state not in ServerState.LIVE:
            return
        s.retired = True
        self.log("info", f"openstack: deleting {s.name} ({reason})")
        self._spawn(self._delete(s, reason=reason))

    def _retire_idle(self):
        now = time.monotonic()
        ready = [s for s in self.servers if s.state == ServerState.READY and not s.retired]
        for s in ready:
            if s.jobs:
                continue
            if self.cfg.max_jobs_per_server and s.submissions >= self.cfg.max_jobs_per_server:
                self._retire(s, f"ran {s.submissions} submission(s)")
        ready = [s for s in self.servers if s.state == ServerState.READY and not s.retired]
        idle = [s for s in ready if not s.jobs and now - s.last_active > self.cfg.idle_timeout]
        if self.queue:
            return
        keep = self.cfg.keep_warm
        for s in idle:
            if len([x for x in self.servers if x.state == ServerState.READY and not x.retired]) <= keep:
                break
            self._retire(s, f"idle {now - s.last_active:.0f}s")
        # keep-warm minimum
        live = [s for s in self.servers if s.state in ServerState.LIVE and not s.retired]
        if len(live) < keep and not self._stopping:
            left = self._budget_cached()
            if left.instances >= 1:
                self._start_launch(self.cfg.flavors[0])

    def _budget_cached(self) -> Resources:
        caps = pool_caps(self.cfg.max_servers, self.cfg.max_cores, self.cfg.max_ram_mb)
        return (caps - self.owned_resources()).clamp0()

    def _check_starvation(self):
        """Fail queued jobs if no server can be had at all for too long."""
        queued = [j for j in self.queue if not j.finished]
        live = [s for s in self.servers if s.state in ServerState.LIVE and not s.retired]
        now = time.monotonic()
        if queued and self._fatal_error is not None and not any(s.state == ServerState.READY for s in live):
            self._fail_queued(f"no server can be started: {self._fatal_error}")
            return
        if not queued or live:
            self._no_capacity_since = None
            return
        if self._launch_failures_in_row >= 2:
            msg = getattr(self, "_last_launch_error", "launch failures")
            self._fail_queued(f"no server could be started ({self._launch_failures_in_row} servers "
                              f"gave up after {self.cfg.launch_retries} attempts each; last: {msg})")
            self._launch_failures_in_row = 0
            return
        if self._no_capacity_since is None:
            self._no_capacity_since = now
        elif now - self._no_capacity_since > self.cfg.quota_wait_timeout:
            self._fail_queued(f"no server could be started within {self.cfg.quota_wait_timeout:.0f}s "
                              "(quota or pool limits leave no room)")
            self._no_capacity_since = None

    def _fail_queued(self, msg: str):
        while self.queue:
            j = self.queue.popleft()
            if not j.finished:
                j.error = msg
                j.finished_at = time.monotonic()
                j.state = JobState.FAILED
                self.stats.jobs_failed += 1

    # -- running a job -------------------------------------------------------
    async def _run_job(self, job: PoolJob, s: Server):
        io_ = job.io
        sh = s.shell
        logf = None
        t0 = time.monotonic()
        outcome = None
        try:
            os.makedirs(os.path.dirname(os.path.abspath(io_.local_log)), exist_ok=True)
            logf = open(io_.local_log, "ab", buffering=0)  # streamed: readable while the job runs
            logf.write(f"# openstack: {job.name} on {s.name} ({s.address})\n".encode())
            if sh is None:
                raise VMLost("no connection")
            sha = None
            if self._sources is not None:
                sha, data = self._sources
                await sh.ensure_sources(sha, data)
            extra = {
                f"{CTL}/run.sh": build_run_script(io_.path_prefix).encode(),
                f"{CTL}/cmd.sh": (io_.command + "\n").encode(),
            }
            inputs_tar = await self.loop.run_in_executor(self.api, tar_paths, io_.inputs, extra)
            io_.job_key = f"{self.run_id}-{job.key}-{uuid.uuid4().hex[:6]}"
            await sh.stage(io_, sha, inputs_tar)
            t1 = time.monotonic()
            job.state = JobState.RUNNING
            job.started_at = t1
            rc = await sh.execute(io_, logf.write)
            t2 = time.monotonic()
            job.state = JobState.FETCHING
            if rc == 0:
                await sh.fetch(io_, list(io_.outputs) + list(io_.logs))
            else:
                try:
                    await sh.fetch(io_, list(io_.logs))
                except VMLost:
                    raise
                except Exception:
                    pass
            t3 = time.monotonic()
            # wiping the scratch directory does not delay the job's result
            self._spawn(self._cleanup(sh, io_))
            job.timings = {"stage": t1 - t0, "run": t2 - t1, "fetch": t3 - t2}
            self.stats.add_timings(job.timings)
            if rc == 0:
                outcome = (JobState.DONE, None)
                prev = self._runtime_ema.get(job.kind)
                self._runtime_ema[job.kind] = (t2 - t1) if prev is None else 0.7 * prev + 0.3 * (t2 - t1)
            else:
                outcome = (JobState.FAILED, f"job exited with code {rc} on {s.name}")
        except asyncio.CancelledError:
            outcome = (JobState.CANCELLED, "cancelled")
            raise
        except VMLost as e:
            job.vm_losses += 1
            self.stats.vm_losses += 1
            if logf:
                logf.write(f"# openstack: lost server {s.name}: {e}\n".encode())
            self.log("warning", f"openstack: lost {s.name} while running {job.name}: {e}")
            self._server_broken(s)
            if job.vm_losses > self.cfg.vm_failure_retries or self._stopping:
                outcome = (JobState.FAILED, f"server lost {job.vm_losses} times; last: {e}")
            else:
                self.stats.resubmissions += 1
                outcome = (JobState.QUEUED, None)
        except Exception as e:
            outcome = (JobState.FAILED, f"{type(e).__name__}: {e}")
        finally:
            if logf:
                logf.close()
            if job.key in s.jobs:
                s.jobs.discard(job.key)
                s.used_cores -= job.cores
                s.used_mem -= job.mem_mb
            s.last_active = time.monotonic()
            if outcome is not None:
                state, err = outcome
                job.server = None
                if state == JobState.QUEUED:
                    job.state = JobState.QUEUED
                    io_.remote_dir = None
                    self.queue.appendleft(job)
                else:
                    job.error = err
                    job.finished_at = time.monotonic()
                    self.stats.last_done = time.time()
                    job.state = state
                    if state == JobState.DONE:
                        self.stats.jobs_done += 1
                        self.stats.per_server[s.name] = self.stats.per_server.get(s.name, 0) + 1
                    elif state == JobState.FAILED:
                        self.stats.jobs_failed += 1
            self.wake()

    async def _cleanup(self, sh: WorkerShell, io_: JobIO):
        t = time.monotonic()
        try:
            await sh.cleanup(io_)
            self.stats.add_timings({"cleanup": time.monotonic() - t})
        except Exception:
            pass

    def _server_broken(self, s: Server):
        if s.broken:
            return
        s.broken = True
        self._retire(s, "server lost")

    # -- cancellation and shutdown ---------------------------------------
    async def _cancel_all(self):
        kills = []
        for s in self.servers:
            for key in list(s.jobs):
                job = self.jobs.get(key)
                if job and s.shell is not None and job.io.remote_dir:
                    kills.append(s.shell.kill(job.io))
        for j in list(self.queue):
            j.state = JobState.CANCELLED
        self.queue.clear()
        if kills:
            res = await asyncio.gather(*kills, return_exceptions=True)
            self.stats.cancelled_remote = sum(1 for r in res if not isinstance(r, Exception))
            self.log("info", f"openstack: killed {self.stats.cancelled_remote} remote job(s)")

    async def _shutdown(self):
        self._stopping = True
        await self._cancel_all()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        self._tasks.clear()
        dels = [self._delete(s, reason="end of run") for s in self.servers if s.state != ServerState.DELETED]
        if dels:
            self.log("info", f"openstack: deleting {len(dels)} server(s) of run {self.run_id}")
            await asyncio.gather(*dels, return_exceptions=True)
        self.log("info", self.stats.summary(self.servers))

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

    def status_line(self) -> str:
        booting = sum(1 for s in self.servers if s.state in ServerState.BOOTING)
        ready = [s for s in self.servers if s.state == ServerState.READY]
        busy = sum(1 for s in ready if s.jobs)
        deleting = sum(1 for s in self.servers if s.state in (ServerState.DELETE_SUBMIT, ServerState.DELETING))
        running = sum(len(s.jobs) for s in self.servers)
        return (f"openstack pool: servers booting={booting} ready={len(ready)} busy={busy} "
                f"deleting={deleting} | jobs queued={len(self.queue)} running={running} "
                f"done={self.stats.jobs_done} failed={self.stats.jobs_failed}")

    def _status(self):
        line = self.status_line()
        now = time.monotonic()
        iv = self.cfg.status_log_interval
        if line != self._last_status and (iv <= 0 or now - self._last_status_time >= min(iv, 2.0)) or (
                iv > 0 and now - self._last_status_time >= iv):
            self._last_status, self._last_status_time = line, now
            self.log("info", line)


def _fmt_res(r: Resources) -> str:
    def f(v):
        return "inf" if v == math.inf else f"{v:g}"

    return f"instances={f(r.instances)} cores={f(r.cores)} ram={f(r.ram)}"
