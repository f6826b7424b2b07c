"""The pool's decisions as pure functions: fit, dispatch, retire and the planning inputs.

Each takes the pool's servers and jobs (plain data from ``model.py``) and returns what to do;
the pool applies the result.  Nothing here talks to the cloud, to SSH or to the clock (the
current time is an argument), so every rule can be unit-tested on hand-made servers.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Callable, Iterable, Optional

from .model import Backlog, PoolJob, Server, ServerState
from .planner import ExistingServer, PlanRequest
from .quota import Flavor, Resources, fits, how_many_fit


def accepts_work(s: Server, max_jobs_per_server: int) -> bool:
    """A ready server that is neither broken, retiring nor at its submission cap."""
    if s.state != ServerState.READY or s.broken or s.retired:
        return False
    return not (max_jobs_per_server and s.submissions >= max_jobs_per_server)


def fit_server(
    servers: Iterable[Server],
    cores: int,
    mem_mb: int,
    max_jobs_per_server: int,
    reserved: Optional[dict] = None,
) -> Optional[Server]:
    """Best fit: the busiest server that still has room (keeps the others free to retire).

    ``reserved`` maps ``id(server)`` to (cores, mem, submissions) taken by earlier choices of
    the same dispatch round, so one round can place several jobs without touching servers."""
    reserved = reserved or {}
    best, best_free = None, None
    for s in servers:
        rc, rm, rn = reserved.get(id(s), (0, 0, 0))
        if s.state != ServerState.READY or s.broken or s.retired:
            continue
        if max_jobs_per_server and s.submissions + rn >= max_jobs_per_server:
            continue
        free = (s.free_cores - rc, s.free_mem - rm)
        if fits(free[0], free[1], cores, mem_mb) and (best is None or free < best_free):
            best, best_free = s, free
    return best


def dispatch(
    queue: Iterable[PoolJob], servers: list[Server], max_jobs_per_server: int
) -> tuple[list[tuple[PoolJob, Server]], deque]:
    """Place queued jobs in order on ready servers; returns (placements, jobs still queued).

    Finished jobs (cancelled while queued) are dropped from the queue."""
    placed: list[tuple[PoolJob, Server]] = []
    remaining: deque = deque()
    reserved: dict = {}
    for job in queue:
        if job.finished:
            continue
        s = fit_server(servers, job.cores, job.mem_mb, max_jobs_per_server, reserved)
        if s is None:
            remaining.append(job)
            continue
        rc, rm, rn = reserved.get(id(s), (0, 0, 0))
        reserved[id(s)] = (rc + job.cores, rm + job.mem_mb, rn + 1)
        placed.append((job, s))
    return placed, remaining


def retirements(
    servers: list[Server],
    now: float,
    queue_empty: bool,
    idle_timeout: float,
    keep_warm: int,
    max_jobs_per_server: int,
) -> list[tuple[Server, str]]:
    """Servers to delete now, with the reason: used up (submission cap reached, no job left),
    or idle longer than ``idle_timeout`` while nothing is queued, down to ``keep_warm``."""
    out: list[tuple[Server, str]] = []
    ready = [s for s in servers if s.state == ServerState.READY and not s.retired]
    for s in ready:
        if not s.jobs and max_jobs_per_server and s.submissions >= max_jobs_per_server:
            out.append((s, f"ran {s.submissions} submission(s)"))
    if not queue_empty:
        return out
    gone = {id(s) for s, _ in out}
    ready = [s for s in ready if id(s) not in gone]
    n_ready = len(ready)
    for s in ready:
        if n_ready <= keep_warm:
            break
        if not s.jobs and now - s.last_active > idle_timeout:
            out.append((s, f"idle {now - s.last_active:.0f}s"))
            n_ready -= 1
    return out


def needs_warm_server(servers: list[Server], keep_warm: int, queue_empty: bool) -> bool:
    """Whether to boot one more server to keep ``keep_warm`` servers while the run lasts."""
    if not queue_empty or keep_warm <= 0:
        return False
    live = [s for s in servers if s.state in ServerState.LIVE and not s.retired]
    return len(live) < keep_warm


def remaining_work(
    queued: list[PoolJob],
    running: list[PoolJob],
    backlog: float,
    now: float,
    est: Callable[[PoolJob], float],
) -> float:
    """Slot-seconds still ahead: queued jobs, the rest of running ones (at least a tenth of
    their estimate, as an overrunning job is not done), and the not yet submitted backlog."""
    work = sum(est(j) for j in queued) + backlog
    for j in running:
        elapsed = now - (j.started_at or now)
        work += max(0.1 * est(j), est(j) - elapsed)
    return work


def existing_capacity(
    servers: list[Server],
    cores: int,
    mem_mb: int,
    max_jobs_per_server: int,
    now: float,
    boot_estimate: Callable[[Flavor], float],
) -> list[ExistingServer]:
    """Slots and time-to-ready of live servers for jobs of (cores, mem_mb)."""
    out = []
    for s in servers:
        if s.state not in ServerState.LIVE or s.broken or s.retired:
            continue
        sl = min(s.flavor.vcpus // max(1, cores), s.flavor.ram // mem_mb if mem_mb else 10**6)
        if max_jobs_per_server:
            sl = min(sl, max(0, max_jobs_per_server - s.submissions))
        avail = 0.0
        if s.state != ServerState.READY:
            avail = max(0.0, boot_estimate(s.flavor) - (now - s.t_create))
        out.append(ExistingServer(slots=sl, available_in=avail))
    return out


def plan_request(
    queued: list[PoolJob],
    running: list[PoolJob],
    servers: list[Server],
    backlog: Backlog,
    now: float,
    budget: Resources,
    flavors: list[Flavor],
    max_jobs_per_server: int,
    est: Callable[[PoolJob], float],
    boot_estimate: Callable[[Flavor], float],
) -> PlanRequest:
    """The planner's inputs from the pool's state and the work not yet submitted (see
    ``planner.py`` for the model)."""
    pending = backlog.units > 0
    cores = max([j.cores for j in queued] + ([backlog.cores] if pending else []) or [1])
    mem = max([j.mem_mb for j in queued] or [0])
    return PlanRequest(
        work_seconds=remaining_work(queued, running, backlog.work_seconds, now, est),
        longest_job=max([est(j) for j in queued] + [backlog.longest] or [0.0]),
        cores=cores,
        mem_mb=mem,
        flavors=flavors,
        boot_seconds={f.name: boot_estimate(f) for f in flavors},
        budget=budget,
        existing=existing_capacity(servers, cores, mem, max_jobs_per_server, now, boot_estimate),
        units=len(queued) + backlog.units,
    )


def single_use_boots(req: PlanRequest, n_queued: int, max_jobs_per_server: int) -> dict[str, int]:
    """Boots when servers run only a few submissions each (``max_jobs_per_server``): one new
    server per queued job the existing slots cannot take, packed by the first flavor."""
    n_new = n_queued - sum(e.slots for e in req.existing)
    if n_new <= 0 or not req.flavors:
        return {}
    f = req.flavors[0]
    per = max(1, min(max_jobs_per_server, f.vcpus // max(1, req.cores)))
    n = min(math.ceil(n_new / per), how_many_fit(req.budget, f))
    return {f.name: n} if n > 0 else {}
