"""The pool's decisions (scheduling.py) on hand-made servers and jobs: fit, dispatch, retire,
keep-warm and the planner's inputs. No cloud, no SSH, no clock."""

from __future__ import annotations

import pytest

from snakemake_executor_plugin_openstack import scheduling as sch
from snakemake_executor_plugin_openstack.model import (
    Backlog,
    JobState,
    PoolJob,
    Server,
    ServerState,
)
from snakemake_executor_plugin_openstack.quota import Flavor, Resources
from snakemake_executor_plugin_openstack.ssh import JobIO

MEDIUM = Flavor("3", "m1.medium", 2, 4096)
LARGE = Flavor("4", "m1.large", 4, 8192)


def server(
    name,
    flavor=MEDIUM,
    state=ServerState.READY,
    jobs=(),
    cores=0,
    mem=0,
    submissions=0,
    last_active=0.0,
    t_create=0.0,
    **kw,
) -> Server:
    s = Server(
        name=name,
        flavor=flavor,
        state=state,
        used_cores=cores,
        used_mem=mem,
        submissions=submissions,
        last_active=last_active,
        t_create=t_create,
        **kw,
    )
    s.jobs = set(jobs)
    return s


def pjob(key, cores=1, mem=500, est=10.0, state=JobState.QUEUED, started_at=None) -> PoolJob:
    io_ = JobIO(job_key=key, command="true", env={}, inputs=[], outputs=[], logs=[], local_log="x")
    return PoolJob(
        key=key,
        name=f"job{key}",
        kind="k",
        cores=cores,
        mem_mb=mem,
        est_seconds=est,
        io=io_,
        state=state,
        started_at=started_at,
    )


# ---------------------------------------------------------------- fit and dispatch
def test_fit_prefers_the_busiest_server_that_still_fits():
    idle, half = server("idle"), server("half", jobs={"a"}, cores=1, mem=500)
    assert sch.fit_server([idle, half], 1, 500, 0) is half
    assert sch.fit_server([idle, half], 2, 500, 0) is idle  # half has one core left
    assert sch.fit_server([half], 1, 4000, 0) is None  # memory decides too


def test_fit_skips_servers_not_ready_broken_retired_or_used_up():
    cands = [
        server("b", state=ServerState.BUILDING),
        server("x", broken=True),
        server("r", retired=True),
        server("u", submissions=2),
    ]
    assert sch.fit_server(cands, 1, 0, max_jobs_per_server=2) is None
    assert sch.fit_server(cands, 1, 0, max_jobs_per_server=0).name == "u"
    assert not sch.accepts_work(cands[3], 2) and sch.accepts_work(cands[3], 0)


def test_dispatch_fills_servers_in_queue_order_without_touching_them():
    a, b = server("a"), server("b", flavor=LARGE)
    queue = [
        pjob("1", cores=2),
        pjob("2"),
        pjob("3", state=JobState.CANCELLED),
        pjob("4", cores=4),
        pjob("5", cores=2),
    ]
    placed, rest = sch.dispatch(queue, [a, b], 0)
    # 1 (2 cores) goes to a (busiest fit: both empty, a is smaller), 2 to b, 4 does not fit
    # any more (b has 3 cores left), 5 fills b; the cancelled 3 is dropped
    assert [(j.key, s.name) for j, s in placed] == [("1", "a"), ("2", "b"), ("5", "b")]
    assert [j.key for j in rest] == ["4"]
    assert a.used_cores == 0 and not a.jobs and a.submissions == 0  # the pool applies placements


def test_dispatch_respects_the_submission_cap_within_one_round():
    placed, rest = sch.dispatch([pjob("1"), pjob("2")], [server("a", submissions=1)], 2)
    assert [j.key for j, _ in placed] == ["1"] and [j.key for j in rest] == ["2"]


# ---------------------------------------------------------------- retire and keep warm
def test_used_up_servers_retire_even_while_jobs_are_queued():
    used = server("used", submissions=2)
    busy = server("busy", submissions=2, jobs={"x"}, cores=1)
    out = sch.retirements(
        [used, busy], now=100, queue_empty=False, idle_timeout=1, keep_warm=0, max_jobs_per_server=2
    )
    assert [(s.name, r) for s, r in out] == [("used", "ran 2 submission(s)")]


