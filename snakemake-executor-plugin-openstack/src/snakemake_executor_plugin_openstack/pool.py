"""The VM pool: owns the servers and the job queue, and runs the scheduler loop.

Everything here runs on one asyncio loop in a dedicated thread; blocking OpenStack calls go to
a small thread pool.  The pool knows nothing about Snakemake: it receives ``PoolJob`` objects
(a command, files to stage, files to bring back) and reports their outcome on the object.

Where the parts live: the data model in ``model.py``, the launch and delete state machines in
``lifecycle.py``, the job runner in ``jobs.py``, the fit/dispatch/retire/planning decisions as
pure functions in ``scheduling.py``, the boot planner in ``planner.py``, counters and the status
line in ``status.py``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import math
import threading
import time
import uuid
from collections import deque
from typing import Callable, Optional

from . import cloud as cl
from . import reaper, scheduling
from .jobs import JobRunner
from .lifecycle import ServerLifecycle

# JobState, LaunchFailed and PoolJob are re-exported: callers know them as pool.*
from .model import (  # noqa: F401
    Backlog,
    JobState,
    LaunchFailed,
    PoolConfig,
    PoolJob,
    Server,
    ServerState,
)
from .planner import plan_boots
from .quota import QuotaCache, Resources, budget, pool_caps
from .status import PoolStats, fmt_resources, status_line


class Pool(ServerLifecycle, JobRunner):
    def __init__(
        self,
        cfg: PoolConfig,
        adapter: cl.CloudAdapter,
        log: Callable[[str, str], None],
        run_id: Optional[str] = None,
        backlog: Optional[Callable[[], Backlog]] = None,
    ):
        self.cfg = cfg
        self.cloud = adapter
        self.log = log  # log(level, message)
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.backlog = backlog or Backlog  # work the workflow holds beyond what was submitted
        self.servers: list[Server] = []
        self.queue: deque[PoolJob] = deque()
        self.jobs: dict[str, PoolJob] = {}
        self.stats = PoolStats()
        self.loop = asyncio.new_event_loop()
        self.api = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="os-api")
        self.thread = threading.Thread(target=self._run_loop, name="openstack-pool", daemon=True)
        self._wake: Optional[asyncio.Event] = None
        self._tasks: set[asyncio.Task] = set()
        self._stopping = False
        self._no_capacity_since: Optional[float] = None
        self._last_plan_key = None
        self._last_plan_time = 0.0
        self._last_status = ""
        self._last_status_time = 0.0
        self._sources: Optional[tuple[str, bytes]] = None
        self._owned_snapshot = Resources()
        self.quota = QuotaCache(self._read_limits, cfg.quota_cache_seconds)
        self._init_lifecycle()
        self._init_runner()

    # -- thread plumbing ------------------------------------------------
    def _run_loop(self):
        asyncio.set_event_loop(self.loop)
        self._wake = asyncio.Event()
        # the loop holds only a weak reference to a task: keep this one alive ourselves
        self._scheduler_task = self.loop.create_task(self._scheduler())
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
        if self.cfg.leak_check_interval > 0:
            self.loop.call_soon_threadsafe(self._spawn, self._reap_leaks())

    async def _reap_leaks(self):
        """Delete servers of runs that died, under the same two-pass rules as
        ``snakemake-openstack-reap`` (``qmroct cloud reap``): crashed runs are cleaned up by
        the next run instead of waiting for someone to remember the reaper."""
        out = reaper.LineLogger(self.log, "openstack: leak cleanup: ")
        try:
            victims = await self._api(
                reaper.reap, self.cloud, interval=self.cfg.leak_check_interval, out=out, wait=False
            )
        except Exception as e:  # the run goes on; the reaper can still be run by hand
            self.log("warning", f"openstack: leak cleanup failed: {type(e).__name__}: {e}")
            return
        self.stats.leaks_reaped += len(victims)

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
        left = budget(
            val[0] if val else None, val[1] if val else Resources(), self.owned_resources(), caps
        )
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

    def _dispatch(self):
        if not self.queue:
            return
        placed, self.queue = scheduling.dispatch(
            self.queue, self.servers, self.cfg.max_jobs_per_server
        )
        for job, s in placed:
            s.take(job)
            job.server = s
            job.state = JobState.STAGING
            job.servers_used.append(s.name)
            self._spawn(self._run_job(job, s))

    # -- planning ---------------------------------------------------------
    async def _maybe_plan(self):
        if self._fatal_error is not None:
            return
        queued = [j for j in self.queue if not j.finished]
        backlog = self.backlog()
        if not queued and backlog.work_seconds <= 0:
            return
        # replan when the queue, the backlog or a server changed, at most every 0.5 s
        now = time.monotonic()
        key = (
            len(queued),
            round(backlog.work_seconds),
            backlog.units,
            tuple((s.name, s.state) for s in self.servers),
        )
        if key == self._last_plan_key and now - self._last_plan_time < 5.0:
            return
        if now - self._last_plan_time < 0.5:
            return
        self._last_plan_key, self._last_plan_time = key, now
        left = await self.loop.run_in_executor(self.api, self._budget)
        running = [self.jobs[k] for s in self.servers for k in s.jobs if k in self.jobs]
        cfg = self.cfg
        req = scheduling.plan_request(
            queued,
            running,
            self.servers,
            backlog,
            now,
            left,
            cfg.flavors,
            cfg.max_jobs_per_server,
            self._est,
            self.boot_estimate,
        )
        if cfg.max_jobs_per_server:
            boots = scheduling.single_use_boots(req, len(queued), cfg.max_jobs_per_server)
        else:
            boots = (await self.loop.run_in_executor(self.api, plan_boots, req)).boots
        if boots:
            self.stats.plans += 1
            self.log(
                "info",
                f"openstack: planner boots {boots} (work {req.work_seconds:.0f} "
                f"slot-s, budget {fmt_resources(left)}, "
                f"existing {len(req.existing)})",
            )
        for fname, n in boots.items():
            f = next(x for x in cfg.flavors if x.name == fname)
            for _ in range(n):
                self._start_launch(f)

    # -- retiring and starvation -------------------------------------------
    def _retire_idle(self):
        cfg = self.cfg
        queue_empty = not self.queue
        for s, reason in scheduling.retirements(
            self.servers,
            time.monotonic(),
            queue_empty,
            cfg.idle_timeout,
            cfg.keep_warm,
            cfg.max_jobs_per_server,
        ):
            self._retire(s, reason)
        if (
            scheduling.needs_warm_server(self.servers, cfg.keep_warm, queue_empty)
            and not self._stopping
        ):
            left = (
                pool_caps(cfg.max_servers, cfg.max_cores, cfg.max_ram_mb) - self.owned_resources()
            ).clamp0()
            if left.instances >= 1:
                self._start_launch(cfg.flavors[0])

    def _check_starvation(self):
        """Fail queued jobs if no server can be had at all for too long."""
        queued = [j for j in self.queue if not j.finished]
        live = [s for s in self.servers if s.state in ServerState.LIVE and not s.retired]
        now = time.monotonic()
        if (
            queued
            and self._fatal_error is not None
            and not any(s.state == ServerState.READY for s in live)
        ):
            self._fail_queued(f"no server can be started: {self._fatal_error}")
            return
        if not queued or live:
            self._no_capacity_since = None
            return
        if self._launch_failures_in_row >= 2:
            self._fail_queued(
                f"no server could be started ({self._launch_failures_in_row} "
                f"servers gave up after {self.cfg.launch_retries} attempts each; "
                f"last: {self._last_launch_error})"
            )
            self._launch_failures_in_row = 0
            return
        if self._no_capacity_since is None:
            self._no_capacity_since = now
        elif now - self._no_capacity_since > self.cfg.quota_wait_timeout:
            self._fail_queued(
                f"no server could be started within "
                f"{self.cfg.quota_wait_timeout:.0f}s "
                "(quota or pool limits leave no room)"
            )
            self._no_capacity_since = None

    # -- shutdown and status ---------------------------------------------
    async def _shutdown(self):
        self._stopping = True
        await self._cancel_all()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        self._tasks.clear()
        dels = [
            self._delete(s, reason="end of run")
            for s in self.servers
            if s.state != ServerState.DELETED
        ]
        if dels:
            self.log("info", f"openstack: deleting {len(dels)} server(s) of run {self.run_id}")
            await asyncio.gather(*dels, return_exceptions=True)
        self.log("info", self.stats.summary(self.servers))

    def status_line(self) -> str:
        return status_line(self.servers, len(self.queue), self.stats)

    def _status(self):
        line = self.status_line()
        now = time.monotonic()
        iv = self.cfg.status_log_interval
        since = now - self._last_status_time
        changed = line != self._last_status and (iv <= 0 or since >= min(iv, 2.0))
        if changed or (iv > 0 and since >= iv):
            self._last_status, self._last_status_time = line, now
            self.log("info", line)