def test_idle_servers_retire_down_to_keep_warm_only_when_nothing_is_queued():
    servers = [server(n, last_active=0.0) for n in "abc"] + [server("fresh", last_active=95.0)]
    kw = dict(now=100.0, idle_timeout=10.0, max_jobs_per_server=0)
    assert sch.retirements(servers, queue_empty=False, keep_warm=0, **kw) == []
    out = sch.retirements(servers, queue_empty=True, keep_warm=2, **kw)
    assert [(s.name, r) for s, r in out] == [("a", "idle 100s"), ("b", "idle 100s")]
    assert len(sch.retirements(servers, queue_empty=True, keep_warm=0, **kw)) == 3
    servers[0].retired = True  # already being deleted: neither counted nor retired again
    out = sch.retirements(servers, queue_empty=True, keep_warm=2, **kw)
    assert [s.name for s, _ in out] == ["b"]


def test_keep_warm_boots_only_below_the_minimum_and_when_idle():
    booting = server("b", state=ServerState.BUILDING)
    assert sch.needs_warm_server([booting], keep_warm=2, queue_empty=True)
    assert not sch.needs_warm_server([booting, server("r")], keep_warm=2, queue_empty=True)
    assert not sch.needs_warm_server([], keep_warm=2, queue_empty=False)
    assert not sch.needs_warm_server([server("x", retired=True)], keep_warm=0, queue_empty=True)


# ---------------------------------------------------------------- planning inputs
def est(j):
    return j.est_seconds


def test_remaining_work_counts_queue_backlog_and_the_rest_of_running_jobs():
    queued = [pjob("1", est=10), pjob("2", est=20)]
    running = [pjob("3", est=30, started_at=90.0), pjob("4", est=10, started_at=1.0)]
    # 30 queued + 5 backlog + (30 - 10) left + 1 (an overrunning job counts a tenth)
    assert sch.remaining_work(queued, running, 5.0, 100.0, est) == pytest.approx(56.0)


def test_plan_request_sees_ready_and_booting_servers():
    servers = [
        server("r", jobs={"3"}, cores=1),
        server("b", state=ServerState.BUILDING, t_create=96),
        server("x", broken=True),
        server("d", state=ServerState.DELETING),
    ]
    queued = [pjob("1", cores=1, mem=1000, est=4), pjob("2", cores=2, mem=500, est=8)]
    req = sch.plan_request(
        queued,
        [],
        servers,
        backlog=Backlog(),
        now=100.0,
        budget=Resources(2, 4, 8192),
        flavors=[MEDIUM],
        max_jobs_per_server=0,
        est=est,
        boot_estimate=lambda f: 10.0,
    )
    assert (req.cores, req.mem_mb, req.longest_job, req.work_seconds) == (2, 1000, 8, 12)
    assert [(e.slots, e.available_in) for e in req.existing] == [(1, 0.0), (1, 6.0)]
    assert req.boot_seconds == {"m1.medium": 10.0} and req.budget == Resources(2, 4, 8192)
    assert req.units == 2


def test_plan_request_adds_the_work_still_to_be_submitted():
    backlog = Backlog(work_seconds=30.0, units=3, longest=20.0, cores=2)
    req = sch.plan_request(
        [pjob("1", est=4)],
        [],
        [],
        backlog,
        0.0,
        Resources(4, 8, 10**5),
        [MEDIUM],
        0,
        est,
        lambda f: 10.0,
    )
    assert (req.work_seconds, req.units, req.longest_job, req.cores) == (34.0, 4, 20.0, 2)


def test_single_use_servers_boot_one_per_job_the_slots_cannot_take():
    queued = [pjob(str(i)) for i in range(5)]
    req = sch.plan_request(
        queued,
        [],
        [server("r", submissions=0)],
        Backlog(),
        0.0,
        Resources(3, 20, 10**6),
        [MEDIUM],
        1,
        est,
        lambda f: 10.0,
    )
    assert [e.slots for e in req.existing] == [1]  # capped by max_jobs_per_server
    assert sch.single_use_boots(req, len(queued), 1) == {"m1.medium": 3}  # 4 wanted, budget 3
    assert sch.single_use_boots(req, 1, 1) == {}
    # two submissions per server: two jobs share one new server
    assert sch.single_use_boots(req, 5, 2) == {"m1.medium": 2}
